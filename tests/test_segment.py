"""The learn step as segment_init / segment_step, fed surrogate predictions made outside the learner: the same
proposals as propose(), bit for bit; one predictor serving several relaxations' steps at once; pure and picklable."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase.calculators.emt import EMT
from conftest import paper
from toy_surrogate import ToySurrogate

from finetuna_parsl.learner import (
    LearnerState,
    Prediction,
    Proposal,
    Segment,
    fine_tune_points,
    propose,
    record_parent,
    segment_init,
    segment_step,
)
from finetuna_parsl.parents import make_parent
from finetuna_parsl.records import LearnerSettings
from finetuna_parsl.systems import demo_systems

SYSTEMS = demo_systems(20, seed=0)


class EMTSurrogate:
    """EMT as the surrogate (SurrogateModel protocol): nothing to fine-tune, no uncertainty."""

    def initial_head(self) -> bytes:
        return b""

    def fine_tune(self, head, points):
        return b"", {}

    def calculator(self, head):
        return EMT()


def toy_prediction(surrogate: ToySurrogate, head: bytes, system, positions) -> Prediction:
    """The toy surrogate (EMT plus a smooth error, a Delta head, an ensemble spread) asked by the test."""
    atoms = system.to_atoms(positions)
    atoms.calc = surrogate.calculator(head)
    return Prediction(atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False),
                      atoms.calc.results["uncertainty"])


def emt_predictor():
    """Plain ASE EMT asked by the test, one calculator for a learn step as propose() keeps one (EMT's neighbour
    list remembers where it was built: a fresh one per structure differs in the last bits)."""
    calc, atoms = EMT(), None

    def predict(surrogate, head: bytes, system, positions) -> Prediction:
        nonlocal atoms
        if atoms is None:
            atoms = system.to_atoms(positions)
            atoms.calc = calc
        atoms.positions = positions
        return Prediction(atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False))

    return predict


def head_for(state: LearnerState, surrogate) -> bytes:
    """What the caller does before segment_init: the head, fine-tuned on fine_tune_points when there are any."""
    head = state.head if state.head is not None else surrogate.initial_head()
    train = fine_tune_points(state)
    if train:
        head, _ = surrogate.fine_tune(head, train)
    return head


def driven(state: LearnerState, surrogate, predictor) -> Proposal:
    """One learn step through segment_init / segment_step, every prediction made here by predictor()'s function."""
    predict = predictor()
    head = head_for(state, surrogate)
    segment = segment_init(state, head)
    while isinstance(segment, Segment):
        segment = segment_step(segment, predict(surrogate, head, state.system, segment.positions))
    return segment


def assert_same(a: Proposal, b: Proposal) -> None:
    np.testing.assert_array_equal(a.positions, b.positions)
    assert (a.reason, a.head, a.head_points, a.surrogate_budget_spent) == (
        b.reason, b.head, b.head_points, b.surrogate_budget_spent)
    assert len(a.segment) == len(b.segment)
    for x, y in zip(a.segment, b.segment):
        np.testing.assert_array_equal(x.positions, y.positions)
        np.testing.assert_array_equal(x.forces, y.forces)
        assert (x.energy, x.uncertainty, x.source) == (y.energy, y.uncertainty, y.source)


@pytest.mark.parametrize("system, settings, make, predictor", [
    (0, paper(query="k-steps", k=3), ToySurrogate, lambda: toy_prediction),
    (0, paper(query="uncertainty", uncertainty_threshold=0.05), ToySurrogate, lambda: toy_prediction),
    (3, paper(query="k-steps", k=10, exact_at_newest=True, residual_points=4), ToySurrogate,
     lambda: toy_prediction),
    (7, paper(query="relaxed-only", max_surrogate_steps=7), ToySurrogate, lambda: toy_prediction),
    (4, paper(query="k-steps", k=5, exact_at_newest=True), EMTSurrogate, emt_predictor),
], ids=["k-steps", "uncertainty", "both-residuals", "surrogate-budget", "emt"])
def test_predictions_from_outside_give_propose_s_proposals(system, settings, make, predictor):
    """A whole relaxation (EMT parent), every learn step made twice from the same state: by propose() and by
    segment_init / segment_step with the predictions made by the test. The proposals agree bit for bit."""
    system = SYSTEMS[system]
    parent = make_parent("emt")
    parent.start(system)
    state = LearnerState(system=system, settings=settings)
    reasons = []
    while not state.done:
        expected = propose(state, make())
        proposal = driven(state, make(), predictor)
        assert_same(proposal, expected)
        reasons.append(proposal.reason)
        state = record_parent(state, proposal, parent.calculate(proposal.positions))
    assert len(reasons) >= 2 and reasons[0] == "initial"


