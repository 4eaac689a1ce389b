"""The built-in query rules, in the order they are listed: relaxed-only, k-steps (the FINETUNA paper's),
uncertainty."""

from __future__ import annotations

from ...records import QUERY_K_STEPS, QUERY_RELAXED_ONLY, QUERY_UNCERTAINTY, LearnerSettings, SurrogateStep
from . import query_rule


@query_rule(QUERY_RELAXED_ONLY)
def relaxed_only(settings: LearnerSettings, step: SurrogateStep) -> bool:
    """Only when the surrogate says relaxed (or has stalled): never on its own."""
    return False


@query_rule(QUERY_K_STEPS, ceiling=lambda settings: settings.k)
def k_steps(settings: LearnerSettings, step: SurrogateStep) -> bool:
    """After k surrogate steps since the last parent call (settings.k)."""
    return step.steps_in_segment >= settings.k


@query_rule(QUERY_UNCERTAINTY, needs_ensemble=True)
def uncertainty(settings: LearnerSettings, step: SurrogateStep) -> bool:
    """When the surrogate ensemble's force spread exceeds settings.uncertainty_threshold (eV/A)."""
    return step.uncertainty > settings.uncertainty_threshold
