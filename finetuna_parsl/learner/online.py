"""The FINETUNA online learner: propose the next parent call, record its answer.

A learn step: fine-tune the surrogate head on the newest parent point or all of them (settings.train_on),
rebuild BFGS's Hessian from parent points only, take the parent-force step, then relax on the surrogate
(optionally made exact at parent points: learner/residual.py) until the query rule fires, or the next step
would make an OC20 anomaly the newest parent point lacks (anomaly_guard), or move the adsorbate beyond its
leash (adsorbate_leash) or out of the trust radius (trust_radius): the parent is then asked at the last
surrogate structure, so a chemistry change is always the parent's step, never the surrogate's alone.

The step is two pure functions with the surrogate outside them (as TorchSim's optimizers' init and step), so
one predictor can serve many relaxations' steps at once:

    train = fine_tune_points(state)            # [] when the head is current
    head = surrogate.fine_tune(head, train)    # (if any) the caller's
    segment = segment_init(state, head)        # Segment, or the Proposal straight away
    while isinstance(segment, Segment):
        prediction = ...                       # the surrogate at segment.positions, made anywhere
        segment = segment_step(segment, prediction)
    proposal = segment                         # where to call the parent, and the segment that led there

propose(): that loop with one surrogate, one prediction at a time (what the learn worker runs).
record_parent(): add the parent point and decide whether the relaxation is done.
"""

from __future__ import annotations

import copy
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
from .residual import PointShift, ResidualFit
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
from .state import LearnerState, Prediction, Proposal, Segment


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


def segment_origin(state: LearnerState) -> int:
    """Index in state.parent_points of the point the next segment starts from: -1 (the newest), or with
    settings.restart_from_lowest the lowest-energy parent point when the newest lies above it. The segment that
    led uphill is then rejected, as a trust-region method rejects a step that raised the energy, instead of
    stepping on from the uphill point (what the backoff alternation on the oc20-paper k-steps run did:
    benchmarks/oc20-paper/README.md). A pure function of the parent points, so a resumed run agrees."""
    points = state.parent_points
    if not state.settings.restart_from_lowest or len(points) < 2:
        return -1
    lowest = min(range(len(points)), key=lambda i: points[i].energy)  # the first of equal lows
    return -1 if points[-1].energy <= points[lowest].energy else lowest


