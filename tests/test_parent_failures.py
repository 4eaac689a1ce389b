"""Parent sessions that die: noticed when they die (not after parent.timeout_s), reported in full.

Real Parsl (laptop site), the real CLI in a subprocess, fake VASP (tests/fake_vasp.py), a real HDF5 store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import pytest

from conftest import TESTS_DIR
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.parents import ParentError, ParentSession
from finetuna_parsl.parents.bridge import ParentServer, serve_session
from finetuna_parsl.systems import demo_systems

FAKE = str(TESTS_DIR / "fake_vasp.py")
SYSTEM = demo_systems(1)[0]

CONFIG = """
systems: {{source: demo, count: 1}}
parent:
  kind: vasp
  timeout_s: {timeout_s}
  options:
    command: {command}
    step_timeout_s: 60
    env: {env}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 1, parent_retries: 2}}
"""


def run_cli(tmp_path: Path, config: str, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    """`finetuna-parsl run` in its own process group; killed (group and all) if it outlives `timeout`."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the run was still going after {timeout:.0f} s: a dead parent session was waited on\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - t0


class _FailsToStart(ParentSession):
    kind = "broken"

    def start(self, system: SystemSpec) -> None:
        raise ParentError(f"broken parent for {system.system_id}: cannot launch the engine\nsecond line of the reason")

    def calculate(self, positions):
        raise AssertionError("never reached")


def test_a_session_that_fails_to_start_is_noticed_at_once_not_after_the_timeout():
    """The bridge alone: the session's socket closes when it fails, so the driver does not wait timeout_s."""
    server = ParentServer(mode="unix", timeout_s=60)
    out: dict = {}

    def session():
        try:
            serve_session(_FailsToStart(), SYSTEM, server.bridge_address, timeout_s=60)
        except Exception as exc:  # noqa: BLE001 - kept, as a Parsl worker keeps the exception it reports
            out["error"] = exc

    thread = threading.Thread(target=session, daemon=True)
    thread.start()
    server.session_alive = lambda: str(out["error"]) if "error" in out else None
    t0 = time.monotonic()
    with pytest.raises(ParentError) as info:
        server.call(SYSTEM.positions, SYSTEM.cell)
    assert time.monotonic() - t0 < 10
    assert "cannot launch the engine\nsecond line of the reason" in str(info.value)  # the whole reason, not a line
    server.stop()
    thread.join(timeout=10)


def test_a_vasp_that_cannot_start_fails_its_system_at_once_without_retries(tmp_path, toy_on_workers):
    """Before: 3 x parent.timeout_s (3 x 90 s here) of "running", then three cold tries of a command that cannot
    run; now the death is seen as it happens, and a setup error (ParentSetupError) is not retried."""
    output = tmp_path / "nolaunch.h5"
    config = CONFIG.format(timeout_s=90, command='["/nonexistent/bin/vasp_std"]', env="{}", output=output)
    proc, elapsed = run_cli(tmp_path, config, timeout=150)
    # the laptop site's parent workers run on this machine: the driver looks the program up before they start
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert elapsed < 90, f"took {elapsed:.0f} s: at least one parent.timeout_s was waited out"
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "vasp parent: /nonexistent/bin/vasp_std: no such executable (from parent.options.command "
        "['/nonexistent/bin/vasp_std']); no worker was started"), proc.stderr
    assert not output.exists()
    assert "Traceback" not in proc.stderr


def test_a_vasp_crash_is_stored_in_full_and_every_attempt_keeps_its_output(tmp_path, toy_on_workers):
    output = tmp_path / "crash.h5"
    config = CONFIG.format(timeout_s=90, command=f'["{sys.executable}", "{FAKE}"]', env="{FAKE_VASP_CRASH_AT: '1'}",
                           output=output)
    proc, elapsed = run_cli(tmp_path, config, timeout=150)
    assert proc.returncode == 1, proc.stderr[-3000:]
    workdir = tmp_path / "crash-parent" / SYSTEM.system_id
    with h5py.File(output, "r") as f:
        error = str(f["systems"][SYSTEM.system_id].attrs["error"])
    first = error.splitlines()[0]
    assert first.startswith("parent call failed 3 times")
    assert "VASP exited with code 174 during ionic step 1" in first  # the reason, not VASP's last stdout line
    assert "forrtl: severe (174): SIGSEGV" in error  # stderr tail
    assert "RMM:" in error or "DAV:" in error  # stdout tail
    assert f"workdir: {workdir}" in error and FAKE in error  # the folder and the command
    # the table shows the readable first line, not the stdout tail's last line
    (line,) = [x for x in proc.stdout.splitlines() if x.strip().startswith("error:")]
    assert "VASP exited with code 174" in line and "RMM:" not in line
    # each of the three attempts kept its own vasp.out / vasp.err
    outs = sorted(p.name for p in workdir.glob("vasp.out*"))
    errs = sorted(p.name for p in workdir.glob("vasp.err*"))
    assert outs == ["vasp.out", "vasp.out.1", "vasp.out.2"] and errs == ["vasp.err", "vasp.err.1", "vasp.err.2"]
    for name in errs:
        assert (workdir / name).read_text().count("forrtl: severe (174)") == 1
    for name in outs:
        assert (workdir / name).read_text().count("running on") == 1


def test_setup_errors_are_ase_setup_errors_and_run_time_failures_are_not():
    """The split ASE makes (ase.calculators.calculator): a caller can tell 'fix your input' from 'try again'."""
    from ase.calculators.calculator import CalculatorError, CalculatorSetupError

    from finetuna_parsl.parents import ParentSetupError, make_parent

    with pytest.raises(ParentSetupError) as info:
        make_parent("vasp", command="")
    assert isinstance(info.value, CalculatorSetupError) and isinstance(info.value, ParentError)
    with pytest.raises(ParentSetupError, match="unknown parent kind"):
        make_parent("castep")
    with pytest.raises(ParentSetupError, match="bad parent.options.*encut"):
        make_parent("vasp", command="vasp_std", encut=400)  # an option the session does not take
    crash = make_parent("emt", fail_after_calls=0)
    crash.start(SYSTEM)
    with pytest.raises(ParentError) as info:
        crash.calculate(SYSTEM.positions)
    assert isinstance(info.value, CalculatorError) and not isinstance(info.value, CalculatorSetupError)
