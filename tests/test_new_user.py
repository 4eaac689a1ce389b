"""What a new user following the README tripped on (issue 27): a store shared by two campaigns, a parent program
that is not there, pending work that inspect hid, a non-zero exit without a closing reason, and the small things."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from ase.build import add_adsorbate, fcc111
from ase.constraints import FixAtoms
from ase.io import write

from conftest import TESTS_DIR

CONFIG = """
systems: {{source: "{source}"}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: {site}
"""


def cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def config(path: Path, source: str, output: Path, site: str | Path = TESTS_DIR / "threads_site.py",
           count: int | None = None) -> Path:
    text = CONFIG.format(source=source, output=output, site=site)
    if count is not None:
        text = text.replace(f'source: "{source}"', f'source: "{source}", count: {count}')
    path.write_text(text)
    return path


def own_structures(path: Path, n: int = 2) -> Path:
    frames = []
    for i in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, "H", 1.5, "fcc" if i == 0 else "hcp")
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
        slab.pbc = True
        frames.append(slab)
    write(path, frames)
    return path


def test_a_store_is_one_campaigns_and_a_copied_config_with_other_systems_is_refused(tmp_path):
    store = tmp_path / "runs" / "demo.h5"
    demo = config(tmp_path / "demo.yaml", "demo", store, count=3)
    first = cli(tmp_path, "run", str(demo), "--systems", "1")  # a first try on one system ...
    assert first.returncode == 0, first.stderr[-3000:]
    more = cli(tmp_path, "run", str(demo))  # ... then the rest: the same campaign, the store grows
    assert more.returncode == 0, more.stderr[-3000:]
    with h5py.File(store, "r") as f:
        demo_ids = list(f["systems"])
        runs = f["runs"].shape[0]
    assert len(demo_ids) == 3

    # "Your own structures", followed literally: a copy of the demo config with systems.source changed
    mine = config(tmp_path / "mine.yaml", str(own_structures(tmp_path / "mine.extxyz")), store)
    proc = cli(tmp_path, "run", str(mine))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and ", site " in lines[0], proc.stderr  # the run's first line, then why it stops
    line = lines[1]
    assert line.startswith(f"error: store {store} belongs to another campaign: it holds 3 systems from "
                           "systems.source 'demo'"), line
    assert "mine-0000, mine-0001 are not among them" in line, line
    assert "campaign.output in" in line and "mine.yaml" in line and "--output" in line and "runs/mine.h5" in line
    with h5py.File(store, "r") as f:  # refused before anything was written, not even a run line
        assert list(f["systems"]) == demo_ids and f["runs"].shape[0] == runs

    # --output gives the own structures their own store
    proc = cli(tmp_path, "run", str(mine), "--output", str(tmp_path / "runs" / "mine.h5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "runs" / "mine.h5", "r") as f:
        assert list(f["systems"]) == ["mine-0000", "mine-0001"]

    # the same ids with other structures (the file edited in place) are another campaign too
    frames = own_structures(tmp_path / "mine.extxyz")
    from ase.io import read
    atoms = read(frames, ":")
    atoms[1].positions[-1] += [0.3, 0.0, 0.0]
    write(frames, atoms)
    proc = cli(tmp_path, "run", str(mine), "--output", str(tmp_path / "runs" / "mine.h5"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "this run's mine-0001 are other structures under the same ids" in proc.stderr, proc.stderr
