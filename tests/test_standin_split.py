"""The stand-in world's pretraining set never shows an adsorbate or a bulk composition of the 30 test systems
(issue 25): the split function, the adsorbate finder on the packaged systems, and the generated file itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.build import fcc111, molecule
from ase.constraints import FixAtoms
from ase.formula import Formula

from finetuna_parsl.surrogate.standin import Holdout, adsorbate_indices, hill, holdout_of, split_of
from finetuna_parsl.systems import load_systems

STRUCTURES = Path(__file__).resolve().parent.parent / "benchmarks" / "prior-standin" / "structures.db"


def _slab_with(adsorbate: str, metal: str = "Cu", tagged: bool = False):
    slab = fcc111(metal, size=(2, 2, 3), vacuum=8.0)
    slab.set_constraint(FixAtoms(indices=[i for i, z in enumerate(slab.positions[:, 2]) if z < slab.positions[:, 2].max() - 1]))
    mol = molecule(adsorbate)
    mol.translate(slab.positions[-1] + [0, 0, 2.0] - mol.positions[0])
    system = slab + mol
    if tagged:
        system.set_tags([0] * len(slab) + [2] * len(mol))
    return system, list(range(len(slab), len(system)))


def test_split_of_leaves_out_what_the_holdout_holds():
    holdout = Holdout(frozenset({"CHO", "O"}), frozenset({frozenset({"Ag", "Sr"}), frozenset({"Rb"})}))
    assert split_of(5, "CHO", ["Cu"], holdout) is None  # held-out adsorbate
    assert split_of(5, "CO", ["Sr", "Ag"], holdout) is None  # held-out composition, any order
    assert split_of(5, "CO", ["Rb"], holdout) is None
    assert split_of(5, "CO", ["Rb", "Cu"], holdout) == "train"  # a superset is another composition
    assert split_of(26, "CO", ["Cu"], holdout) == "valid_in"  # one in 13
    assert split_of(24, "CO", ["Cu"], holdout) == "train"


def test_adsorbate_indices_finds_the_molecule_on_an_untagged_slab():
    system, expected = _slab_with("CH3OH")
    assert adsorbate_indices(system, {"CH4O", "CO"}) == expected
    # tags, where set, are OC20's own answer
    tagged, expected = _slab_with("H2O", tagged=True)
    assert adsorbate_indices(tagged, set()) == expected
    with pytest.raises(ValueError, match="known adsorbate"):
        adsorbate_indices(system, {"N2"})


def test_adsorbates_of_the_30_test_systems():
    pkls = pytest.importorskip("fairchem.data.oc.databases.pkls")
    import pickle

    with open(pkls.ADSORBATE_PKL_PATH, "rb") as fp:
        known = {hill(v[0].get_chemical_symbols()) for v in pickle.load(fp).values()}
    systems, _ = load_systems("oc20-ood30")
    holdout, per_system = holdout_of({s.system_id: s.to_atoms() for s in systems}, known)
    assert len(per_system) == 30
    # a nitride's N next to *OCH3 and a carbide's C under *CN are slab atoms, not adsorbate
    assert per_system["1070869"] == ("CH3O", frozenset({"Ca", "Ge", "N"}))
    assert per_system["1979576"] == ("CN", frozenset({"Mo", "C"}))
    assert per_system["1447590"] == ("O", frozenset({"Rb"}))
    assert per_system["440438"] == ("C2H8N2", frozenset({"In", "Zr"}))
    for sid, (formula, bulk) in per_system.items():
        # the adsorbate's atoms come out of the system's own: what is left is the slab, of the bulk's elements
        counts = Counter(next(s for s in systems if s.system_id == sid).to_atoms().get_chemical_symbols())
        counts.subtract(Formula(formula).count())
        assert min(counts.values()) >= 0, sid
        assert {e for e, n in counts.items() if n > 0} == bulk, sid
    assert {"CHO", "CH", "O", "N", "C2H8N2"} <= holdout.adsorbates


@pytest.fixture(scope="module")
def structures():
    from ase.db import connect

    if not STRUCTURES.is_file():
        pytest.fail(f"{STRUCTURES} missing: made by scripts/standin_structures.py")
    rows = [(row.key_value_pairs, row.toatoms()) for row in connect(str(STRUCTURES)).select("split")]
    return [(kv, atoms) for kv, atoms in rows if kv["split"] != "none"]


def _parts(atoms):
    symbols = np.array(atoms.get_chemical_symbols())
    tags = atoms.get_tags()
    return hill(symbols[tags == 2]), frozenset(symbols[tags < 2])


def test_generated_set_is_disjoint_from_the_test_systems(structures):
    tests = [(kv, atoms) for kv, atoms in structures if kv["split"] == "valid_out"]
    pretraining = [(kv, atoms) for kv, atoms in structures if kv["split"] in ("train", "valid_in")]
    assert sorted(kv["oc20_sid"] for kv, _ in tests) == sorted(int(s.system_id) for s in load_systems("oc20-ood30")[0])
    held_ads = {_parts(atoms)[0] for _, atoms in tests}
    held_bulks = {_parts(atoms)[1] for _, atoms in tests}
    assert len(held_ads) >= 10 and len(held_bulks) >= 25
    for kv, atoms in pretraining:
        formula, bulk = _parts(atoms)  # from the atoms and their OC20 tags, not from the row's labels
        assert formula not in held_ads, kv["name"]
        assert bulk not in held_bulks, kv["name"]
        assert (formula, "-".join(sorted(bulk))) == (kv["ads_formula"], kv["bulk_elements"])
    assert len(pretraining) >= 600
    assert sum(kv["split"] == "valid_in" for kv, _ in pretraining) >= 40


def test_generated_systems_are_oc20_like(structures):
    names = [kv["name"] for kv, _ in structures]
    assert len(names) == len(set(names))
    for kv, atoms in structures:
        tags = atoms.get_tags()
        fixed = np.zeros(len(atoms), dtype=bool)
        for c in atoms.constraints:
            fixed[c.get_indices()] = True
        assert set(np.unique(tags)) == {0, 1, 2}, kv["name"]
        assert (fixed == (tags == 0)).all(), kv["name"]  # FixAtoms on subsurface atoms, as OC20
        if kv["split"] != "valid_out":
            assert len(atoms) <= 60, kv["name"]
            assert atoms.cell.lengths()[2] - np.ptp(atoms.positions[:, 2]) >= 15.0, kv["name"]  # vacuum
