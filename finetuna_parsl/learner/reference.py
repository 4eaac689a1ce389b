"""Reference optimizers run on the same parent, for comparison: parent-only BFGS, parent-only CG, warm start,
and ASE's GPMin (a Gaussian process on parent data alone: the no-prior machine-learning baseline; its model sees
the free atoms only, the same model as on the whole structure at a fraction of the cost: run_reference).

Each takes the parent as a plain call (positions (n, 3) A -> records.Evaluation), so it runs wherever the parent lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.filters import Filter
from ase.optimize import BFGS, GPMin
from ase.optimize.sciopt import OptimizerConvergenceError, SciPyFminCG

from ..records import (
    OUTCOME_CONVERGED,
    OUTCOME_GAVE_UP,
    OUTCOME_PARENT_BUDGET,
    SOURCE_SURROGATE,
    Evaluation,
    LearnerSettings,
    SystemSpec,
)
from .bfgs import free_fmax

ParentCall = Callable[[np.ndarray], Evaluation]
REFERENCE_METHODS = ("bfgs", "cg", "warm-start", "gpmin")
OPTIMIZER_NAMES = {"bfgs": "BFGS", "cg": "CG", "warm-start": "BFGS", "gpmin": "GPMin"}


#: How each optimizer says it cannot go on (anything else is a fault and propagates): GPMin raises RuntimeError
#: ("could not build a descent model", L-BFGS-B failing on the model); SciPy's CG raises
#: OptimizerConvergenceError when its line search fails ("Desired error not necessarily achieved due to
#: precision loss", typically near a minimum whose energy differences reach the parent's noise). BFGS has no
#: way of giving up: () catches nothing.
GIVING_UP: dict[str, tuple[type[BaseException], ...]] = {
    "bfgs": (), "warm-start": (), "gpmin": (RuntimeError,),
    "cg": (OptimizerConvergenceError,),
}


class _BudgetSpent(Exception):
    """Raised inside the optimizer when the parent-call budget is used up."""


class _RecordingParent(Calculator):
    """ASE calculator over a parent call that keeps every parent Evaluation (reason: the method's name) and
    enforces the call budget."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, call: ParentCall, budget: int, reason: str) -> None:
        super().__init__()
        self.call = call
        self.budget = budget
        self.reason = reason
        self.points: list[Evaluation] = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if len(self.points) >= self.budget:
            raise _BudgetSpent
        point = replace(self.call(self.atoms.positions.copy()), reason=self.reason)
        self.points.append(point)
        self.results = {"energy": point.energy, "free_energy": point.energy, "forces": point.forces.copy()}


@dataclass(frozen=True)
class ReferenceResult:
    """A finished reference relaxation: every parent point and (warm start) the surrogate pre-relaxation.

    outcome: records.OUTCOME_CONVERGED, OUTCOME_PARENT_BUDGET, or OUTCOME_GAVE_UP with `error` saying why the
    optimizer gave up (GPMin cannot always build a descent model; SciPy's CG line search can fail: GIVING_UP);
    its parent points are kept all the same, they were paid for.
    """

    method: str
    outcome: str
    parent_points: list[Evaluation]
    surrogate_steps: list[Evaluation] = field(default_factory=list)
    error: str = ""

    @property
    def parent_calls(self) -> int:
        return len(self.parent_points)


def run_reference(
    method: str,
    system: SystemSpec,
    parent: ParentCall,
    settings: LearnerSettings,
    surrogate: Calculator | None = None,
) -> ReferenceResult:
    """Relax `system` with a reference method; the parent-call budget is settings.max_parent_calls."""
    if method not in REFERENCE_METHODS:
        raise ValueError(f"unknown reference method {method!r}; known: {', '.join(REFERENCE_METHODS)}")
    atoms = system.to_atoms()
    surrogate_steps: list[Evaluation] = []
    if method == "warm-start":
        if surrogate is None:
            raise ValueError("warm-start needs a surrogate calculator")
        atoms.calc = surrogate
        pre = BFGS(atoms, logfile=None, maxstep=settings.maxstep)
        for _ in pre.irun(fmax=settings.relaxed_fmax, steps=settings.max_surrogate_steps):
            surrogate_steps.append(
                Evaluation(
                    atoms.positions.copy(),
                    float(atoms.get_potential_energy()),
                    np.array(atoms.get_forces(apply_constraint=False)),
                    SOURCE_SURROGATE,
                )
            )
    recorder = _RecordingParent(parent, budget=settings.max_parent_calls, reason=method)
    atoms.calc = recorder
    if method == "cg":
        optimizer = SciPyFminCG(atoms, logfile=None)
    elif method == "gpmin":
        # ASE's defaults (no prior beyond a constant, fixed hyperparameters), on the free atoms only (ASE's Filter):
        # fixed atoms' coordinates never move and their constrained forces are zero, so in GPMin's squared-exponential
        # kernel they form a block independent of the rest and carry no information; leaving them in gives the same
        # model at (n/n_free)^2 the memory and ^3 the time (the paper's 440438, 60 atoms of which 34 fixed, lost its
        # worker on a 24 GB machine, most likely to memory). With no free atom there is nothing to model: the whole
        # structure, whose zero forces one call confirms.
        free = np.flatnonzero(~system.fixed)
        optimizer = GPMin(Filter(atoms, indices=free) if len(free) else atoms, logfile=None)
    else:
        optimizer = BFGS(atoms, logfile=None, maxstep=settings.maxstep)
    error = ""
    try:
        optimizer.run(fmax=settings.fmax, steps=settings.max_parent_calls)
    except _BudgetSpent:
        pass
    except GIVING_UP[method] as exc:
        error = f"ASE {OPTIMIZER_NAMES[method]} gave up after {len(recorder.points)} parent calls: {exc}"
    points = recorder.points
    # CG's line search (GPMin's model minimum) may probe past the minimum: converged means some parent call
    # confirmed fmax.
    converged = any(free_fmax(p.forces, system.fixed) <= settings.fmax for p in points)
    return ReferenceResult(
        method=method,
        outcome=OUTCOME_CONVERGED if converged else (OUTCOME_GAVE_UP if error else OUTCOME_PARENT_BUDGET),
        parent_points=points,
        surrogate_steps=surrogate_steps,
        error="" if converged else error,
    )
