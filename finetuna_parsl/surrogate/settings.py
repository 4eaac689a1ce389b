"""The surrogate's settings: one frozen record, built once from the run config and passed whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SurrogateSettings:
    """The surrogate (the run config's `surrogate` section): a fairchem checkpoint and its fine-tuning.

    checkpoint: a fairchem inference checkpoint (.pt), "shipped" (the package's EMT-world prior) or "oc20-standin"
        (its stand-in-world prior, surrogate/data/oc20-standin.json); the run config makes a
    path absolute when it is read, so workers elsewhere find the same file. task: the checkpoint's task/dataset
    to predict with (oc20, omat, omol, odac, omc, ...). factory: "module:callable" returning your own surrogate,
    called with these settings as keywords (overrides checkpoint). device: auto | cpu | cuda.
    ensemble_size: residual heads fine-tuned side by side (their force spread is the uncertainty, eV/A).
    epochs, lr, scheduler_factor, scheduler_patience: head fine-tuning, AdamW with a plateau scheduler; the
    defaults are the FINETUNA paper's (Musielewicz et al. 2022: lr 3e-4, ~400 epochs, x0.9, patience 3).
    seed: of the heads' initial weights and of each prior prediction (reproducible.py).
    threads: torch CPU threads for each prediction and fine-tuning, set on the calling thread for the call and
    restored after. Float sums depend on the thread count, which is per OS thread and left by whatever ran there
    before, so a fixed count makes a run repeat bit for bit in any worker on any machine (1: as the shipped sites'
    learn workers, OMP_NUM_THREADS=1; raise it for one learn worker on a many-core CPU node).
    """

    checkpoint: str = "shipped"
    task: str = "oc20"
    factory: str | None = None
    device: str = "auto"
    ensemble_size: int = 1
    epochs: int = 400
    lr: float = 3e-4
    scheduler_factor: float = 0.9
    scheduler_patience: int = 3
    seed: int = 0
    threads: int = 1

    def factory_keywords(self) -> dict:
        """What a user's factory is called with: every setting but the factory itself."""
        keywords = asdict(self)
        keywords.pop("factory")
        return keywords
