"""System sources: the seeded demo set, ASE databases (the paper's OC20 set), folders of files."""

from __future__ import annotations

from collections import Counter

import numpy as np
from ase.build import fcc111
from ase.constraints import FixAtoms, FixBondLength
from ase.io import write


from finetuna_parsl.systems import DEMO_ADSORBATES, demo_systems, load_systems


def test_demo_set_is_reproducible_and_varied():
    a, b = demo_systems(20, seed=0), demo_systems(20, seed=0)
    assert len(a) == 20 and len({s.system_id for s in a}) == 20
    for x, y in zip(a, b):
        assert x.system_id == y.system_id
        np.testing.assert_array_equal(x.positions, y.positions)
    assert not np.array_equal(demo_systems(1, seed=1)[0].positions, a[0].positions)
    facets = Counter(s.system_id.rsplit("-", 1)[1] for s in a)
    assert set(facets) == {"fcc111", "fcc100", "fcc211"}
    assert {s.system_id.split("-")[2] for s in a} == set(DEMO_ADSORBATES)
    assert len({s.system_id.split("-")[3] for s in a}) >= 5  # metals
    for s in a:
        assert s.fixed.any() and not s.fixed.all() and s.pbc[:2].all()


def test_demo_adsorbates_bind_through_the_heavy_atom():
    for s in demo_systems(20):
        name = s.system_id.split("-")[2]
        if len(name) == 2:  # molecule() order: CO is (O, C); OH, CH, NH list the binding atom first
            z = s.positions[-2:, 2]
            bind, other = (z[1], z[0]) if name == "CO" else (z[0], z[1])
            assert bind < other, s.system_id


def test_oc20_database_gives_the_30_initial_structures():
    systems, skipped = load_systems("oc20-ood30")
    assert skipped == []
    assert len(systems) == 30 and len({s.system_id for s in systems}) == 30
    for s in systems:
        assert s.fixed.any() and 17 <= s.n_atoms <= 60


def test_folder_source_reports_bad_files_by_name(tmp_path):
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    slab.set_constraint(FixAtoms(indices=[0, 1, 2, 3]))
    write(tmp_path / "good.traj", slab)
    (tmp_path / "broken.cif").write_text("this is not a cif")
    odd = slab.copy()
    odd.set_constraint(FixBondLength(0, 1))
    write(tmp_path / "odd.traj", odd)
    systems, skipped = load_systems(str(tmp_path))
    assert [s.system_id for s in systems] == ["good"]
    assert systems[0].fixed.sum() == 4
    reasons = {s.system_id: s.reason for s in skipped}
    assert set(reasons) == {"broken", "odd"}
    assert "unreadable file broken.cif" in reasons["broken"]
    assert "only FixAtoms" in reasons["odd"]


def _adsorbate_formula(atoms) -> str:
    from ase import Atoms

    return Atoms([a.symbol for a in atoms if a.symbol in "CHNO"]).get_chemical_formula()


def test_ood_source_draws_only_from_the_held_out_space_and_pretraining_never_sees_it():
    from finetuna_parsl.surrogate.pretrain import in_domain_system
    from finetuna_parsl.systems import (
        ALLOY_METALS, FACETS, HELD_OUT_ALLOY_METALS, OOD_ADSORBATES, TRAIN_ADSORBATES, _adsorbate, ood_systems,
    )

    held_out_formulas = {_adsorbate_formula(_adsorbate(a)[0]) for a in OOD_ADSORBATES}
    assert not held_out_formulas & {_adsorbate_formula(_adsorbate(a)[0]) for a in TRAIN_ADSORBATES}
    ood = ood_systems(24, seed=0)
    assert {s.system_id.rsplit("-", 1)[1] for s in ood} == set(FACETS)
    for spec in ood:
        atoms = spec.to_atoms()
        metals = {a.symbol for a in atoms if a.symbol not in "CHNO"}
        assert len(metals) == 2 and metals & set(HELD_OUT_ALLOY_METALS), spec.system_id
        assert _adsorbate_formula(atoms) in held_out_formulas, spec.system_id
    for i in range(400):  # the in-domain draw (building only; labelling is pretraining's job)
        system_id, atoms = in_domain_system(i, seed=0)
        metals = {a.symbol for a in atoms if a.symbol not in "CHNO"}
        assert len(metals) == 1 or metals <= set(ALLOY_METALS), system_id
        assert _adsorbate_formula(atoms) not in held_out_formulas, system_id


def test_paper_counts_ship_with_the_oc20_systems():
    from finetuna_parsl.systems import paper_counts

    counts = paper_counts()
    systems, _ = load_systems("oc20-ood30")
    assert set(counts) == {s.system_id for s in systems}
    assert all(c["vasp_bfgs_calls"] > 0 for c in counts.values())
