"""Learner recipes: named sets of LearnerSettings, chosen in a run config by `learner.recipe`; the config's other
`learner` keys override the recipe's.

- `measured` (the default; LearnerSettings' own defaults): the recipe measured in two worlds, EMT (configs/demo.yaml,
  configs/ood-bench.yaml) and the stand-in for DFT on the paper's own systems (SevenNet-0 parent, `oc20-standin`
  prior): benchmarks/learner.md and benchmarks/learner-standin.md, row `ood-config-restart-leash0.3-not-exact` (this
  recipe) against `ood-config-restart` (the recipe of 2026-12-05), `ood-config`, `demo-config` and the single levers.
  Stand-in world, 8 systems: 184 parent calls, 0.44x BFGS's, 8/8 accurate (2026-12-05's recipe 317, 0.74x, 7/8;
  demo-config, the recipe before, 752, 2.48x, 5/8). EMT, 16 systems: 257 calls, 0.19x, 14/16 (181, 0.13x, 15/16;
  210, 0.17x, 15/16): chosen where the chemistry is realistic, at that cost in EMT.
  - k-steps with k=100 and surrogate_fmax=0.02: the surrogate must relax to 0.02 eV/A before the parent is asked
    to confirm, and a runaway segment stops at 100 steps. 79 parent calls on the 20 demo systems, all accurate,
    against 124 and 18/20 at k=15 relaxed at fmax; on the learner ablation's 24 out-of-domain systems 208 calls
    and 21/24 accurate against 432 and 20/24 at k=10 relaxed at fmax
    (benchmarks/history/2026-12-01-learner-long-segments.md).
    k=3 caps the saving at 1/3 of parent-only BFGS's calls.
  - train_on=all: fine-tune on every parent point so far, in one batch (benchmarks/history/2026-12-01-learner.md).
  - exact_at_newest=False: no shift making the surrogate reproduce the newest parent point exactly (it had been on
    since benchmarks/history/2026-12-01-learner-shift.md); with the leash below, dropping it saves calls in the
    stand-in world (219 -> 184, 7/8 -> 8/8) and costs one accurate EMT system (15/16 -> 14/16; alone it cost five).
  - adsorbate_leash=0.3: a segment ends (reason "leash") before a surrogate step that would move an adsorbate atom
    more than 0.3 A from the newest parent point (every free atom without OC20 tags), so the parent confirms the
    adsorbate's path: the largest single gain in the stand-in world (317 -> 219 calls), a loss in EMT (181 -> 247),
    whose adsorbates dissociate and desorb.
  - residual_points=10: the surrogate also reproduces the 10 newest parent points through a Gaussian process on
    its error (learner/residual.py). In EMT in domain it had cost calls on the first prior (22.4% of BFGS's
    against 19.4%: benchmarks/history/2026-11-30-demo-residual-gp/); on the 2026-12-05 rows it pays with restart in
    the stand-in world (7/8 accurate against 6/8) and in EMT (15/16 against 13/16), at 6% and 21% more calls.
  - restart_from_lowest=True: after a segment that led the parent uphill, the next starts from the lowest parent
    point (learner/online.py segment_origin). Without it the backoff alternates a bad surrogate segment with a
    parent-force step back: on the stand-in rows 752 -> 300 calls (demo-config) and 374 -> 317 (ood-config), with
    accuracy 5 -> 6/8 and 4 -> 7/8; in EMT 210 -> 150 (15 -> 13/16: two systems in a higher minimum) and 180 -> 181
    (14 -> 15/16). The lever had cost 9% more calls on the k=10 baseline of 2026-11-30
    (benchmarks/history/2026-11-30-learner-restart.md); with today's k=100 segments it pays.
  - hessian_damping=0.2: Powell-damped BFGS Hessian rebuilt from parent points
    (benchmarks/history/2026-11-30-learner-damped.md).
  - max_parent_calls=300, max_surrogate_steps=3000 (what every benchmarks/learner.py row ran with).
- `paper`: the FINETUNA paper's (Musielewicz et al., 2022) query setup: a parent call every k=3 surrogate steps,
  fine-tuning on the newest parent point, the surrogate relaxed at the parent's fmax (0.03 eV/A), BFGS with
  maxstep 0.2 A and alpha 70 eV/A^2 as ASE's, 100 parent calls at most.

Both keep the package's safety layers (backoff, the damped Hessian, the anomaly guard), which the paper did not
have; `paper` has no leash. To add a recipe, add an entry to RECIPES.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from ..records import QUERY_K_STEPS, TRAIN_NEWEST, LearnerSettings, SettingError

RECIPES: dict[str, LearnerSettings] = {
    "measured": LearnerSettings(),  # LearnerSettings' own defaults are this recipe (records.py)
    "paper": LearnerSettings(
        query=QUERY_K_STEPS, k=3, surrogate_fmax=None, train_on=TRAIN_NEWEST, exact_at_newest=False, exact_fade=1.0,
        residual_points=0, hessian_damping=0.2, fmax=0.03, max_parent_calls=100, max_surrogate_steps=2000,
        restart_from_lowest=False, adsorbate_leash=None,
    ),
}

#: The recipe of a run config that names none (the code's defaults).
DEFAULT_RECIPE = "measured"


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
