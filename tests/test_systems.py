"""System sources: the seeded demo set, ASE databases (the paper's OC20 set), folders of files."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase.build import fcc111
from ase.constraints import FixAtoms, FixBondLength
from ase.io import write

from conftest import SHARED_DATA
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


@pytest.mark.skipif(not (SHARED_DATA / "oc20_ood30.db").exists(), reason="../shared/data/oc20_ood30.db not present")
def test_oc20_database_gives_the_30_initial_structures():
    systems, skipped = load_systems(str(SHARED_DATA / "oc20_ood30.db"))
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
