"""Learner state: the state of one relaxation and what a learn step proposes; both cross process boundaries.

The records they hold (SystemSpec, Evaluation, LearnerSettings) live in finetuna_parsl.records.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..records import OUTCOME_RUNNING, Evaluation, LearnerSettings, SystemSpec


@dataclass(frozen=True)
class LearnerState:
    """Everything one relaxation needs to continue, anywhere: no calculators, no handles.

    parent_points: the parent's evaluations so far, in call order. head: the serialized surrogate head,
    fine-tuned on the first head_points of them (None before the first learn step). surrogate_steps: surrogate
    evaluations so far. outcome: records.OUTCOME_* (OUTCOME_RUNNING until a stop decision).
    """

    system: SystemSpec
    settings: LearnerSettings
    parent_points: list[Evaluation] = field(default_factory=list)
    head: bytes | None = None
    head_points: int = 0
    surrogate_steps: int = 0
    outcome: str = OUTCOME_RUNNING

    @property
    def parent_calls(self) -> int:
        return len(self.parent_points)

    @property
    def done(self) -> bool:
        return self.outcome != OUTCOME_RUNNING

    def with_outcome(self, outcome: str) -> "LearnerState":
        return replace(self, outcome=outcome)


@dataclass(frozen=True)
class Proposal:
    """What a learn step hands back: the segment it ran and where the parent should be called next."""

    positions: np.ndarray  # where to call the parent
    segment: list[Evaluation]  # the surrogate's evaluations, in order (source "surrogate")
    head: bytes | None
    head_points: int
    reason: str  # why the parent is called: records.REASON_*
    fine_tune_s: float = 0.0  # seconds spent fine-tuning in this learn step (stored with the parent call)
    surrogate_budget_spent: bool = False
