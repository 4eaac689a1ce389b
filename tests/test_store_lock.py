"""A store held open by another process (a notebook reading it, a run writing it): one clear line, nothing deleted.

Real HDF5 file locks between real processes; the real CLI in a subprocess (these fail before Parsl starts).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import TESTS_DIR
from finetuna_parsl.store import CampaignStore, StoreError, describe_open_failure, open_h5
from finetuna_parsl.systems import demo_systems

CONFIG = """
systems: {{source: demo, count: 1}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
campaign: {{output: "{output}", max_concurrent: 1}}
"""


def holder(path: Path, mode: str) -> subprocess.Popen:
    """Another process with the store open (mode 'r': a notebook reading it; 'a': a run writing it)."""
    code = f"import h5py, sys, time; f = h5py.File({str(path)!r}, {mode!r}); print('open', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "held.h5"
    with CampaignStore(path) as s:
        s.add_system(demo_systems(1)[0])
    return path


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_opening_a_store_a_reader_holds_names_the_holder_without_locking_advice(store):
    reader = holder(store, "r")
    try:
        with pytest.raises(StoreError) as info:
            open_h5(store, "a")
    finally:
        reader.kill()
        reader.wait()
    message = str(info.value)
    assert "\n" not in message
    assert "another process" in message and f"pid {reader.pid}" in message
    assert "HDF5_USE_FILE_LOCKING" not in message


def test_run_and_restart_refuse_a_store_another_process_holds(tmp_path, store):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=store))
    reader = holder(store, "r")
    try:
        t0 = time.monotonic()
        plain = cli(tmp_path, "run", str(cfg))
        restart = cli(tmp_path, "run", str(cfg), "--restart")
        assert store.exists()  # --restart did not delete a store another process holds
        took = time.monotonic() - t0
    finally:
        reader.kill()
        reader.wait()
    for proc in (plain, restart):
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and "another process" in lines[0] and f"pid {reader.pid}" in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr and "HDF5_USE_FILE_LOCKING" not in proc.stderr
    assert took < 60  # found before any Parsl worker starts
    with h5py.File(store, "r") as f:  # untouched
        assert list(f["systems"]) == [demo_systems(1)[0].system_id]


def test_export_while_a_run_writes_the_store_is_one_line_naming_the_writer(tmp_path, store):
    writer = holder(store, "a")
    try:
        proc = cli(tmp_path, "export", str(store))
    finally:
        writer.kill()
        writer.wait()
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "another process" in proc.stderr and f"pid {writer.pid}" in proc.stderr
    assert "HDF5_USE_FILE_LOCKING" not in proc.stderr


def test_the_locking_advice_is_kept_for_a_filesystem_that_cannot_lock(tmp_path):
    """What HDF5 raises on Lustre/NFS without locking (errno 38); the one case where the advice is right."""
    exc = OSError(38, "Unable to synchronously open file (unable to lock file, errno = 38, error message = "
                      "'Function not implemented')")
    message = describe_open_failure(tmp_path / "x.h5", "a", exc)
    assert "does not support file locking" in message and "HDF5_USE_FILE_LOCKING=FALSE" in message


def test_restart_still_replaces_a_broken_store(tmp_path):
    """Only a store another process holds is kept: a file that is not a store at all is no reason to refuse."""
    from finetuna_parsl.store import check_not_held

    broken = tmp_path / "broken.h5"
    broken.write_text("not hdf5")
    check_not_held(broken)  # no error: run --restart may delete it
    with pytest.raises(StoreError, match="broken.h5"):
        CampaignStore(broken)
