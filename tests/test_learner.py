"""The online learner as pure logic: query rules, Hessian replay, budgets, FixAtoms, state round-trip."""

from __future__ import annotations

import pickle
from dataclasses import replace

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.optimize import BFGS
from conftest import paper
from toy_surrogate import ToySurrogate

from finetuna_parsl.learner import (
    HessianBFGS,
    LearnerState,
    constrain,
    free_fmax,
    propose,
    query_reason,
    record_parent,
    segment_cap,
)
from finetuna_parsl.parents import make_parent
from finetuna_parsl.records import (
    OUTCOME_CONVERGED,
    OUTCOME_PARENT_BUDGET,
    OUTCOME_RUNNING,
    OUTCOME_SURROGATE_BUDGET,
)
from finetuna_parsl.systems import demo_systems

SYSTEMS = demo_systems(20, seed=0)


def relax(system, settings, surrogate=None):
    """Run the learner to its end with an EMT parent; returns (final state, proposals)."""
    surrogate = surrogate or ToySurrogate()
    parent = make_parent("emt")
    parent.start(system)
    state = LearnerState(system=system, settings=settings)
    proposals = []
    while not state.done:
        proposal = propose(state, surrogate)
        proposals.append(proposal)
        state = record_parent(state, proposal, parent.calculate(proposal.positions))
    return state, proposals


# --- query rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, fmax, steps, unc, expected",
    [
        ("relaxed-only", 0.02, 1, 0.0, "relaxed"),
        ("relaxed-only", 0.5, 50, 9.9, ""),
        ("k-steps", 0.5, 2, 0.0, ""),
        ("k-steps", 0.5, 3, 0.0, "k-steps"),
        ("k-steps", 0.01, 1, 0.0, "relaxed"),
        ("uncertainty", 0.5, 50, 0.04, ""),
        ("uncertainty", 0.5, 1, 0.06, "uncertainty"),
        ("uncertainty", 0.03, 1, 0.0, "relaxed"),
    ],
)
def test_query_rule_decisions(query, fmax, steps, unc, expected):
    settings = paper(query=query, k=3, fmax=0.03, uncertainty_threshold=0.05)
    assert query_reason(settings, fmax, steps, unc) == expected


def test_stalled_surrogate_optimizer_triggers_a_parent_call():
    settings = paper(query="relaxed-only", stall_steps=3, stall_distance=0.02)
    base = np.zeros((2, 3))
    creeping = [base + [0.005 * i, 0, 0] for i in range(4)]
    assert query_reason(settings, 0.5, 4, 0.0, creeping) == "stalled"
    assert query_reason(settings, 0.5, 3, 0.0, creeping[:3]) == ""  # not enough history yet
    moving = [base + [0.01 * i, 0, 0] for i in range(4)]
    assert query_reason(settings, 0.5, 4, 0.0, moving) == ""


def test_surrogate_fmax_can_be_tighter_than_parent_fmax():
    settings = paper(query="relaxed-only", fmax=0.03, surrogate_fmax=0.01)
    assert query_reason(settings, 0.02, 1, 0.0) == ""
    assert query_reason(settings, 0.009, 1, 0.0) == "relaxed"


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="query"):
        paper(query="sometimes")
    with pytest.raises(ValueError, match="k must be >= 1"):
        paper(k=0)
    with pytest.raises(ValueError, match="residual_points must be >= 0"):
        paper(residual_points=-1)
    with pytest.raises(ValueError, match="residual_scale must be > 0"):
        paper(residual_scale=0.0)
    with pytest.raises(ValueError, match=r"hessian_damping must be in \[0, 1\)"):
        paper(hessian_damping=-0.1)
    with pytest.raises(ValueError, match="trust_radius must be > 0"):
        paper(trust_radius=0.0)
    with pytest.raises(ValueError, match="trust_fmax must be > 0"):
        paper(trust_fmax=-1.0)


