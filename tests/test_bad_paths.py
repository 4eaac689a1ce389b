"""Unwritable folders and bad values are one line (exit 2) before any work, never a traceback, nothing deleted.

Real read-only folders (a read-only bind mount as root, tests/fault_fs.py), the real CLI in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import TESTS_DIR
from fault_fs import read_only_folder
from finetuna_parsl.store import CampaignStore
from finetuna_parsl.systems import demo_systems

CONFIG = """
systems: {{source: demo, count: 1{systems}}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"{surrogate}}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: "{site}"
"""
SITE = TESTS_DIR / "threads_site.py"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def config_file(tmp_path: Path, output: Path, systems: str = "", surrogate: str = "") -> Path:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=output, systems=systems, surrogate=surrogate, site=SITE))
    return cfg


@pytest.mark.parametrize("where", ["in", "below"])
def test_a_store_in_a_read_only_folder_is_one_line(tmp_path, where):
    with read_only_folder(tmp_path / "ro") as folder:
        output = folder / "s.h5" if where == "in" else folder / "sub" / "s.h5"
        line = one_line(cli(tmp_path, "run", str(config_file(tmp_path, output))))
    assert str(folder) in line and "ead-only" in line, line


def test_restart_of_a_store_in_a_read_only_folder_is_one_line_and_deletes_nothing(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    store = folder / "s.h5"
    with CampaignStore(store) as s:
        s.add_system(demo_systems(1)[0])
    (folder / "s-parent").mkdir()
    with read_only_folder(folder):
        line = one_line(cli(tmp_path, "run", str(config_file(tmp_path, store)), "--restart"))
    assert str(store) in line and "ead-only" in line, line
    with h5py.File(store, "r") as f:
        assert list(f["systems"]) == [demo_systems(1)[0].system_id]
    assert (folder / "s-parent").is_dir()


@pytest.mark.parametrize("key", ["systems", "surrogate"])
def test_a_negative_seed_is_one_line_naming_the_key(tmp_path, key):
    extra = {"systems": ", seed: -1"} if key == "systems" else {"surrogate": ", seed: -1"}
    line = one_line(cli(tmp_path, "run", str(config_file(tmp_path, tmp_path / "s.h5", **extra))))
    assert f"{key}.seed" in line and ">= 0" in line, line
    assert not (tmp_path / "s.h5").exists()
