"""Systems a parent cannot do are found when they are loaded, each reported by id, and the rest run.

Unit checks per parent kind, then the real CLI (real Parsl, fake VASP, real HDF5) on a mixed systems file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import h5py
import numpy as np
from ase import Atoms
from ase.build import fcc111, molecule
from ase.io import write

from conftest import TESTS_DIR
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.parents import check_systems

FAKE = str(TESTS_DIR / "fake_vasp.py")


def slab(metal: str = "Cu") -> Atoms:
    atoms = fcc111(metal, size=(2, 2, 2), vacuum=5.0)
    atoms.pbc = True
    atoms.info.pop("adsorbate_info", None)  # extxyz cannot write it
    return atoms


def gas() -> Atoms:
    return molecule("CO")  # no cell, pbc False: a gas-phase molecule


def spec(system_id: str, atoms: Atoms) -> SystemSpec:
    return SystemSpec.from_atoms(system_id, atoms)


def potcars(root, *names: str) -> str:
    for name in names:
        (root / "potpaw_PBE" / name).mkdir(parents=True)
        (root / "potpaw_PBE" / name / "POTCAR").write_text(f"   TITEL  = PAW_PBE {name} 08Apr2002\n")
    return str(root)


def test_emt_refuses_elements_it_has_no_potential_for():
    fe = slab("Cu")
    fe[0].symbol = "Fe"
    usable, unusable = check_systems("emt", {}, [spec("ok", slab()), spec("fe", fe), spec("mol", gas())])
    assert [s.system_id for s in usable] == ["ok", "mol"]  # EMT does molecules without a cell
    ((sid, reason),) = unusable
    assert sid == "fe" and "EMT has no potential for Fe" in reason and "\n" not in reason


def test_vasp_refuses_a_cell_it_cannot_use_and_species_without_a_potcar(tmp_path, monkeypatch):
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    left = slab()
    left.set_cell(left.cell[[1, 0, 2]], scale_atoms=False)  # two vectors exchanged: negative triple product
    open_z = slab()
    open_z.pbc = [True, True, False]  # VASP treats the cell as periodic whatever pbc says: usable
    systems = [spec("ok", open_z), spec("mol", gas()), spec("left", left), spec("pt", slab("Pt"))]
    usable, unusable = check_systems("vasp", {"potcar_dir": potcars(tmp_path, "Cu")}, systems)
    assert [s.system_id for s in usable] == ["ok"]
    reasons = dict(unusable)
    assert list(reasons) == ["mol", "left", "pt"]
    assert "no periodic cell" in reasons["mol"] and "pbc = [0, 0, 0]" in reasons["mol"]
    assert "left-handed" in reasons["left"]
    assert "no POTCAR for Pt" in reasons["pt"]
    # without potcar_dir or VASP_PP_PATH the POTCARs cannot be checked here, and are not
    usable, unusable = check_systems("vasp", {}, [spec("pt", slab("Pt"))])
    assert len(usable) == 1 and not unusable


def test_gpaw_needs_a_cell_in_every_mode():
    open_z = slab()
    open_z.pbc = [True, True, False]  # a slab as ase.build makes it: fine, the cell is the box
    usable, unusable = check_systems("gpaw", {}, [spec("ok", open_z), spec("mol", gas())])
    assert [s.system_id for s in usable] == ["ok"] and "plane waves" in dict(unusable)["mol"]
    boxed = gas()
    boxed.center(vacuum=4.0)
    usable, unusable = check_systems("gpaw", {"mode": "lcao"}, [spec("boxed", boxed), spec("mol", gas())])
    assert [s.system_id for s in usable] == ["boxed"] and "cell" in dict(unusable)["mol"]


CONFIG = """
systems: {{source: "{source}"}}
parent:
  kind: vasp
  timeout_s: 60
  options:
    command: ["{python}", "{fake}"]
    potcar_dir: "{pp}"
    step_timeout_s: 60
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
"""


def test_the_run_reports_every_unusable_system_before_any_worker_starts_and_runs_the_rest(tmp_path):
    good = slab()
    good.positions[-1] += np.array([0.05, -0.03, 0.04])
    source = tmp_path / "mixed.extxyz"
    write(source, [good, gas(), slab("Pt")])
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(CONFIG.format(source=source, python=sys.executable, fake=FAKE, pp=potcars(tmp_path / "pp", "Cu"),
                                 output=tmp_path / "mixed.h5"))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=170)
    took = time.monotonic() - t0
    err = proc.stderr.splitlines()
    unusable = [line for line in err if line.startswith("unusable system")]
    assert [line.split()[2].rstrip(":") for line in unusable] == ["mixed-0001", "mixed-0002"], proc.stderr[-3000:]
    assert "no periodic cell" in unusable[0] and "no POTCAR for Pt" in unusable[1]
    started = next(i for i, line in enumerate(err) if "system, site" in line or "systems, site" in line)
    assert all(err.index(line) < started for line in unusable)  # before the run (and its workers) started
    assert proc.returncode == 1  # some systems could not be run
    with h5py.File(tmp_path / "mixed.h5", "r") as f:
        assert list(f["systems"]) == ["mixed-0000"]
        assert f["systems/mixed-0000"].attrs["status"] == "done"
    assert took < 120
