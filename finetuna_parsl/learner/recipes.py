"""Learner recipes: named sets of LearnerSettings, chosen in a run config by `learner.recipe`; the config's other
`learner` keys override the recipe's.

- `measured`: the recipe measured on the demo and out-of-domain EMT benchmarks (benchmarks/learner-long-segments.md,
  learner.md, learner-shift.md, learner-damped.md): k-steps with long segments (k=100) ended by the surrogate
  relaxing to 0.02 eV/A, fine-tuning on every parent point, the surrogate made exact at the newest parent point.
  configs/ood-bench.yaml adds a residual GP on the 10 newest parent points out of domain.
- `paper`: the FINETUNA paper's (Musielewicz et al., 2022) query setup: a parent call every k=3 surrogate steps,
  fine-tuning on the newest parent point, the surrogate relaxed at the parent's fmax, 100 parent calls at most.

Both keep the package's safety layers (backoff, Powell-damped Hessian, anomaly guard), which the paper did not
have. To add a recipe, add an entry to RECIPES.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from ..records import QUERY_K_STEPS, TRAIN_ALL, TRAIN_NEWEST, LearnerSettings, SettingError

RECIPES: dict[str, LearnerSettings] = {
    "measured": LearnerSettings(
        query=QUERY_K_STEPS, k=100, surrogate_fmax=0.02, train_on=TRAIN_ALL, exact_at_newest=True, exact_fade=1.0,
        residual_points=0, hessian_damping=0.2, fmax=0.03, max_parent_calls=300, max_surrogate_steps=2000,
    ),
    "paper": LearnerSettings(
        query=QUERY_K_STEPS, k=3, surrogate_fmax=None, train_on=TRAIN_NEWEST, exact_at_newest=False, exact_fade=1.0,
        residual_points=0, hessian_damping=0.2, fmax=0.03, max_parent_calls=100, max_surrogate_steps=2000,
    ),
}

#: The recipe of a run config that names none.
DEFAULT_RECIPE = "paper"


def recipe(name: str, **overrides: Any) -> LearnerSettings:
    """The settings of recipe `name` with `overrides` (LearnerSettings fields) replacing its own.

    ValueError (records.SettingError, field "recipe") for an unknown name; TypeError for an override that is not
    a LearnerSettings field; records.SettingError for a value out of range.
    """
    if name not in RECIPES:
        raise SettingError("recipe", f"must be one of {', '.join(RECIPES)}, got {name!r}")
    known = {f.name for f in fields(LearnerSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"not a learner setting: {', '.join(unknown)}")
    return replace(RECIPES[name], **overrides)