def test_near_convergence_a_segment_ends_at_the_trust_radius_of_the_newest_parent_point():
    """Once the newest parent point's fmax is below trust_fmax, a surrogate segment must not carry any atom
    farther than trust_radius from it: the parent is called at the last step inside (reason "trust"). On the
    ood bench (k-steps, 20 systems), 41 of 126 segments started below 0.1 eV/A moved an atom more than 0.2 A,
    and 34 of those left the parent above 0.1 eV/A again (benchmarks/history/2026-12-01-learner-trust.md)."""
    system = SYSTEMS[2]
    radius = 0.05
    settings = paper(query="k-steps", k=10, trust_radius=radius, trust_fmax=10.0)
    state, proposals = relax(system, settings)
    assert state.outcome == OUTCOME_CONVERGED
    trusted = [p for p in proposals if p.reason == "trust"]
    assert trusted
    for before, proposal in zip(state.parent_points, proposals[1:]):
        if len(proposal.segment) > 1:  # the first step is the parent BFGS step (maxstep), taken in any case
            moved = np.linalg.norm(proposal.positions - before.positions, axis=1).max()
            assert moved <= radius + 1e-12, (proposal.reason, moved)

    # above trust_fmax (here: everywhere) the radius does not apply
    off, off_proposals = relax(system, replace(settings, trust_fmax=1e-6))
    assert "trust" not in {p.reason for p in off_proposals}
    assert off.outcome == OUTCOME_CONVERGED


# --- Hessian replay --------------------------------------------------------------------------------
def test_hessian_replay_equals_ase_bfgs_fed_the_same_parent_points():
    system = SYSTEMS[1]
    atoms = system.to_atoms()
    atoms.calc = EMT()
    path = []
    opt = BFGS(atoms, logfile=None)
    opt.attach(lambda: path.append((atoms.positions.copy(), atoms.get_forces(apply_constraint=False).copy())))
    opt.run(fmax=0.03, steps=12)
    assert len(path) >= 6

    # ASE's BFGS stepped through the same points, each given to it through a single-point calculator
    replayed = system.to_atoms(path[0][0])
    ase_opt = BFGS(replayed, logfile=None)
    for positions, forces in path:
        replayed.positions = positions
        replayed.calc = SinglePointCalculator(replayed, energy=0.0, forces=forces)
        ase_opt.step()

    ours = HessianBFGS.replay(((p, constrain(f, system.fixed)) for p, f in path), system.n_atoms, fixed=system.fixed)
    np.testing.assert_allclose(ours.H, ase_opt.H, rtol=1e-10, atol=1e-10)
    assert not np.allclose(ours.H, np.eye(3 * system.n_atoms) * 70.0)  # the replay really changed it


def test_damped_update_keeps_the_curvature_a_far_apart_secant_pair_would_erase():
    """Two parent points 0.3 A apart (a segment between them) with small, almost unchanged forces: ASE's update
    leaves a mode of almost no curvature, or a negative one, along the step, and the next step from a
    near-relaxed point then runs a full maxstep. Powell's damping keeps at least 0.2 of the curvature."""
    n_atoms = 2
    step = np.zeros((n_atoms, 3))
    step[1] = [0.3, 0.0, 0.0]
    forces_a = np.zeros((n_atoms, 3))
    forces_a[1] = [0.05, 0.02, 0.0]
    for forces_b_x in (0.049, 0.06):  # almost flat along the step, then uphill (negative curvature)
        forces_b = forces_a.copy()
        forces_b[1, 0] = forces_b_x
        plain, damped = HessianBFGS(n_atoms), HessianBFGS(n_atoms, damping=0.2)
        for opt in (plain, damped):
            opt.update(np.zeros((n_atoms, 3)), forces_a)
            opt.update(step, forces_b)
        s = step.ravel()
        assert s @ plain.H @ s / (s @ s) < 0.01  # 70 eV/A^2 before the update
        assert np.linalg.eigvalsh(damped.H).min() > 0
        assert s @ damped.H @ s / (s @ s) == pytest.approx(0.2 * 70.0)
        # the next step from a point with fmax 0.05 eV/A: a full maxstep with ASE's update, a short one damped
        near_relaxed = np.zeros((n_atoms, 3))
        near_relaxed[1] = [0.04, 0.03, 0.0]
        lengths = [np.linalg.norm(opt.step(step, near_relaxed) - step, axis=1).max() for opt in (plain, damped)]
        assert lengths[0] == pytest.approx(0.2) and lengths[1] < 0.01
    with pytest.raises(ValueError, match="damping"):
        HessianBFGS(n_atoms, damping=1.0)


