"""Reference optimizers on the same parent: parent-only BFGS and CG, and the surrogate warm start."""

from __future__ import annotations

from ase.calculators.emt import EMT
from ase.optimize import BFGS, GPMin

from finetuna_parsl.learner import LearnerSettings, ParentPoint, free_fmax
from finetuna_parsl.learner.reference import run_reference
from finetuna_parsl.parents import make_parent
from finetuna_parsl.systems import demo_systems
from toy_surrogate import ToySurrogate

SYSTEM = demo_systems(4)[3]


def emt_call(system, counter):
    session = make_parent("emt")
    session.start(system)

    def call(positions):
        counter.append(1)
        r = session.calculate(positions)
        return ParentPoint(positions, r.energy, r.forces)

    return call


def test_parent_only_bfgs_is_ase_bfgs():
    calls = []
    result = run_reference("bfgs", SYSTEM, emt_call(SYSTEM, calls), LearnerSettings())
    atoms = SYSTEM.to_atoms()
    atoms.calc = EMT()
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=0.03)
    assert result.status == "converged"
    assert result.parent_calls == len(calls) == opt.nsteps + 1
    assert abs(result.parent_points[-1].energy - atoms.get_potential_energy()) < 1e-9


def test_parent_only_cg_converges():
    calls = []
    result = run_reference("cg", SYSTEM, emt_call(SYSTEM, calls), LearnerSettings())
    assert result.status == "converged" and result.parent_calls == len(calls) > 3
    assert min(free_fmax(p.forces, SYSTEM.fixed) for p in result.parent_points) <= 0.03


def test_warm_start_relaxes_on_the_surrogate_first():
    calls = []
    surrogate = ToySurrogate()
    calc = surrogate.calculator(surrogate.initial_head())
    result = run_reference("warm-start", SYSTEM, emt_call(SYSTEM, calls), LearnerSettings(), surrogate=calc)
    assert result.status == "converged"
    assert len(result.surrogate_steps) > 5
    bfgs = run_reference("bfgs", SYSTEM, emt_call(SYSTEM, []), LearnerSettings())
    assert result.parent_calls < bfgs.parent_calls


def test_budget_stops_a_reference():
    calls = []
    result = run_reference("bfgs", SYSTEM, emt_call(SYSTEM, calls), LearnerSettings(max_parent_calls=4))
    assert result.status == "parent_budget" and result.parent_calls == 4 == len(calls)


class CountingEMT(EMT):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def calculate(self, *args, **kwargs):
        self.calls += 1
        super().calculate(*args, **kwargs)


def test_parent_only_gpmin_is_ase_gpmin():
    calls = []
    result = run_reference("gpmin", SYSTEM, emt_call(SYSTEM, calls), LearnerSettings())
    atoms = SYSTEM.to_atoms()
    atoms.calc = CountingEMT()
    GPMin(atoms, logfile=None).run(fmax=0.03, steps=100)
    assert result.method == "gpmin" and result.status == "converged"
    assert result.parent_calls == len(calls) == atoms.calc.calls
    assert free_fmax(result.parent_points[-1].forces, SYSTEM.fixed) <= 0.03
    assert abs(result.parent_points[-1].energy - atoms.get_potential_energy()) < 1e-9
    bfgs = run_reference("bfgs", SYSTEM, emt_call(SYSTEM, []), LearnerSettings())
    assert result.parent_calls < bfgs.parent_calls  # the no-prior GP baseline beats parent-only BFGS here


def test_budget_stops_gpmin():
    calls = []
    result = run_reference("gpmin", SYSTEM, emt_call(SYSTEM, calls), LearnerSettings(max_parent_calls=3))
    assert result.status == "parent_budget" and result.parent_calls == 3 == len(calls)
