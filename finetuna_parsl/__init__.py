"""finetuna-parsl: FINETUNA online-learning geometry relaxations, run at scale with Parsl."""

__version__ = "0.1.0"