def test_step_matches_ase_bfgs_trajectory():
    system = SYSTEMS[3]
    atoms = system.to_atoms()
    atoms.calc = EMT()
    positions = [atoms.positions.copy()]
    opt = BFGS(atoms, logfile=None)
    opt.attach(lambda: positions.append(atoms.positions.copy()))
    opt.run(fmax=0.03, steps=8)

    ours = HessianBFGS(system.n_atoms, fixed=system.fixed)
    probe = system.to_atoms()
    probe.calc = EMT()
    x = system.positions.copy()
    for expected in positions[2:]:
        probe.positions = x
        x = ours.step(x, probe.get_forces())
        np.testing.assert_allclose(x, expected, atol=1e-8)


def test_parent_point_rebuilds_hessian_from_parent_points_only():
    system = SYSTEMS[2]
    state, proposals = relax(system, paper(query="k-steps", k=4, max_parent_calls=4))
    assert state.parent_calls == 4
    from finetuna_parsl.learner.online import rebuild_optimizer

    rebuilt = rebuild_optimizer(state)
    direct = HessianBFGS(system.n_atoms, fixed=system.fixed, damping=state.settings.hessian_damping)
    for p in state.parent_points[:-1]:
        direct.update(p.positions, constrain(p.forces, system.fixed))
    np.testing.assert_allclose(rebuilt.H, direct.H)
    # the surrogate steps in between never entered it: a replay that includes them differs
    mixed = HessianBFGS(system.n_atoms, fixed=system.fixed, damping=state.settings.hessian_damping)
    for proposal, point in zip(proposals[:-1], state.parent_points[:-1]):
        for step in proposal.segment[:-1]:
            mixed.update(step.positions, constrain(step.forces, system.fixed))
        mixed.update(point.positions, constrain(point.forces, system.fixed))
    assert not np.allclose(mixed.H, rebuilt.H)


# --- the learner end to end ------------------------------------------------------------------------
def test_first_parent_call_is_the_initial_structure_and_segments_follow_the_rule():
    system = SYSTEMS[4]
    state, proposals = relax(system, paper(query="k-steps", k=3))
    assert proposals[0].reason == "initial" and proposals[0].segment == []
    np.testing.assert_allclose(state.parent_points[0].positions, system.positions)
    for proposal in proposals[1:]:
        assert 1 <= len(proposal.segment) <= 3
        assert proposal.reason in ("k-steps", "relaxed")
        if proposal.reason == "k-steps":
            assert len(proposal.segment) == 3
        np.testing.assert_allclose(proposal.positions, proposal.segment[-1].positions)
    assert state.outcome == OUTCOME_CONVERGED
    assert free_fmax(state.parent_points[-1].forces, system.fixed) <= 0.03
    assert state.surrogate_steps == sum(len(p.segment) for p in proposals)


@pytest.mark.parametrize("settings, n_systems", [
    (paper(query="k-steps", k=3), 6),
    (paper(query="k-steps", k=10, exact_at_newest=True), 3),  # the surrogate exact at the newest point
])
def test_online_learning_needs_fewer_parent_calls_than_parent_only_bfgs(settings, n_systems):
    online_calls = bfgs_calls = 0
    for system in SYSTEMS[:n_systems]:
        state, _ = relax(system, settings)
        assert state.outcome == OUTCOME_CONVERGED, system.system_id
        online_calls += state.parent_calls
        atoms = system.to_atoms()
        atoms.calc = EMT()
        opt = BFGS(atoms, logfile=None)
        opt.run(fmax=0.03, steps=500)
        bfgs_calls += opt.nsteps + 1
    assert online_calls < 0.6 * bfgs_calls, (online_calls, bfgs_calls)


def test_relaxed_only_calls_the_parent_only_when_the_surrogate_is_relaxed():
    state, proposals = relax(SYSTEMS[3], paper(query="relaxed-only", max_parent_calls=30, backoff=False))
    assert state.outcome == OUTCOME_CONVERGED
    reasons = [p.reason for p in proposals[1:]]
    assert set(reasons) <= {"relaxed", "stalled"} and reasons[-1] == "relaxed"
    for proposal in proposals[1:]:
        if proposal.reason == "relaxed":
            assert free_fmax(proposal.segment[-1].forces, SYSTEMS[3].fixed) <= 0.03