def test_one_predictor_serves_several_relaxations_at_once():
    """Four relaxations advanced together: each round every segment waiting for the surrogate gets its prediction
    from one batch call, and every one waiting for the parent gets its parent call. Each ends exactly where it
    ends run alone with propose()."""
    cases = [(SYSTEMS[0], paper(query="k-steps", k=3)),
             (SYSTEMS[1], paper(query="uncertainty", uncertainty_threshold=0.05)),
             (SYSTEMS[2], paper(query="k-steps", k=10, exact_at_newest=True)),
             (SYSTEMS[5], paper(query="relaxed-only", max_parent_calls=30))]
    surrogate = ToySurrogate()
    batches = []

    def predict_batch(requests):
        batches.append(len(requests))
        return [toy_prediction(surrogate, head, system, positions) for head, system, positions in requests]

    parents, states, work = [], [], []
    for system, settings in cases:
        parent = make_parent("emt")
        parent.start(system)
        parents.append(parent)
        states.append(LearnerState(system=system, settings=settings))
        work.append(None)
    while not all(state.done for state in states):
        for i, state in enumerate(states):  # start a learn step where none is under way
            if work[i] is None and not state.done:
                work[i] = segment_init(state, head_for(state, surrogate))
        waiting = [i for i, w in enumerate(work) if isinstance(w, Segment)]
        if waiting:
            predictions = predict_batch([(work[i].head, work[i].state.system, work[i].positions) for i in waiting])
            for i, prediction in zip(waiting, predictions):
                work[i] = segment_step(work[i], prediction)
        for i, w in enumerate(work):
            if isinstance(w, Proposal):
                states[i] = record_parent(states[i], w, parents[i].calculate(w.positions))
                work[i] = None
    assert max(batches) == len(cases) and sum(batches) > len(batches)  # several relaxations per call

    for (system, settings), together in zip(cases, states):
        alone = LearnerState(system=system, settings=settings)
        parent = make_parent("emt")
        parent.start(system)
        while not alone.done:
            proposal = propose(alone, ToySurrogate())
            alone = record_parent(alone, proposal, parent.calculate(proposal.positions))
        assert (together.outcome, together.parent_calls, together.surrogate_steps) == (
            alone.outcome, alone.parent_calls, alone.surrogate_steps)
        for a, b in zip(together.parent_points, alone.parent_points):
            np.testing.assert_array_equal(a.positions, b.positions)
            assert (a.energy, a.reason) == (b.energy, b.reason)


def started(system_index: int, settings: LearnerSettings, parent_calls: int) -> LearnerState:
    """The state after `parent_calls` parent calls (propose, toy surrogate, EMT parent)."""
    system = SYSTEMS[system_index]
    parent = make_parent("emt")
    parent.start(system)
    state = LearnerState(system=system, settings=settings)
    for _ in range(parent_calls):
        proposal = propose(state, ToySurrogate())
        state = record_parent(state, proposal, parent.calculate(proposal.positions))
    return state


def test_the_residual_anchors_are_asked_first_then_the_surrogate_steps():
    """With both residual corrections the surrogate is first asked at the newest parent point (the shift's) and
    at the last residual_points parent points (the Gaussian process's), then along the relaxation."""
    settings = paper(query="k-steps", k=10, exact_at_newest=True, residual_points=2)
    state = started(3, settings, 3)
    surrogate = ToySurrogate()
    head = head_for(state, surrogate)
    segment = segment_init(state, head)
    asked = []
    while isinstance(segment, Segment) and segment.anchoring:
        asked.append(segment.positions)
        segment = segment_step(segment, toy_prediction(surrogate, head, state.system, segment.positions))
    expected = [state.parent_points[-1].positions, *(p.positions for p in state.parent_points[-2:])]
    assert len(asked) == len(expected)
    for a, b in zip(asked, expected):
        np.testing.assert_array_equal(a, b)
    assert isinstance(segment, Segment) and not segment.steps and len(segment.corrections) == 2


def test_segment_step_is_pure_and_a_segment_crosses_a_process_boundary():
    """segment_step leaves its segment as it was (the same prediction twice gives the same next segment), and a
    segment pickled mid-way goes on to the same proposal."""
    state = started(6, paper(query="k-steps", k=10), 2)
    surrogate = ToySurrogate()
    head = head_for(state, surrogate)
    segment = segment_init(state, head)
    for _ in range(2):
        segment = segment_step(segment, toy_prediction(surrogate, head, state.system, segment.positions))
    assert isinstance(segment, Segment) and len(segment.steps) == 2
    hessian, positions = segment.optimizer.H.copy(), segment.positions.copy()
    prediction = toy_prediction(surrogate, head, state.system, segment.positions)
    first, again = segment_step(segment, prediction), segment_step(segment, prediction)
    np.testing.assert_array_equal(segment.optimizer.H, hessian)
    np.testing.assert_array_equal(segment.positions, positions)
    assert len(segment.steps) == 2
    np.testing.assert_array_equal(first.positions, again.positions)

    def finish(segment):
        while isinstance(segment, Segment):
            segment = segment_step(segment, toy_prediction(surrogate, head, state.system, segment.positions))
        return segment

    copy = pickle.loads(pickle.dumps(segment))
    assert_same(finish(copy), finish(segment))
    assert_same(finish(segment), propose(state, ToySurrogate()))


def test_the_first_learn_step_asks_the_parent_at_once_and_bad_forces_are_refused():
    system = SYSTEMS[0]
    state = LearnerState(system=system, settings=paper())
    first = segment_init(state, b"head")
    assert isinstance(first, Proposal) and first.reason == "initial" and first.segment == []
    np.testing.assert_array_equal(first.positions, system.positions)

    state = started(0, paper(), 1)
    segment = segment_init(state, head_for(state, ToySurrogate()))
    with pytest.raises(ValueError, match=r"not \(\d+, 3\)"):
        segment_step(segment, Prediction(0.0, np.zeros(3 * system.n_atoms)))


def test_with_the_surrogate_budget_spent_no_correction_is_fitted_and_the_parent_takes_the_step():
    """A resumed relaxation whose surrogate budget is spent (the settings changed): the parent-force step from the
    newest parent point goes to the parent at once, without asking the surrogate at the residual's anchors."""
    from dataclasses import replace

    settings = paper(query="k-steps", k=3, exact_at_newest=True, residual_points=2)
    state = started(2, settings, 3)
    state = replace(state, settings=replace(settings, max_surrogate_steps=state.surrogate_steps))
    proposal = segment_init(state, head_for(state, ToySurrogate()))
    assert isinstance(proposal, Proposal) and proposal.reason == "budget" and proposal.segment == []
    assert_same(proposal, propose(state, ToySurrogate()))
