"""Per-species INCAR settings follow each POSCAR's own species order; bare lists are refused with one line.

A real VASP session against tests/fake_vasp.py (which, like VASP, wants one LDAU value per species and one
MAGMOM value per atom), and the real CLI for the refusal.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from ase.build import fcc111

from conftest import TESTS_DIR
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.parents import ParentError, parent_class
from finetuna_parsl.parents.vasp import VaspInteractiveSession

FAKE = str(TESTS_DIR / "fake_vasp.py")
INCAR = {"ISPIN": 2, "LDAU": True, "LDAUL": {"Ni": 2}, "LDAUU": {"Ni": 6.0}, "LDAUJ": {"Ni": 1.0},
         "MAGMOM": {"Ni": 2.0, "O": 0.5}}


def system(system_id: str, order: list[str]) -> SystemSpec:
    """A 2x2x3 slab whose layers are the metals in `order` (bottom up), with an O adatom: species order varies."""
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    layer = {3: order[0], 2: order[1], 1: order[2]}
    slab.set_chemical_symbols([layer[t] for t in slab.get_tags()])
    slab.append("O")
    slab.positions[-1] = slab.positions[-2] + [0.0, 0.0, 1.6]
    slab.pbc = True
    return SystemSpec.from_atoms(system_id, slab)


def written(workdir) -> dict[str, str]:
    incar = dict(line.split(" = ", 1) for line in (workdir / "INCAR").read_text().splitlines() if " = " in line)
    species = (workdir / "POSCAR").read_text().splitlines()[5].split()
    counts = [int(n) for n in (workdir / "POSCAR").read_text().splitlines()[6].split()]
    return incar | {"species": species, "counts": counts}


@pytest.mark.parametrize("order", [["Pt", "Ag", "Ni"], ["Ni", "Cu", "Pt"], ["Ag", "Ni", "Ni"]])
def test_per_species_settings_land_on_their_element_in_every_poscar(tmp_path, order):
    sid = "-".join(order)
    session = VaspInteractiveSession(workdir=tmp_path / sid, command=[sys.executable, FAKE], incar=INCAR,
                                     step_timeout_s=60)
    session.start(system(sid, order))
    try:
        session.calculate(system(sid, order).positions)  # the fake checks LDAU* and MAGMOM lengths, as VASP does
    finally:
        session.close()
    assert session.returncode == 0
    w = written(tmp_path / sid)
    species = w["species"]
    assert w["LDAUU"].split() == [("6.0" if s == "Ni" else "0.0") for s in species]
    assert w["LDAUL"].split() == [("2" if s == "Ni" else "-1") for s in species]
    assert w["LDAUJ"].split() == [("1.0" if s == "Ni" else "0.0") for s in species]
    expected = []
    for s, n in zip(species, w["counts"]):
        expected.append(f"{n}*{ {'Ni': 2.0, 'O': 0.5}.get(s, 0.0)!r}")
    assert w["MAGMOM"].split() == expected  # per atom, in POSCAR order; species not named start at 0


@pytest.mark.parametrize("incar, named", [
    ({"LDAUU": [6.0, 0.0, 0.0]}, "LDAUU"),
    ({"MAGMOM": "4*0 2*5"}, "MAGMOM"),
    ({"LDAUL": {"nickel": 2}}, "LDAUL"),
])
def test_a_bare_list_for_a_per_species_tag_is_refused_with_how_to_write_it(incar, named):
    reason = parent_class("vasp").check_options({"incar": incar})
    assert reason is not None and "\n" not in reason and named in reason
    assert "{Ni: " in reason  # says how to write it: a mapping by element
    with pytest.raises(ParentError, match=named):
        VaspInteractiveSession(command="vasp_std", incar=incar)


def test_gpaw_per_element_settings_must_be_mappings_too():
    assert "mapping by element" in parent_class("gpaw").check_options({"parameters": {"setups": ["paw", "hgh"]}})
    assert parent_class("gpaw").check_options({"parameters": {"setups": {"Ni": ":d,6.0"}}}) is None


CONFIG = """
systems: {{source: demo, count: 2}}
parent:
  kind: vasp
  options:
    command: ["{python}", "{fake}"]
    incar: {{LDAU: true, LDAUU: [6, 0, 0, 0]}}
surrogate: {{factory: "toy_surrogate:make"}}
campaign: {{output: "{output}"}}
"""


def test_the_run_refuses_a_bare_per_species_list_in_one_line_before_starting(tmp_path):
    cfg = tmp_path / "u.yaml"
    cfg.write_text(CONFIG.format(python=sys.executable, fake=FAKE, output=tmp_path / "u.h5"))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "LDAUU" in proc.stderr and "{Ni: " in proc.stderr
    assert not (tmp_path / "u.h5").exists()