@pytest.mark.parametrize("query, energies, expected", [
    ("k-steps", [], 10),
    ("k-steps", [5.0, 4.0, 3.0], 10),            # downhill: the rule's own k
    ("k-steps", [5.0, 4.0, 4.5], 5),             # above the lowest so far: halved
    ("k-steps", [5.0, 6.0, 7.0, 8.0, 9.0], 1),   # keeps failing: one step, i.e. parent-only BFGS
    ("k-steps", [5.0, 6.0, 4.9], 6),             # a new low grows it back one step at a time
    ("relaxed-only", [5.0, 4.0], None),
    ("relaxed-only", [5.0, 6.0], 8),
    ("relaxed-only", [5.0, 6.0, 4.0, 3.9, 3.8, 3.7, 3.6, 3.5, 3.4, 3.3], None),  # back to no cap
])
def test_segment_cap_backs_off_after_uphill_segments(query, energies, expected):
    assert segment_cap(paper(query=query, k=10), energies) == expected
    assert segment_cap(paper(query=query, k=10, backoff=False), energies) == (10 if query == "k-steps" else None)


class UphillSurrogate:
    """A surrogate that points uphill everywhere (EMT forces reversed): the worst prior there is."""

    def initial_head(self) -> bytes:
        return b""

    def fine_tune(self, head, points):
        return b"", {}

    def calculator(self, head):
        class Reversed(EMT):
            def calculate(self, atoms=None, properties=("energy",), system_changes=()):
                super().calculate(atoms, properties, system_changes)
                self.results["energy"] *= -1
                self.results["forces"] = -self.results["forces"]
        return Reversed()


def bfgs_calls(system) -> int:
    atoms = system.to_atoms()
    atoms.calc = EMT()
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=0.03, steps=500)
    return opt.nsteps + 1


def test_backoff_degrades_a_misleading_surrogate_to_parent_only_bfgs():
    """A surrogate that always points uphill. The cost is bounded by the probing (after each good step the cap
    grows by one, and an uphill probe costs a call) and by the Hessian, rebuilt from parent points that include
    the probes' wild ones. Over the 20 demo systems: BFGS 915 calls; Powell-damped Hessian 3341; ASE's update
    4351, and on demo-003 it never converged (1000 calls), while the damped one took 119."""
    system = SYSTEMS[0]
    reference = bfgs_calls(system)
    settings = dict(query="k-steps", k=10, max_parent_calls=6 * reference)
    state, proposals = relax(system, paper(**settings), UphillSurrogate())
    assert state.outcome == OUTCOME_CONVERGED, (state.parent_calls, reference)
    assert "backoff" in {p.reason for p in proposals}
    stuck, _ = relax(system, paper(**settings, backoff=False), UphillSurrogate())
    assert stuck.outcome in (OUTCOME_PARENT_BUDGET, OUTCOME_SURROGATE_BUDGET)  # without backoff: never there

    system = SYSTEMS[3]
    settings = dict(query="k-steps", k=10, max_parent_calls=4 * bfgs_calls(system))
    damped, _ = relax(system, paper(**settings), UphillSurrogate())
    assert damped.outcome == OUTCOME_CONVERGED
    plain, _ = relax(system, paper(**settings, hessian_damping=0.0), UphillSurrogate())
    assert plain.outcome == OUTCOME_PARENT_BUDGET


