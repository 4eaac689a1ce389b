"""After a hard kill of the driver, the next run of the same store (or `finetuna-parsl cleanup STORE`) ends the
killed run's interchanges and worker pools and removes its bridge socket files: those of that run, and only those.

The real CLI on the laptop site (real Parsl processes), SIGKILL of the driver; real processes for the unit case.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import TESTS_DIR, processes_mentioning
from finetuna_parsl.campaign.runner import end_leftovers, record_path
from finetuna_parsl.store import load_summary

CONFIG = """
systems: {{source: demo, count: 6}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 12}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: laptop
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def recorded(record: Path) -> int:
    """How many processes the run has recorded (2 interchanges and 2 worker pools once all have started)."""
    try:
        return len(json.loads(record.read_text())["processes"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_until(condition, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.2)
    return condition()


def test_the_next_run_ends_what_a_killed_driver_left_behind(tmp_path):
    store = tmp_path / "s.h5"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=store))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = record_path(store)
    try:
        assert wait_until(lambda: recorded(record) == 4 and glob.glob(f"/tmp/ipi_finetuna-{driver.pid}-*"), 240)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    left = [entry["pid"] for entry in json.loads(record.read_text())["processes"]]
    sockets = glob.glob(f"/tmp/ipi_finetuna-{driver.pid}-*")
    time.sleep(2)
    assert any(alive(pid) for pid in left) and sockets  # Parsl #3761: they outlive the driver
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    other_socket = Path(f"/tmp/ipi_finetuna-{bystander.pid}-000000000000")  # another campaign's: not ours to touch
    other_socket.touch()
    try:
        rerun = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert "ended 2 interchanges and 2 worker pools" in rerun.stderr and f"pid {driver.pid}" in rerun.stderr, rerun.stderr[-3000:]
        assert not [pid for pid in left if alive(pid)]
        assert not [s for s in sockets if os.path.exists(s)]
        assert alive(bystander.pid) and other_socket.exists()
    finally:
        bystander.kill()
        other_socket.unlink(missing_ok=True)
    assert [r["status"] for r in load_summary(store)] == ["done"] * 6
    assert wait_until(lambda: not processes_mentioning(str(tmp_path / "runinfo")), 15)
    assert not record.exists()  # a run that ended by itself leaves no record to clean up after


def test_cleanup_command_ends_a_recorded_dead_runs_processes_and_nothing_else(tmp_path):
    store = tmp_path / "s.h5"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a driver that died
    pool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    socket_file = Path(f"/tmp/ipi_finetuna-{gone.pid}-abcdefabcdef")
    socket_file.touch()
    record = record_path(store)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"driver": {"pid": gone.pid, "created": time.time() - 5}, "processes": [
        {"pid": pool.pid, "pgid": pool.pid, "created": psutil.Process(pool.pid).create_time(), "what": "worker pool"},
        # a pid now used by another program (its start time differs): never signalled
        {"pid": reused.pid, "pgid": reused.pid, "created": 12345.0, "what": "interchange"}]}))
    try:
        env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "cleanup", str(store)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "ended 1 worker pool" in proc.stdout and str(socket_file) not in proc.stderr
        assert wait_until(lambda: not alive(pool.pid), 10)
        assert alive(reused.pid) and not socket_file.exists() and not record.exists()
        assert end_leftovers(store) == []  # nothing left to do
    finally:
        for p in (pool, reused):
            p.kill()
        socket_file.unlink(missing_ok=True)


def test_a_record_from_another_machine_or_of_a_live_driver_is_left_alone(tmp_path):
    """A store on a shared filesystem may have been run from another host; a live driver is still running."""
    store = tmp_path / "s.h5"
    pool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    record = record_path(store)
    record.parent.mkdir(parents=True)
    entry = {"pid": pool.pid, "pgid": pool.pid, "created": psutil.Process(pool.pid).create_time(), "what": "worker pool"}
    try:
        for driver in ({"pid": 1, "created": 0.0, "host": "another-login-node"},
                       {"pid": os.getpid(), "created": psutil.Process().create_time()}):
            record.write_text(json.dumps({"driver": driver, "processes": [entry]}))
            assert end_leftovers(store) == []
            assert alive(pool.pid) and record.exists()
    finally:
        pool.kill()
