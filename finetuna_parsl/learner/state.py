"""Learner state: the state of one relaxation, what a learn step proposes, and a learn step under way (a Segment
and the surrogate Predictions it is fed); all cross process boundaries.

The records they hold (SystemSpec, Evaluation, LearnerSettings) live in finetuna_parsl.records.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..records import OUTCOME_RUNNING, Evaluation, LearnerSettings, SystemSpec
from .anomaly import AnomalyGuard
from .bfgs import HessianBFGS
from .residual import PointShift, ResidualFit


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


@dataclass(frozen=True, eq=False)
class Prediction:
    """The surrogate's answer at one structure, made wherever the caller likes (one model call, a batch across
    relaxations, a service) and handed to learner.online.segment_step.

    energy: eV. forces: (n_atoms, 3) eV/A, unconstrained (fixed atoms included, as the model returns them).
    uncertainty: the ensemble's force spread, eV/A (0 for a single head; the uncertainty query rule's input).
    wall_s: seconds the prediction took (kept with the surrogate step it becomes).
    """

    energy: float
    forces: np.ndarray
    uncertainty: float = 0.0
    wall_s: float = 0.0


@dataclass(frozen=True, eq=False)
class Segment:
    """A learn step under way: where the surrogate must be asked next (`positions`), and all that the step needs
    to go on from its answer. Made by learner.online.segment_init, advanced by segment_step, never changed in
    place (segment_step returns a new one, or the Proposal that ends the step); picklable.

    The surrogate is first asked at the `anchors` (the parent points a residual correction is fitted at, in
    order; none without exact_at_newest or residual_points), then along the surrogate relaxation from `start`.

    state: the relaxation at the start of the learn step. head: the surrogate head to predict with (already
    fine-tuned); head_points, fine_tune_s: as in Proposal. positions: (n_atoms, 3) A, where the next Prediction
    is wanted (the system's numbers, cell, pbc and tags). steps: the surrogate evaluations of this segment so far
    (corrected; source "surrogate"). optimizer: BFGS as it stands before stepping from `positions` (a copy is
    stepped). start: (n_atoms, 3) A, the first surrogate structure (the parent-force step from the newest parent
    point). anchors: (n_atoms, 3) A each; anchored: the predictions at the first len(anchored) of them.
    corrections: residual.PointShift / ResidualFit, applied in order to each prediction once all anchors are in.
    cap: segment_cap's step limit (None: none); radius: trust radius, A (None: none); guard, allowed: the anomaly
    guard (None: off) and the newest parent point's own anomalies; leashed: (n_atoms,) bool, the atoms
    adsorbate_leash holds (None: no leash). origin: index in state.parent_points of the point the segment starts
    from (-1: the newest; see learner.online.segment_origin).
    """

    state: LearnerState
    head: bytes
    head_points: int
    fine_tune_s: float
    positions: np.ndarray
    optimizer: HessianBFGS
    start: np.ndarray
    steps: tuple[Evaluation, ...] = ()
    anchors: tuple[np.ndarray, ...] = ()
    anchored: tuple[Prediction, ...] = ()
    corrections: tuple[PointShift | ResidualFit, ...] = ()
    cap: int | None = None
    radius: float | None = None
    guard: AnomalyGuard | None = None
    allowed: frozenset[str] = frozenset()
    leashed: np.ndarray | None = None
    origin: int = -1

    @property
    def anchoring(self) -> bool:
        """True while the surrogate is asked at the residual's anchors (before the first surrogate step)."""
        return len(self.anchored) < len(self.anchors)