def test_restart_from_lowest_starts_each_segment_after_an_uphill_one_from_the_lowest_parent_point():
    """restart_from_lowest: a segment that led the parent uphill is rejected (trust-region style): the next starts
    from the lowest parent point, with the Hessian replayed over every point (the uphill one included); off, or
    with the newest point lowest, the segment starts from the newest point as before."""
    from finetuna_parsl.learner import segment_init
    from finetuna_parsl.learner.online import segment_origin

    system = SYSTEMS[0]
    settings = dict(query="k-steps", k=10, max_parent_calls=6 * bfgs_calls(system))
    state, proposals = relax(system, paper(**settings, restart_from_lowest=True), UphillSurrogate())
    assert state.outcome == OUTCOME_CONVERGED, state.parent_calls
    uphill = 0
    for n in range(2, state.parent_calls):
        prefix = replace(state, parent_points=state.parent_points[:n])
        energies = [p.energy for p in prefix.parent_points]
        segment = segment_init(prefix, b"")
        if energies[-1] > min(energies):
            uphill += 1
            lowest = int(np.argmin(energies))
            assert segment_origin(prefix) == lowest and segment.origin == lowest
            replayed = HessianBFGS(system.n_atoms, fixed=system.fixed, damping=prefix.settings.hessian_damping)
            for p in prefix.parent_points:
                replayed.update(p.positions, constrain(p.forces, system.fixed))
            low = prefix.parent_points[lowest]
            expected = replayed.step(low.positions, constrain(low.forces, system.fixed))
            np.testing.assert_allclose(segment.anchors[0] if segment.anchors else segment.positions,
                                       low.positions if segment.anchors else expected)
            np.testing.assert_allclose(segment.start, expected)
        else:
            assert segment_origin(prefix) == -1
        off = replace(prefix, settings=replace(prefix.settings, restart_from_lowest=False))
        assert segment_origin(off) == -1
        newest = off.parent_points[-1]
        from finetuna_parsl.learner.online import rebuild_optimizer
        np.testing.assert_allclose(segment_init(off, b"").start, rebuild_optimizer(off).step(
            newest.positions, constrain(newest.forces, system.fixed)))
    assert uphill >= 3  # the misleading surrogate led uphill and each time the lowest point took over


def test_uncertainty_rule_fires_on_ensemble_disagreement():
    # the toy ensemble's spread grows with distance from the newest parent point (0.5 * max displacement)
    state, proposals = relax(SYSTEMS[0], paper(query="uncertainty", uncertainty_threshold=0.05))
    reasons = {p.reason for p in proposals[1:]}
    assert "uncertainty" in reasons
    for proposal in proposals[1:]:
        if proposal.reason == "uncertainty":
            assert proposal.segment[-1].uncertainty > 0.05
            assert all(s.uncertainty <= 0.05 for s in proposal.segment[:-1])
    assert state.outcome == OUTCOME_CONVERGED


def test_parent_budget_stops_with_its_outcome():
    state, _ = relax(SYSTEMS[2], paper(query="k-steps", k=2, max_parent_calls=3))
    assert state.outcome == OUTCOME_PARENT_BUDGET
    assert state.parent_calls == 3


def test_surrogate_budget_stops_with_its_outcome():
    state, proposals = relax(SYSTEMS[2], paper(query="relaxed-only", max_surrogate_steps=7))
    assert state.outcome == OUTCOME_SURROGATE_BUDGET
    assert state.surrogate_steps == 7
    assert proposals[-1].reason == "budget"  # the parent still checked where the budget ran out


def test_fixed_atoms_never_move_and_fmax_ignores_them():
    system = SYSTEMS[5]
    assert system.fixed.any()
    state, proposals = relax(system, paper(query="k-steps", k=3))
    for proposal in proposals:
        np.testing.assert_array_equal(proposal.positions[system.fixed], system.positions[system.fixed])
        for step in proposal.segment:
            np.testing.assert_array_equal(step.positions[system.fixed], system.positions[system.fixed])
    final = state.parent_points[-1].forces
    assert free_fmax(final, system.fixed) <= 0.03
    assert free_fmax(final, np.zeros_like(system.fixed)) > 0.03  # fixed atoms still feel forces


def test_state_round_trips_through_pickle():
    """What Parsl does to it on the way to a learn worker and back."""
    state, _ = relax(SYSTEMS[6], paper(query="k-steps", k=3, max_parent_calls=4))
    copy = pickle.loads(pickle.dumps(state))
    assert copy.settings == state.settings
    assert copy.outcome == state.outcome and copy.head == state.head and copy.head_points == state.head_points
    assert copy.surrogate_steps == state.surrogate_steps
    assert len(copy.parent_points) == len(state.parent_points)
    for a, b in zip(copy.parent_points, state.parent_points):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.forces, b.forces)
        assert a.energy == b.energy and a.reason == b.reason
    np.testing.assert_array_equal(copy.system.fixed, state.system.fixed)


def test_resumed_state_continues_exactly_like_the_uninterrupted_one():
    system = SYSTEMS[7]
    settings = paper(query="k-steps", k=3)
    full, _ = relax(system, settings)
    # stop after 3 parent calls, serialise, continue
    part, _ = relax(system, paper(query="k-steps", k=3, max_parent_calls=3))
    resumed = pickle.loads(pickle.dumps(replace(part, outcome=OUTCOME_RUNNING, settings=settings)))
    parent = make_parent("emt")
    parent.start(system)
    surrogate = ToySurrogate()
    while not resumed.done:
        proposal = propose(resumed, surrogate)
        resumed = record_parent(resumed, proposal, parent.calculate(proposal.positions))
    assert resumed.parent_calls == full.parent_calls
    np.testing.assert_allclose(resumed.parent_points[-1].positions, full.parent_points[-1].positions, atol=1e-10)


