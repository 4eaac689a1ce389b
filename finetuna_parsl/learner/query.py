"""Query rules: after each surrogate step, should the parent be called? (relaxed-only, k-steps, uncertainty)"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .state import LearnerSettings


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


def query_reason(
    settings: LearnerSettings,
    surrogate_fmax: float,
    steps_in_segment: int,
    uncertainty: float,
    recent_positions: Sequence[np.ndarray] = (),
) -> str:
    """Why the parent should be called now, or "" to keep stepping on the surrogate.

    Every rule calls the parent when the surrogate says the structure is relaxed (or its optimizer has
    stalled); k-steps also after k surrogate steps since the last parent call; uncertainty also when the
    ensemble disagrees more than the threshold.
    """
    if surrogate_fmax <= settings.relaxed_fmax:
        return "relaxed"
    if stalled(settings, recent_positions):
        return "stalled"
    if settings.query == "k-steps" and steps_in_segment >= settings.k:
        return "k-steps"
    if settings.query == "uncertainty" and uncertainty > settings.uncertainty_threshold:
        return "uncertainty"
    return ""
