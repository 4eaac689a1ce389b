"""The FINETUNA online learner as two pure functions: propose the next parent call, record its answer.

propose(): fine-tune the surrogate head on the newest parent point or all of them (settings.train_on),
rebuild BFGS's Hessian from parent points only, take the parent-force step, then relax on the surrogate
(optionally made exact at parent points: learner/residual.py) until the query rule fires, or the next step
would make an OC20 anomaly the newest parent point lacks (anomaly_guard), or move the adsorbate beyond its
leash (adsorbate_leash) or out of the trust radius (trust_radius): the parent is then asked at the last
surrogate structure, so a chemistry change is always the parent's step, never the surrogate's alone.
record_parent(): add the parent point and decide whether the relaxation is done.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Protocol

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from .bfgs import HessianBFGS, constrain, free_fmax
from .anomaly import AnomalyGuard
from .query import leashed_atoms, leaves_leash, leaves_trust, makes_anomaly, query_reason, segment_cap, trust_radius
from .residual import NewestPointResidual, ParentPointsResidual
from ..records import (
    OUTCOME_CONVERGED,
    OUTCOME_PARENT_BUDGET,
    OUTCOME_RUNNING,
    OUTCOME_SURROGATE_BUDGET,
    REASON_BUDGET,
    REASON_INITIAL,
    SOURCE_SURROGATE,
    TRAIN_NEWEST,
    Evaluation,
)
from .state import LearnerState, Proposal


class SurrogateModel(Protocol):
    """What the learner needs from a surrogate (finetuna_parsl.surrogate.Surrogate provides it; so may a user's
    factory, surrogate.factory). A head is the fine-tunable part as opaque bytes: it is stored for resume and
    crosses process boundaries, the rest of the model stays in the worker."""

    def initial_head(self) -> bytes:
        """The head before any parent point: the pretrained prediction, unchanged."""
        ...

    def fine_tune(self, head: bytes, points: list[Atoms]) -> tuple[bytes, dict]:
        """`head` trained further on `points` (Atoms carrying the parent's energy in eV and unconstrained forces
        in eV/A, as a SinglePointCalculator); returns the new head and a dict of what training did."""
        ...

    def calculator(self, head: bytes) -> Calculator:
        """An ASE calculator predicting with `head`: energy (eV), unconstrained forces ((n, 3) eV/A) and, when
        the surrogate has an ensemble, results["uncertainty"] (eV/A, the uncertainty query rule's input).
        Non-finite values end the learn step with SurrogateDiverged."""
        ...


class SurrogateDiverged(RuntimeError):
    """The surrogate returned non-finite energy or forces: the segment cannot continue."""


def point_atoms(state: LearnerState, point: Evaluation) -> Atoms:
    """A parent point as Atoms carrying the parent's energy and (unconstrained) forces."""
    atoms = state.system.to_atoms(point.positions)
    atoms.calc = SinglePointCalculator(atoms, energy=point.energy, forces=point.forces)
    return atoms


def rebuild_optimizer(state: LearnerState) -> HessianBFGS:
    """BFGS whose Hessian is replayed over all parent points but the newest (reset, then updated)."""
    fixed = state.system.fixed
    return HessianBFGS.replay(
        ((p.positions, constrain(p.forces, fixed)) for p in state.parent_points[:-1]),
        n_atoms=state.system.n_atoms,
        alpha=state.settings.alpha,
        maxstep=state.settings.maxstep,
        fixed=fixed,
        damping=state.settings.hessian_damping,
    )


def bfgs_step(opt: HessianBFGS, positions: np.ndarray, forces: np.ndarray, state: LearnerState,
              steps: int) -> np.ndarray:
    """opt.step, or SurrogateDiverged when the step is not finite (a Hessian with no curvature along some
    direction, e.g. atoms driven far off the slab), before any surrogate sees +-inf positions."""
    with np.errstate(divide="ignore", invalid="ignore"):
        new = opt.step(positions, forces)
    if not np.isfinite(new).all():
        raise SurrogateDiverged(f"system {state.system.system_id}: the BFGS step after {steps} surrogate steps is "
                                "not finite (the Hessian has no curvature along some direction)")
    return new


def propose(state: LearnerState, surrogate: SurrogateModel) -> Proposal:
    """Run one learn step: the positions of the next parent call and the surrogate segment that led there."""
    settings = state.settings
    head = state.head if state.head is not None else surrogate.initial_head()
    if not state.parent_points:
        # The first parent call is on the initial structure: it seeds both the data and the Hessian.
        return Proposal(positions=state.system.positions.copy(), segment=[], head=head, head_points=0,
                        reason=REASON_INITIAL)

    fine_tune_s = 0.0
    head_points = state.head_points
    if head_points < len(state.parent_points):
        train = state.parent_points[-1:] if settings.train_on == TRAIN_NEWEST else state.parent_points
        t0 = time.perf_counter()
        head, _info = surrogate.fine_tune(head, [point_atoms(state, p) for p in train])
        fine_tune_s = time.perf_counter() - t0
        head_points = len(state.parent_points)

    fixed = state.system.fixed
    newest = state.parent_points[-1]
    opt = rebuild_optimizer(state)
    positions = bfgs_step(opt, newest.positions, constrain(newest.forces, fixed), state, 0)

    calc = surrogate.calculator(head)
    if settings.exact_at_newest:
        calc = NewestPointResidual(calc, state.system.to_atoms(newest.positions), newest.energy, newest.forces,
                                   fade=settings.exact_fade)
    if settings.residual_points:
        points = [(p.positions, p.energy, p.forces) for p in state.parent_points[-settings.residual_points:]]
        calc = ParentPointsResidual(calc, state.system.to_atoms(newest.positions), points, ~fixed,
                                    scale=settings.residual_scale)
    atoms = state.system.to_atoms(positions)
    atoms.calc = calc
    budget_left = settings.max_surrogate_steps - state.surrogate_steps
    cap = segment_cap(settings, [p.energy for p in state.parent_points])
    radius = trust_radius(settings, free_fmax(newest.forces, fixed))
    guard = AnomalyGuard.for_system(state.system) if settings.anomaly_guard else None
    allowed = guard.anomalies(newest.positions) if guard is not None else frozenset()
    leashed = leashed_atoms(state.system) if settings.adsorbate_leash is not None else None
    segment: list[Evaluation] = []
    reason = ""
    while not reason:
        if len(segment) >= budget_left:
            reason = REASON_BUDGET
            break
        t0 = time.perf_counter()
        atoms.positions = positions  # direct assignment: positions already honour FixAtoms
        energy = float(atoms.get_potential_energy())
        forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
        uncertainty = float(calc.results.get("uncertainty", 0.0))
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise SurrogateDiverged(f"system {state.system.system_id}: surrogate gave non-finite energy/forces")
        segment.append(Evaluation(positions.copy(), energy, forces, SOURCE_SURROGATE, uncertainty,
                                  wall_s=time.perf_counter() - t0))
        reason = query_reason(
            settings, free_fmax(forces, fixed), len(segment), uncertainty,
            [step.positions for step in segment[-settings.stall_steps - 1:]],
            cap,
        )
        if not reason:
            positions = bfgs_step(opt, positions, constrain(forces, fixed), state, len(segment))
            reason = (makes_anomaly(guard, allowed, positions)
                      or leaves_leash(settings.adsorbate_leash, leashed, newest.positions, positions)
                      or leaves_trust(radius, newest.positions, positions))

    call_at = segment[-1].positions if segment else positions
    return Proposal(
        positions=call_at.copy(),
        segment=segment,
        head=head,
        head_points=head_points,
        reason=reason,
        fine_tune_s=fine_tune_s,
        surrogate_budget_spent=reason == REASON_BUDGET,
    )


def record_parent(state: LearnerState, proposal: Proposal, point: Evaluation) -> LearnerState:
    """The state after the parent answered `proposal`: new point, new head, and the stop decision."""
    new = replace(
        state,
        parent_points=[*state.parent_points, point],
        head=proposal.head,
        head_points=proposal.head_points,
        surrogate_steps=state.surrogate_steps + len(proposal.segment),
    )
    return settle(new, surrogate_budget_spent=proposal.surrogate_budget_spent)


def settle(state: LearnerState, surrogate_budget_spent: bool = False) -> LearnerState:
    """The state with its outcome: parent-confirmed converged, or a budget spent, or still running.

    Used after every parent point, and on resume (the driver may have died after storing the last point).
    """
    settings = state.settings
    if state.parent_points and free_fmax(state.parent_points[-1].forces, state.system.fixed) <= settings.fmax:
        return state.with_outcome(OUTCOME_CONVERGED)
    if state.parent_calls >= settings.max_parent_calls:
        return state.with_outcome(OUTCOME_PARENT_BUDGET)
    if surrogate_budget_spent or state.surrogate_steps >= settings.max_surrogate_steps:
        return state.with_outcome(OUTCOME_SURROGATE_BUDGET)
    return state.with_outcome(OUTCOME_RUNNING)