def test_non_finite_surrogate_is_reported():
    from finetuna_parsl.learner import SurrogateDiverged

    class Broken(ToySurrogate):
        def calculator(self, head):
            calc = super().calculator(head)
            original = calc.calculate

            def calculate(*args, **kwargs):
                original(*args, **kwargs)
                calc.results["forces"] = calc.results["forces"] * np.nan

            calc.calculate = calculate
            return calc

    system = SYSTEMS[0]
    state, _ = relax(system, paper(max_parent_calls=1))
    state = replace(state, outcome=OUTCOME_RUNNING, settings=paper())
    with pytest.raises(SurrogateDiverged, match=system.system_id):
        propose(state, Broken())


def test_a_non_finite_bfgs_step_is_reported_before_the_surrogate_sees_it(monkeypatch):
    """A Hessian with no curvature along a direction (relaxed-only on ood-017: the H2O driven 100 A off the slab)
    makes an infinite step; the learner must say so, not hand +-inf positions to the surrogate (fairchem then
    failed with 'zeros: Dimension size must be non-negative')."""
    from finetuna_parsl.learner import SurrogateDiverged, online

    system = SYSTEMS[0]
    state, _ = relax(system, paper(max_parent_calls=1))
    state = replace(state, outcome=OUTCOME_RUNNING, settings=paper())

    def flat_hessian(state, origin=-1):
        opt = HessianBFGS(system.n_atoms, fixed=system.fixed)
        free = np.flatnonzero(~np.repeat(system.fixed, 3))
        opt.H[free[0], free[0]] = 0.0  # no curvature along one free coordinate
        return opt

    monkeypatch.setattr(online, "rebuild_optimizer", flat_hessian)
    seen = []

    class Watching(ToySurrogate):
        def calculator(self, head):
            calc = super().calculator(head)
            original = calc.calculate

            def calculate(atoms=None, *args, **kwargs):
                seen.append(np.isfinite(atoms.positions).all())
                original(atoms, *args, **kwargs)

            calc.calculate = calculate
            return calc

    with pytest.raises(SurrogateDiverged, match=f"{system.system_id}.*not finite"):
        propose(state, Watching())
    assert all(seen)


# --- levers: exact at the newest parent point ---------------------------------------------------------
@pytest.mark.parametrize("fade", [None, 0.5])
def test_exact_residual_reproduces_the_newest_parent_point_and_stays_conservative(fade):
    from finetuna_parsl.learner.residual import NewestPointResidual

    system = SYSTEMS[2]
    point = system.to_atoms()
    point.calc = EMT()
    energy, forces = point.get_potential_energy(), point.get_forces(apply_constraint=False)
    surrogate = ToySurrogate().calculator(ToySurrogate().initial_head())  # EMT plus a smooth error
    calc = NewestPointResidual(surrogate, system.to_atoms(), energy, forces, fade=fade)
    atoms = system.to_atoms()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(apply_constraint=False), forces, atol=1e-9)
    # Elsewhere: forces are -dE/dx of the corrected energy (central differences), not the raw surrogate's.
    rng = np.random.default_rng(0)
    moved = system.positions + rng.normal(0, 0.05, system.positions.shape)
    atoms.positions = moved
    f = atoms.get_forces(apply_constraint=False)
    i, h = len(moved) - 1, 1e-4
    for axis in range(3):
        plus, minus = moved.copy(), moved.copy()
        plus[i, axis] += h
        minus[i, axis] -= h
        atoms.positions = plus
        e_plus = atoms.get_potential_energy()
        atoms.positions = minus
        e_minus = atoms.get_potential_energy()
        assert -(e_plus - e_minus) / (2 * h) == pytest.approx(f[i, axis], abs=1e-5)


