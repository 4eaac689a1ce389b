"""After each surrogate step, should the parent be called? The checks every query rule shares (relaxed, stalled,
backoff, trust radius, anomaly guard, adsorbate leash) around the rule itself (learner/rules/, by name)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..records import (
    REASON_ANOMALY,
    REASON_BACKOFF,
    REASON_LEASH,
    REASON_RELAXED,
    REASON_STALLED,
    REASON_TRUST,
    LearnerSettings,
    SurrogateStep,
    SystemSpec,
)
from .anomaly import TAG_ADSORBATE, AnomalyGuard, tags_problem
from .rules import get_rule


def stalled(settings: LearnerSettings, recent_positions: Sequence[np.ndarray]) -> bool:
    """True when no atom moved more than stall_distance over the last stall_steps surrogate steps.

    BFGS on an imperfect surrogate can creep with tiny steps at fmax above threshold (an ill-conditioned
    Hessian); a parent call then brings new data and a Hessian rebuilt from parent points.
    """
    n = settings.stall_steps
    if len(recent_positions) <= n:
        return False
    moved = np.linalg.norm(np.asarray(recent_positions[-1]) - np.asarray(recent_positions[-1 - n]), axis=1).max()
    return bool(moved < settings.stall_distance)


#: The first segment cap after an uphill segment when the rule itself sets none (relaxed-only, uncertainty).
BACKOFF_START = 16


def segment_cap(settings: LearnerSettings, parent_energies: Sequence[float]) -> int | None:
    """The longest surrogate segment allowed now (None: no cap), replayed from the parent energies so far.

    After a segment whose parent call came out higher in energy than the lowest parent energy so far, the
    cap halves (down to 1 step: parent-only BFGS); after a segment that sets a new low it grows by one step, back
    up to the rule's own ceiling (k for k-steps, none for relaxed-only and
    uncertainty). A pure function of stored parent points, so a resumed run agrees.
    """
    rule = get_rule(settings.query)
    ceiling = rule.ceiling(settings) if rule.ceiling is not None else None
    if not settings.backoff or not parent_energies:
        return ceiling
    cap, lowest = ceiling, parent_energies[0]
    for energy in parent_energies[1:]:
        if energy > lowest:
            cap = max(1, (cap or BACKOFF_START) // 2)
        elif cap is not None:
            cap += 1
            if ceiling is not None:
                cap = min(cap, ceiling)
            elif cap >= BACKOFF_START:
                cap = None
        lowest = min(lowest, energy)
    return cap


def query_reason(
    settings: LearnerSettings,
    surrogate_fmax: float,
    steps_in_segment: int,
    uncertainty: float,
    recent_positions: Sequence[np.ndarray] = (),
    cap: int | None = None,
) -> str:
    """Why the parent should be called now, or "" to keep stepping on the surrogate.

    Every rule calls the parent when the surrogate says the structure is relaxed (or its optimizer has
    stalled); then the rule settings.query names (learner/rules/: k-steps after k surrogate steps since the last
    parent call, uncertainty when the ensemble disagrees more than the threshold) gives its own name as the
    reason. Any rule stops at `cap` steps (segment_cap's backoff). ValueError for an unregistered rule.
    """
    if surrogate_fmax <= settings.relaxed_fmax:
        return REASON_RELAXED
    if stalled(settings, recent_positions):
        return REASON_STALLED
    rule = get_rule(settings.query)
    if rule.fires(settings, SurrogateStep(steps_in_segment, surrogate_fmax, uncertainty)):
        return rule.name
    if cap is not None and steps_in_segment >= cap:
        return REASON_BACKOFF
    return ""


def trust_radius(settings: LearnerSettings, newest_fmax: float) -> float | None:
    """The radius (A) around the newest parent point that a surrogate segment must stay inside, or None.

    Only near convergence (newest parent fmax below settings.trust_fmax): there the surrogate's own minimum,
    a few tenths of an A off the parent's, is what a long segment walks to, and the parent call lands out of
    the basin it had nearly reached (benchmarks/history/2026-12-01-learner-trust.md).
    """
    if settings.trust_radius is None or newest_fmax >= settings.trust_fmax:
        return None
    return settings.trust_radius


def leaves_trust(radius: float | None, newest_positions: np.ndarray, next_positions: np.ndarray) -> str:
    """REASON_TRUST when `next_positions` (n_atoms, 3; A) would move an atom farther than `radius` from the
    newest parent point, else ""."""
    if radius is None:
        return ""
    moved = float(np.linalg.norm(np.asarray(next_positions) - np.asarray(newest_positions), axis=1).max())
    return REASON_TRUST if moved > radius else ""


def makes_anomaly(guard: AnomalyGuard | None, allowed: frozenset[str], next_positions: np.ndarray) -> str:
    """REASON_ANOMALY when `next_positions` (n_atoms, 3; A) has an OC20 anomaly (learner/anomaly.py) outside
    `allowed` (the newest parent point's own), else ""; "" without a guard (anomaly_guard off, or no OC20 tags)."""
    if guard is None:
        return ""
    return REASON_ANOMALY if guard.anomalies(next_positions) - allowed else ""


def leashed_atoms(system: SystemSpec) -> np.ndarray:
    """Which atoms adsorbate_leash holds: the adsorbate (OC20 tag 2), or every free atom without OC20 tags."""
    if not tags_problem(system):
        return np.asarray(system.tags) == TAG_ADSORBATE
    return ~np.asarray(system.fixed, dtype=bool)


def leaves_leash(leash: float | None, atoms: np.ndarray, newest_positions: np.ndarray,
                 next_positions: np.ndarray) -> str:
    """REASON_LEASH when `next_positions` would move one of `atoms` (bool mask) farther than `leash` (A) from the
    newest parent point, else ""; "" when leash is None."""
    if leash is None or not atoms.any():
        return ""
    moved = np.linalg.norm(np.asarray(next_positions)[atoms] - np.asarray(newest_positions)[atoms], axis=1).max()
    return REASON_LEASH if moved > leash else ""
