"""The surrogate: a pretrained fairchem-core model with head-only online fine-tuning (torch, fairchem-core).

The prior is fairchem's own prediction (prior.py); what is fine-tuned online is ours (head.py).
"""

from .checkpoint import SHIPPED, CheckpointInfo, SurrogateError, inspect_checkpoint
from .surrogate import Surrogate, SurrogateCalculator, load_surrogate

__all__ = ["SHIPPED", "CheckpointInfo", "Surrogate", "SurrogateCalculator", "SurrogateError", "inspect_checkpoint",
           "load_surrogate"]
