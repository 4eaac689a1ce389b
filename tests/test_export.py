"""Export writes a valid file for systems of every status and never leaves a partial file behind.

A real store written through CampaignStore, real ASE readers, the real CLI in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from conftest import TESTS_DIR
from fault_fs import read_only_folder
from finetuna_parsl.records import SOURCE_PARENT, Evaluation
from finetuna_parsl.store import CampaignStore, StoreError, export
from finetuna_parsl.systems import demo_systems


@pytest.fixture
def store(tmp_path):
    """Three systems: one done (converged), one still running, one failed: outcome "" on the last two."""
    path = tmp_path / "mixed.h5"
    systems = demo_systems(3)
    with CampaignStore(path) as s:
        for system, (status, outcome) in zip(systems, [("done", "converged"), ("running", None), ("failed", None)]):
            s.add_system(system)
            point = Evaluation(system.positions, -1.5, np.zeros((system.n_atoms, 3)), SOURCE_PARENT, reason="initial")
            s.append_steps(system.system_id, [point])
            s.set_status(system.system_id, status, error="boom" if status == "failed" else "", outcome=outcome)
    return path


def test_extxyz_of_running_and_failed_systems_reads_back_with_every_key(store, tmp_path):
    """`outcome= source=out.h5` used to read back as outcome='source=out.h5', source lost."""
    out = tmp_path / "frames.extxyz"
    assert export(store, out, "extxyz") == 3
    frames = read(out, index=":")
    assert [f.info["status"] for f in frames] == ["done", "running", "failed"]
    for frame in frames:
        assert frame.info["source"] == "mixed.h5" and frame.info["method"] == "online"
        assert frame.info["reason"] == "initial"
        assert frame.info.get("outcome", "") in ("converged", "")  # an empty outcome is left out, never misread
    assert frames[0].info["outcome"] == "converged"


@pytest.mark.parametrize("fmt", ["extxyz", "traj", "db", "aselmdb"])
def test_a_failed_export_leaves_no_file_and_the_next_one_works(store, tmp_path, fmt, monkeypatch):
    out = tmp_path / f"frames.{fmt}"
    import finetuna_parsl.store.frames as store_module  # where export finds iter_frames

    real = store_module.iter_frames

    def fails_midway(*args, **kwargs):
        frames = real(*args, **kwargs)
        yield next(frames)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "iter_frames", fails_midway)
    with pytest.raises(StoreError, match=f"cannot write {out}: No space left on device"):
        export(store, out, fmt)
    assert list(tmp_path.iterdir()) == [store]  # neither the file nor a temp file nor a lock file
    monkeypatch.setattr(store_module, "iter_frames", real)
    assert export(store, out, fmt) == 3


def test_export_into_a_read_only_folder_is_one_line(store, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with read_only_folder(tmp_path / "ro") as folder:
        proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "export", str(store), "--out",
                               str(folder / "x.extxyz")], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and f"cannot write {folder / 'x.extxyz'}" in proc.stderr, proc.stderr
