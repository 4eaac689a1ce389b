"""Pure online-learning logic: state, query rules, Hessian replay, reference optimizers, metrics.

Knows nothing of Parsl or HDF5, so it can be unit-tested and run anywhere.
"""

from .bfgs import HessianBFGS, constrain, free_fmax
from .online import SurrogateDiverged, SurrogateModel, propose, record_parent, settle
from .query import query_reason, segment_cap
from .state import (
    STATUS_CONVERGED,
    STATUS_FAILED,
    STATUS_PARENT_BUDGET,
    STATUS_RUNNING,
    STATUS_SURROGATE_BUDGET,
    LearnerSettings,
    LearnerState,
    ParentPoint,
    Proposal,
    SurrogateStep,
    SystemSpec,
)

__all__ = [
    "HessianBFGS", "constrain", "free_fmax", "SurrogateDiverged", "SurrogateModel", "propose",
    "record_parent", "settle", "query_reason", "segment_cap", "STATUS_CONVERGED", "STATUS_FAILED", "STATUS_PARENT_BUDGET",
    "STATUS_RUNNING", "STATUS_SURROGATE_BUDGET", "LearnerSettings", "LearnerState", "ParentPoint",
    "Proposal", "SurrogateStep", "SystemSpec",
]