def rebuild_optimizer(state: LearnerState, origin: int = -1) -> HessianBFGS:
    """BFGS whose Hessian is replayed over the parent points (reset, then updated) up to the step from the origin
    point (segment_origin): all but the newest when the origin is the newest; all of them otherwise, so the step
    from the origin first takes in the curvature between the newest point and it."""
    fixed = state.system.fixed
    points = state.parent_points[:-1] if origin == -1 else state.parent_points
    return HessianBFGS.replay(
        ((p.positions, constrain(p.forces, fixed)) for p in points),
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


def fine_tune_points(state: LearnerState) -> list[Atoms]:
    """What the head must be fine-tuned on before this learn step: the newest parent point or all of them
    (settings.train_on), as Atoms carrying the parent's energy and forces; [] when the head has seen them all."""
    if state.head_points >= len(state.parent_points):
        return []
    train = state.parent_points[-1:] if state.settings.train_on == TRAIN_NEWEST else state.parent_points
    return [point_atoms(state, p) for p in train]


def segment_init(state: LearnerState, head: bytes, fine_tune_s: float = 0.0) -> Segment | Proposal:
    """Start a learn step: the Segment that asks the surrogate for its first Prediction, or straight away the
    Proposal (the first parent call, on the initial structure; or, with the surrogate budget spent, the
    parent-force step from the newest parent point).

    head: the surrogate head to predict with: state.head, or the surrogate's initial head before the first learn
    step, fine-tuned on fine_tune_points(state) when there are any (that took fine_tune_s seconds). No surrogate
    call is made here. SurrogateDiverged when the parent-force step is not finite.
    """
    settings = state.settings
    if not state.parent_points:
        # The first parent call is on the initial structure: it seeds both the data and the Hessian.
        return Proposal(positions=state.system.positions.copy(), segment=[], head=head, head_points=0,
                        reason=REASON_INITIAL)
    fixed = state.system.fixed
    origin = segment_origin(state)
    newest = state.parent_points[origin]  # the segment's origin: the newest point unless restart_from_lowest
    opt = rebuild_optimizer(state, origin)
    start = bfgs_step(opt, newest.positions, constrain(newest.forces, fixed), state, 0)
    anchors = []
    steps_left = state.surrogate_steps < settings.max_surrogate_steps  # else: no correction to fit, no step
    if settings.exact_at_newest and steps_left:
        anchors.append(np.array(newest.positions, dtype=float))
    if settings.residual_points and steps_left:
        for point in state.parent_points[-settings.residual_points:]:
            # the point's free coordinates, with the fixed atoms where the newest point has them
            at = np.array(newest.positions, dtype=float)
            at[~fixed] = np.asarray(point.positions, dtype=float)[~fixed]
            anchors.append(at)
    guard = AnomalyGuard.for_system(state.system) if settings.anomaly_guard else None
    segment = Segment(
        state=state,
        head=head,
        head_points=max(state.head_points, len(state.parent_points)),
        fine_tune_s=fine_tune_s,
        positions=anchors[0] if anchors else start,
        optimizer=opt,
        start=start,
        anchors=tuple(anchors),
        cap=segment_cap(settings, [p.energy for p in state.parent_points]),
        radius=trust_radius(settings, free_fmax(newest.forces, fixed)),
        guard=guard,
        allowed=guard.anomalies(newest.positions) if guard is not None else frozenset(),
        leashed=leashed_atoms(state.system) if settings.adsorbate_leash is not None else None,
        origin=origin,
    )
    return segment if anchors else _step_at(segment, start)


def segment_step(segment: Segment, prediction: Prediction) -> Segment | Proposal:
    """Go on from the surrogate's `prediction` at segment.positions: the next Segment (asking at its own
    positions), or the Proposal that ends the learn step (the parent is to be called at its positions; reason:
    a query rule fired, the next step would make an anomaly or leave the leash or trust radius, or the budget is
    spent). Pure: `segment` is left as it was.

    ValueError when the forces are not (n_atoms, 3); SurrogateDiverged when the (corrected) energy or forces are
    not finite, or the next BFGS step is not.
    """
    state = segment.state
    n_atoms = state.system.n_atoms
    energy = float(prediction.energy)
    forces = np.array(prediction.forces, dtype=float)
    if forces.shape != (n_atoms, 3):
        raise ValueError(f"system {state.system.system_id}: the prediction's forces are {forces.shape}, "
                         f"not ({n_atoms}, 3)")
    if segment.anchoring:
        return _anchored(segment, prediction)

    settings, fixed = state.settings, state.system.fixed
    for correction in segment.corrections:
        energy, forces = correction.apply(segment.positions, energy, forces)
    uncertainty = float(prediction.uncertainty)
    if not (np.isfinite(energy) and np.isfinite(forces).all()):
        raise SurrogateDiverged(f"system {state.system.system_id}: surrogate gave non-finite energy/forces")
    steps = (*segment.steps, Evaluation(segment.positions.copy(), energy, forces, SOURCE_SURROGATE, uncertainty,
                                        wall_s=prediction.wall_s))
    reason = query_reason(
        settings, free_fmax(forces, fixed), len(steps), uncertainty,
        [step.positions for step in steps[-settings.stall_steps - 1:]],
        segment.cap,
    )
    if reason:
        return _proposal(segment, steps, reason, segment.positions)
    opt = copy.deepcopy(segment.optimizer)
    positions = bfgs_step(opt, segment.positions, constrain(forces, fixed), state, len(steps))
    newest = state.parent_points[segment.origin].positions
    reason = (makes_anomaly(segment.guard, segment.allowed, positions)
              or leaves_leash(settings.adsorbate_leash, segment.leashed, newest, positions)
              or leaves_trust(segment.radius, newest, positions))
    if reason:
        return _proposal(segment, steps, reason, positions)
    return _step_at(replace(segment, steps=steps, optimizer=opt), positions)


def _anchored(segment: Segment, prediction: Prediction) -> Segment | Proposal:
    """The segment with one more anchor prediction in: the next anchor, or (all in) the corrections fitted and the
    first surrogate step."""
    anchored = (*segment.anchored, prediction)
    if len(anchored) < len(segment.anchors):
        return replace(segment, anchored=anchored, positions=segment.anchors[len(anchored)])
    state = segment.state
    settings, newest = state.settings, state.parent_points[segment.origin]
    raw = [(float(p.energy), np.asarray(p.forces, dtype=float)) for p in anchored]
    corrections: list[PointShift | ResidualFit] = []
    if settings.exact_at_newest:  # the first anchor: the newest parent point
        energy, forces = raw.pop(0)
        corrections.append(PointShift.fit(segment.anchors[0], newest.energy, newest.forces, energy, forces,
                                          fade=settings.exact_fade))
    if settings.residual_points:
        at_points = []
        for at, (energy, forces) in zip(segment.anchors[len(corrections):], raw):
            for correction in corrections:
                energy, forces = correction.apply(at, energy, forces)
            at_points.append((energy, forces))
        points = [(p.positions, p.energy, p.forces) for p in state.parent_points[-settings.residual_points:]]
        corrections.append(ResidualFit.fit(points, ~state.system.fixed, at_points, scale=settings.residual_scale))
    return _step_at(replace(segment, anchored=anchored, corrections=tuple(corrections)), segment.start)


def _step_at(segment: Segment, positions: np.ndarray) -> Segment | Proposal:
    """The segment asking for a surrogate step at `positions`, or the budget Proposal when no step is left."""
    state = segment.state
    if len(segment.steps) >= state.settings.max_surrogate_steps - state.surrogate_steps:
        return _proposal(segment, segment.steps, REASON_BUDGET, positions)
    return replace(segment, positions=positions)


def _proposal(segment: Segment, steps: tuple[Evaluation, ...], reason: str, positions: np.ndarray) -> Proposal:
    """The end of the learn step: the parent is called at the last surrogate structure (at `positions` when
    the segment has no step)."""
    call_at = steps[-1].positions if steps else positions
    return Proposal(
        positions=call_at.copy(),
        segment=list(steps),
        head=segment.head,
        head_points=segment.head_points,
        reason=reason,
        fine_tune_s=segment.fine_tune_s,
        surrogate_budget_spent=reason == REASON_BUDGET,
    )


def predict_with(calc: Calculator, atoms: Atoms, positions: np.ndarray) -> Prediction:
    """The Prediction of an ASE calculator (a surrogate head's) at `positions` ((n_atoms, 3) A), made on `atoms`
    (the system's, with `calc` attached); the uncertainty is calc.results["uncertainty"] where there is one."""
    t0 = time.perf_counter()
    atoms.positions = positions  # direct assignment: positions already honour FixAtoms
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
    uncertainty = float(calc.results.get("uncertainty", 0.0))
    return Prediction(energy, forces, uncertainty, wall_s=time.perf_counter() - t0)


def propose(state: LearnerState, surrogate: SurrogateModel) -> Proposal:
    """Run one learn step: the positions of the next parent call and the surrogate segment that led there.

    segment_init and segment_step with the surrogate's fine-tuning and predictions made here, one at a time."""
    head = state.head if state.head is not None else surrogate.initial_head()
    fine_tune_s = 0.0
    train = fine_tune_points(state)
    if train:
        t0 = time.perf_counter()
        head, _info = surrogate.fine_tune(head, train)
        fine_tune_s = time.perf_counter() - t0
    segment = segment_init(state, head, fine_tune_s)
    if isinstance(segment, Proposal):
        return segment
    calc = surrogate.calculator(head)
    atoms = state.system.to_atoms(segment.positions)
    atoms.calc = calc
    while isinstance(segment, Segment):
        segment = segment_step(segment, predict_with(calc, atoms, segment.positions))
    return segment


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
