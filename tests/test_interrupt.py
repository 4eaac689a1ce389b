"""Ctrl-C / a batch system's SIGTERM to the whole process group: the run ends within seconds, store closed.

The real CLI in its own session (so the signal goes to its whole process group, as a terminal or `timeout`
sends it), real Parsl, EMT parent, a real HDF5 store opened afterwards by another process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

from conftest import TESTS_DIR, processes_mentioning

CONFIG = """
systems: {{source: demo, count: 6}}
parent: {{kind: emt, options: {{call_log: "{log}"}}}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
"""


def start(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    log, store, cfg = tmp_path / "calls.log", tmp_path / "int.h5", tmp_path / "int.yaml"
    cfg.write_text(CONFIG.format(log=log, output=store))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (log.exists() and len(log.read_text().splitlines()) >= 4):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run did not get going: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    return proc, store, cfg


def finish(proc: subprocess.Popen, within: float) -> tuple[str, str, float]:
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"still running {within:.0f} s after the signal\n{err[-3000:]}")
    return out, err, time.monotonic() - t0


def wait_gone(text: str, timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_mentioning(text)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_ends_the_run_in_seconds_with_the_store_closed(tmp_path, signum):
    proc, store, cfg = start(tmp_path)
    os.killpg(proc.pid, signum)  # the whole group: Ctrl-C in a terminal, `timeout`, Slurm at walltime
    out, err, took = finish(proc, within=45)
    left = wait_gone(str(tmp_path / "runinfo"))
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert took < 20, f"{took:.0f} s to stop\n{err[-3000:]}"
    assert proc.returncode == 128 + signum
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if "interrupted" in x]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err[-3000:]
    assert not left, f"Parsl processes outlived the run: {left}"
    with h5py.File(store, "r") as f:  # another process can open it: the lock is released
        statuses = {sid: str(g.attrs["status"]) for sid, g in f["systems"].items()}
        for g in f["systems"].values():
            kind = g["steps/kind"][()]
            assert int((kind == 1).sum()) == int(g.attrs["parent_calls"])  # rows and counters agree
    assert "running" not in statuses.values(), statuses
    if signum == signal.SIGTERM:  # and the same command resumes it to the end
        env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        again = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "6 systems, 6 parent-confirmed relaxed" in again.stdout


VASP_CONFIG = """
systems: {{source: demo, count: 1}}
parent:
  kind: vasp
  options:
    command: ["{python}", "{fake}"]
    env: {{FAKE_VASP_HANG_AT: "2"}}
    step_timeout_s: 120
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
"""


def test_a_second_signal_ends_the_run_at_once(tmp_path):
    """A parent hung mid-step keeps the first signal's orderly stop waiting; the second one does not wait."""
    store, cfg = tmp_path / "hang.h5", tmp_path / "hang.yaml"
    cfg.write_text(VASP_CONFIG.format(python=sys.executable, fake=TESTS_DIR / "fake_vasp.py", output=store))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    vasp_out = tmp_path / "hang-parent" / "demo-000-H-Pt-fcc111" / "vasp.out"
    deadline = time.monotonic() + 180
    while not (vasp_out.exists() and vasp_out.read_text().count("DAV:") >= 4):  # step 2 has begun, and hangs
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"VASP never reached step 2: {proc.communicate()[1][-3000:]}")
        time.sleep(0.05)
    vasp_pid = int((vasp_out.parent / "fake_vasp.pid").read_text())
    try:
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.5)
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        out, err, _ = finish(proc, within=30)
        took = time.monotonic() - t0
        left = wait_gone(str(tmp_path / "runinfo"))
    finally:
        for pgid in (proc.pid, vasp_pid):  # the hung VASP is in a group of its own (see ISSUE notes)
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert took < 4, f"{took:.1f} s to stop after the second signal\n{err[-3000:]}"
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert "SIGINT again: stopped at once" in err
    assert not left, f"Parsl processes outlived the run: {left}"
    with h5py.File(store, "r") as f:  # flushed after every write: readable, not corrupt
        assert len(f["systems"]) == 1
