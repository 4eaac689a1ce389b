"""OC20 anomaly flags (fairchem-data-oc's DetectTrajAnomaly) on constructed structures, the learner's cheap form of
them, and the OC20 tags every packaged source writes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.optimize import BFGS
from conftest import paper

from finetuna_parsl.learner.anomaly import (
    DESORBED,
    DISSOCIATED,
    INTERCALATED,
    SURFACE_CHANGED,
    AnomalyGuard,
    detect,
    tags_problem,
)
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.systems import build_demo_system, demo_systems, load_systems, ood_systems


def co_on_pt111() -> SystemSpec:
    """CO on a 3x3x3 Pt(111) slab, OC20-tagged (build_demo_system)."""
    atoms = build_demo_system("fcc111", "Pt", "CO", np.random.default_rng(3))
    return SystemSpec.from_atoms("co-pt111", atoms)


def moved(system: SystemSpec, index, shift) -> np.ndarray:
    positions = system.positions.copy()
    positions[index] += shift
    return positions


def test_packaged_sources_write_oc20_tags():
    for system in [*demo_systems(8), *ood_systems(8)]:
        assert tags_problem(system) == ""
        tags = system.tags
        assert (tags[system.fixed] == 0).all() and (tags[~system.fixed] > 0).all()
        adsorbate = np.flatnonzero(tags == 2)
        assert set(system.numbers[adsorbate]) <= {1, 6, 7, 8}  # C, H, N, O only
        assert not set(system.numbers[tags != 2]) & {1, 6, 7, 8}


def test_oc20_ood30_tags_are_derived_only_where_unambiguous():
    systems, _ = load_systems("oc20-ood30")
    unknown = {s.system_id: tags_problem(s) for s in systems if tags_problem(s)}
    assert set(unknown) == {"1070869", "1979576"}  # N and C in the slab itself: adsorbate atoms not certain
    tagged = [s for s in systems if s.system_id not in unknown]
    assert len(tagged) == 28
    co = next(s for s in tagged if s.system_id == "1176297")  # CHO on Al8Y24
    assert "".join(np.array(co.to_atoms().get_chemical_symbols())[co.tags == 2]) == "CHO"
    assert (co.tags[co.fixed] == 0).all()


def test_a_clean_relaxation_is_not_flagged():
    system = co_on_pt111()
    atoms = system.to_atoms()
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    assert detect(system, atoms.positions) == ((), "")


def test_desorbed_adsorbate_is_flagged():
    system = co_on_pt111()
    found, why = detect(system, moved(system, system.tags == 2, [0.0, 0.0, 5.0]))
    assert found == (DESORBED,) and why == ""


def test_dissociated_adsorbate_is_flagged():
    system = co_on_pt111()
    oxygen = np.flatnonzero((system.tags == 2) & (system.numbers == 8))
    found, _ = detect(system, moved(system, oxygen, [2.0, 0.0, 0.0]))  # C-O 2.3 A
    assert DISSOCIATED in found and DESORBED not in found


def test_surface_atom_moved_is_flagged():
    system = co_on_pt111()
    surface = np.flatnonzero(system.tags == 1)
    adsorbate_xy = system.positions[system.tags == 2, :2].mean(axis=0)
    farthest = surface[np.argmax(np.linalg.norm(system.positions[surface, :2] - adsorbate_xy, axis=1))]
    found, _ = detect(system, moved(system, farthest, [0.0, 0.0, 2.6]))
    assert found == (SURFACE_CHANGED,)


def test_adsorbate_below_the_surface_is_flagged():
    system = co_on_pt111()
    top = system.positions[system.tags == 1, 2].mean()
    adsorbate = system.tags == 2
    drop = top - 0.8 - system.positions[adsorbate, 2].min()  # the C 0.8 A below the surface layer
    found, _ = detect(system, moved(system, adsorbate, [0.0, 0.0, drop]))
    assert INTERCALATED in found and DESORBED not in found


def test_systems_without_oc20_tags_are_unknown():
    atoms = build_demo_system("fcc111", "Pt", "CO", np.random.default_rng(3))
    atoms.set_tags(0)
    found, why = detect(SystemSpec.from_atoms("untagged", atoms), atoms.positions)
    assert found is None and "no adsorbate tags" in why
    atoms.set_tags([3] * (len(atoms) - 2) + [0, 0])  # ase.build's layer numbers
    found, why = detect(SystemSpec.from_atoms("layers", atoms), atoms.positions)
    assert found is None and "not OC20's" in why
    assert AnomalyGuard.for_system(SystemSpec.from_atoms("layers", atoms)) is None


def test_guard_agrees_with_detect_traj_anomaly():
    """The learner's per-step check gives DetectTrajAnomaly's answers, on demo, ood and OC20 (3D-periodic) slabs
    shaken until every kind of anomaly shows up."""
    rng = np.random.default_rng(1)
    oc20, _ = load_systems("oc20-ood30", count=6)
    systems = [*demo_systems(6), *ood_systems(6), *(s for s in oc20 if not tags_problem(s))]
    seen = set()
    for system in systems:
        guard = AnomalyGuard(system)
        free = ~system.fixed
        for scale in (0.05, 0.3, 0.6, 1.0):
            positions = system.positions.copy()
            positions[free] += rng.normal(0.0, scale, size=(free.sum(), 3))
            found, _ = detect(system, positions)
            assert guard.anomalies(positions) == set(found), (system.system_id, scale)
            seen.update(found)
        lifted = moved(system, system.tags == 2, [0.0, 0.0, 8.0])
        assert guard.anomalies(lifted) == set(detect(system, lifted)[0])
        seen.update(detect(system, lifted)[0])
    assert seen == {DESORBED, DISSOCIATED, SURFACE_CHANGED, INTERCALATED}


@pytest.mark.parametrize("kind", ["no tags", "fixed adsorbate"])
def test_tags_problem_names_what_is_wrong(kind):
    system = co_on_pt111()
    if kind == "no tags":
        system = replace(system, tags=np.zeros_like(system.tags))
        assert "no adsorbate" in tags_problem(system)
    else:
        fixed = system.fixed.copy()
        fixed[system.tags == 2] = True
        assert "fixed atoms are tagged adsorbate" in tags_problem(replace(system, fixed=fixed))


# --- the learner's guard ---------------------------------------------------------------------------------------
class LiftingSurrogate:
    """A surrogate (the learner's SurrogateModel protocol) that pulls the adsorbate straight up off the slab with
    a constant force (eV/A) and holds every other atom where it is: a desorption made by the surrogate alone."""

    def __init__(self, system: SystemSpec, force: float = 1.0) -> None:
        self.up = np.zeros((system.n_atoms, 3))
        self.up[system.tags == 2, 2] = force
        self.start = system.positions.copy()

    def initial_head(self) -> bytes:
        return b""

    def fine_tune(self, head, points):
        return head, {}

    def calculator(self, head):
        from ase.calculators.calculator import Calculator, all_changes

        up, start = self.up, self.start

        class Lift(Calculator):
            implemented_properties = ["energy", "free_energy", "forces"]

            def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
                super().calculate(atoms, properties, system_changes)
                held = -5.0 * (self.atoms.positions - start)  # springs hold the slab
                held[up[:, 2] > 0] = 0.0
                forces = up + held
                slab = up[:, 2] == 0
                energy = float(-(up * self.atoms.positions).sum()
                               + 2.5 * ((self.atoms.positions - start)[slab] ** 2).sum())
                self.results = {"energy": energy, "free_energy": energy, "forces": forces}

        return Lift()


def first_segment(system: SystemSpec, **settings):
    """The learn step after the initial parent call (EMT at the start), on the lifting surrogate."""
    from finetuna_parsl.learner import LearnerState, propose, record_parent
    from finetuna_parsl.parents import make_parent

    parent = make_parent("emt")
    parent.start(system)
    state = LearnerState(system=system, settings=paper(query="relaxed-only", max_surrogate_steps=200,
                                                       stall_steps=50, backoff=False, **settings))
    surrogate = LiftingSurrogate(system)
    first = propose(state, surrogate)
    state = record_parent(state, first, parent.calculate(first.positions))
    return state, propose(state, surrogate)


def test_the_guard_ends_a_segment_before_a_surrogate_made_desorption():
    system = co_on_pt111()
    guard = AnomalyGuard(system)
    state, proposal = first_segment(system)
    assert proposal.reason == "anomaly"
    assert len(proposal.segment) > 1  # the surrogate walked the adsorbate up for a while ...
    assert all(not guard.anomalies(step.positions) for step in proposal.segment)  # ... never off the slab
    np.testing.assert_array_equal(proposal.positions, proposal.segment[-1].positions)  # the parent is asked there
    # a maxstep (0.2 A) higher, where the surrogate's next step was going, it is desorbed
    assert detect(system, proposal.positions + np.where(system.tags[:, None] == 2, [0, 0, 0.2], 0))[0] == (DESORBED,)

    _, unguarded = first_segment(system, anomaly_guard=False)  # without the guard the surrogate takes it away
    assert unguarded.reason != "anomaly" and DESORBED in guard.anomalies(unguarded.positions)


def test_the_adsorbate_leash_keeps_the_adsorbate_near_the_newest_parent_point():
    system = co_on_pt111()
    state, proposal = first_segment(system, anomaly_guard=False, adsorbate_leash=0.5)
    assert proposal.reason == "leash"
    newest = state.parent_points[-1].positions
    moved = np.linalg.norm(proposal.positions - newest, axis=1)
    assert moved[system.tags == 2].max() <= 0.5 and len(proposal.segment) > 1


def test_adsorbate_leash_must_be_positive():
    with pytest.raises(ValueError, match="adsorbate_leash must be > 0"):
        paper(adsorbate_leash=0.0)


def test_where_the_guard_does_not_fire_the_relaxation_is_unchanged():
    """demo-000 (H on Pt(111), toy surrogate, k-steps): no step makes an anomaly, so the guard costs no parent call
    and changes no number (on the 20 demo systems, 36 of 40 k-steps/relaxed-only runs are bit-identical with and
    without it; the other 4 are those where it fired)."""
    from test_learner import relax

    system = demo_systems(1)[0]
    guarded, proposals = relax(system, paper(query="k-steps"))
    unguarded, _ = relax(system, paper(query="k-steps", anomaly_guard=False))
    assert "anomaly" not in {p.reason for p in proposals}
    assert len(guarded.parent_points) == len(unguarded.parent_points)
    for a, b in zip(guarded.parent_points, unguarded.parent_points):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy


def test_flags_are_unknown_with_the_reason_when_the_check_cannot_run(monkeypatch):
    from finetuna_parsl.learner import anomaly

    system = co_on_pt111()

    def absent():
        raise ImportError("No module named 'fairchem.data'")

    monkeypatch.setattr(anomaly, "_detector", absent)
    assert detect(system, system.positions) == (None, "fairchem-data-oc is not installed (No module named "
                                                       "'fairchem.data')")

    class Broken:
        def __init__(self, *args):
            raise ValueError("cannot build\nneighbour list")

    monkeypatch.setattr(anomaly, "_detector", lambda: Broken)
    assert detect(system, system.positions) == (None, "the anomaly check failed: ValueError: cannot build "
                                                       "neighbour list")
