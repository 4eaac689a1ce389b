"""Pure online-learning logic: state, query rules, Hessian replay, reference optimizers, metrics.

Knows nothing of Parsl or HDF5, so it can be unit-tested and run anywhere. Its records (SystemSpec,
Evaluation, LearnerSettings) are finetuna_parsl.records'.
"""

from .bfgs import HessianBFGS, constrain, free_fmax
from .online import (
    SurrogateDiverged, SurrogateModel, fine_tune_points, propose, record_parent, segment_init, segment_step, settle,
)
from .query import query_reason, segment_cap
from .state import LearnerState, Prediction, Proposal, Segment

__all__ = [
    "HessianBFGS", "constrain", "free_fmax", "SurrogateDiverged", "SurrogateModel", "fine_tune_points", "propose",
    "record_parent", "segment_init", "segment_step", "settle", "query_reason", "segment_cap", "LearnerState",
    "Prediction", "Proposal", "Segment",
]