def test_a_faded_exact_residual_reverts_to_the_surrogate_far_from_the_point():
    """The constant shift pushed an H2O 124 A off the slab under relaxed-only (a constant force that nothing on
    the surrogate balances far away); faded, the correction is gone a few fade lengths away, and the energy's
    constant offset is all that is left."""
    from finetuna_parsl.learner.residual import NewestPointResidual

    system = SYSTEMS[2]
    point = system.to_atoms()
    point.calc = EMT()
    energy, forces = point.get_potential_energy(), point.get_forces(apply_constraint=False)
    toy = ToySurrogate()
    raw = system.to_atoms()
    raw.calc = toy.calculator(toy.initial_head())
    d_energy = energy - raw.get_potential_energy()
    far = system.positions.copy()
    far[-1, 2] += 3.0  # the adsorbate's last atom 3 A up: 6 fade lengths
    raw.positions = far
    for fade, expect_raw in ((0.5, True), (None, False)):
        atoms = system.to_atoms(far)
        atoms.calc = NewestPointResidual(toy.calculator(toy.initial_head()), system.to_atoms(), energy, forces,
                                         fade=fade)
        same = np.allclose(atoms.get_forces(apply_constraint=False), raw.get_forces(apply_constraint=False),
                           atol=1e-6)
        assert same == expect_raw
    assert atoms.get_potential_energy() != pytest.approx(raw.get_potential_energy() + d_energy)  # unfaded: tilted
    atoms.calc = NewestPointResidual(toy.calculator(toy.initial_head()), system.to_atoms(), energy, forces, fade=0.5)
    assert atoms.get_potential_energy() == pytest.approx(raw.get_potential_energy() + d_energy, abs=1e-6)
    with pytest.raises(ValueError, match="fade"):
        NewestPointResidual(toy.calculator(toy.initial_head()), system.to_atoms(), energy, forces, fade=0.0)


# --- levers: a residual Gaussian process over the newest parent points ---------------------------------
def test_residual_gp_reproduces_every_parent_point_and_reverts_to_the_surrogate_far_away():
    from finetuna_parsl.learner.residual import ParentPointsResidual

    system = SYSTEMS[2]
    free = ~system.fixed
    rng = np.random.default_rng(1)
    points = []
    for _ in range(4):  # parent points near the start: EMT, which the toy surrogate misses by a smooth error
        atoms = system.to_atoms(system.positions + np.where(free[:, None], rng.normal(0, 0.05, (system.n_atoms, 3)), 0))
        atoms.calc = EMT()
        points.append((atoms.positions.copy(), atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)))
    surrogate = ToySurrogate().calculator(ToySurrogate().initial_head())
    calc = ParentPointsResidual(surrogate, system.to_atoms(), points, free)
    raw = system.to_atoms()
    raw.calc = surrogate
    for positions, _, forces in points:
        atoms = system.to_atoms(positions)
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_forces(apply_constraint=False)[free], forces[free], atol=1e-4)
        raw.positions = positions
        assert np.abs(raw.get_forces(apply_constraint=False)[free] - forces[free]).max() > 1e-2  # it had an error
    far = system.positions + np.where(free[:, None], 1.5, 0.0)  # tens of length scales from every point
    atoms, raw.positions = system.to_atoms(far), far
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(apply_constraint=False)[free],
                               raw.get_forces(apply_constraint=False)[free], atol=1e-8)


def test_residual_gp_passes_the_surrogate_uncertainty_through_and_relaxes_with_few_calls():
    from finetuna_parsl.learner.residual import ParentPointsResidual

    system = SYSTEMS[0]
    surrogate = ToySurrogate().calculator(ToySurrogate().initial_head())  # uncertainty 0.5 before fine-tuning
    atoms = system.to_atoms()
    atoms.calc = EMT()
    point = (atoms.positions.copy(), atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False))
    atoms.calc = ParentPointsResidual(surrogate, system.to_atoms(), [point], ~system.fixed)
    atoms.get_forces()
    assert atoms.calc.results["uncertainty"] == 0.5
    with_gp, _ = relax(system, paper(query="k-steps", k=10, residual_points=10))
    bfgs = system.to_atoms()
    bfgs.calc = EMT()
    opt = BFGS(bfgs, logfile=None)
    opt.run(fmax=0.03, steps=500)
    assert with_gp.outcome == OUTCOME_CONVERGED
    assert with_gp.parent_calls < 0.6 * (opt.nsteps + 1), (with_gp.parent_calls, opt.nsteps + 1)
