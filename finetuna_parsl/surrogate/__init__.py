"""The surrogate: a pretrained fairchem-core model with head-only online fine-tuning (torch, fairchem-core).

The prior is fairchem's own prediction (prior.py); what is fine-tuned online is ours (head.py). Names are
imported on first use, so `surrogate.settings` (read by the run config everywhere) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "SHIPPED": "checkpoint", "CheckpointInfo": "checkpoint", "SurrogateError": "checkpoint",
    "inspect_checkpoint": "checkpoint", "Surrogate": "surrogate", "SurrogateCalculator": "surrogate",
    "load_surrogate": "surrogate", "SurrogateSettings": "settings",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
