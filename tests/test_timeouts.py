"""Timeouts say which one fired; settings where one timeout shadows another are warned about when read; a parent
process never outlives the session that started it.

Real bridge sockets, the fake VASP (tests/fake_vasp.py) as a real process, real process kills.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import TESTS_DIR
from finetuna_parsl.config import parse_config, shadowed_settings
from finetuna_parsl.parents import ParentError
from finetuna_parsl.parents.bridge import ParentServer, serve_session
from finetuna_parsl.parents.emt import EMTSession
from finetuna_parsl.systems import demo_systems

SYSTEM = demo_systems(1)[0]
FAKE = str(TESTS_DIR / "fake_vasp.py")


class Hung(EMTSession):
    """EMT whose second call hangs (like a VASP step that never finishes)."""

    def __init__(self, release: threading.Event, **kwargs):
        super().__init__(**kwargs)
        self.release = release

    def calculate(self, positions):
        if self.calls >= 1:
            self.release.wait(60)
        return super().calculate(positions)


def test_a_call_that_is_not_answered_names_parent_timeout_s_not_a_connection():
    release = threading.Event()
    server = ParentServer(mode="unix", timeout_s=1.5)
    thread = threading.Thread(target=serve_session, args=(Hung(release), SYSTEM, server.bridge_address), daemon=True)
    thread.start()
    server.call(SYSTEM.positions, SYSTEM.cell)
    t0 = time.monotonic()
    with pytest.raises(ParentError) as info:
        server.call(SYSTEM.positions + 0.01, SYSTEM.cell)
    took = time.monotonic() - t0
    release.set()
    server.stop()
    message = str(info.value)
    assert "parent.timeout_s = 1.5 s" in message and "no answer" in message, message
    assert "connect" not in message, message
    assert took < 10  # not the 5 s grace for a session error on top of waiting for one that is alive


def test_a_session_that_never_connects_says_which_timeout_and_what_may_hold_the_workers():
    server = ParentServer(mode="unix", timeout_s=1)
    with pytest.raises(ParentError) as info:
        server.call(SYSTEM.positions, SYSTEM.cell)
    server.stop()
    message = str(info.value)
    assert "parent.timeout_s = 1 s" in message and "did not connect" in message
    assert "busy" in message  # a hung earlier session still holding the parent worker is the usual reason


VASP = """
parent:
  kind: vasp
  timeout_s: {timeout}
  options: {{command: vasp_std, step_timeout_s: {step}, startup_timeout_s: {startup}}}
"""


def test_a_driver_timeout_below_the_parents_own_is_warned_about_when_read():
    config = parse_config(VASP.format(timeout=20, step=60, startup=600))
    (step, startup) = shadowed_settings(config)
    assert "parent.timeout_s (20 s)" in step and "step_timeout_s (60 s)" in step
    assert "startup_timeout_s (600 s)" in startup
    assert shadowed_settings(parse_config(VASP.format(timeout=7200, step=3600, startup=600))) == []


def test_the_cli_prints_the_shadowing_warning(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(VASP.format(timeout=20, step=60, startup=10) + f"campaign: {{output: {tmp_path / 's.h5'}}}\n"
                   "systems: {source: demo, count: 1}\n")
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg), "--site", "nonexistent"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert "warning: parent.timeout_s (20 s) is shorter than parent.options.step_timeout_s (60 s)" in proc.stderr


SESSION_SCRIPT = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from test_vasp import slab_system
from finetuna_parsl.parents.vasp import VaspInteractiveSession
s = VaspInteractiveSession(workdir={workdir!r}, command=[sys.executable, {fake!r}],
                           env={{"FAKE_VASP_HANG_AT": "1"}}, step_timeout_s=600)
system = slab_system()
s.start(system)
threading.Thread(target=s.calculate, args=(system.positions,), daemon=True).start()
while s._proc is None:
    time.sleep(0.05)
print(s._proc.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_hung_vasp_dies_with_the_process_of_its_session(tmp_path, how):
    """VASP runs in a process group of its own (so it can be paused as a whole), which Parsl's kill of the worker
    pool's group does not reach: it used to keep running after the driver (and its workers) had gone."""
    script = SESSION_SCRIPT.format(tests=str(TESTS_DIR), workdir=str(tmp_path / "w"), fake=FAKE)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    vasp = int(proc.stdout.readline())
    log = tmp_path / "w" / "vasp.out"
    deadline = time.monotonic() + 60
    while "DAV:   2" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)  # hung inside step 1: it writes nothing more (no broken pipe to end it)
    assert alive(vasp)
    proc.send_signal(how)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while alive(vasp) and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = alive(vasp)
    if survived:
        os.killpg(vasp, signal.SIGKILL)
    assert not survived
