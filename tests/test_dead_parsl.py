"""A dead Parsl component ends the run within a minute with one line, and the same command resumes it.

The real CLI in a subprocess on the laptop site (real HighThroughputExecutors and interchanges); the learn
interchange is killed with SIGKILL mid-run, as the OOM killer or a node problem would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from conftest import TESTS_DIR, processes_mentioning
from finetuna_parsl.store import load_summary

CONFIG = """
systems: {{source: demo, count: 6}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 12}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: laptop
"""


def interchanges(driver: int) -> list[psutil.Process]:
    """The driver's interchanges (our launch command), oldest first: parent's, then learn's (the site's order)."""
    found = []
    for p in psutil.Process(driver).children(recursive=True):
        try:
            line = " ".join(p.cmdline())
        except psutil.Error:
            continue
        if "HTEX interchange" in line or "high_throughput.interchange" in line:
            found.append(p)
    return sorted(found, key=lambda p: p.create_time())


def parent_calls(store: Path) -> int:
    summary = store.with_suffix(".summary.json")
    try:
        return sum(int(r["parent_calls"]) for r in json.loads(summary.read_text())["systems"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_learn_interchange_ends_the_run_in_a_minute_with_one_line_and_it_resumes(tmp_path):
    store = tmp_path / "s.h5"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=store))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while parent_calls(store) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None and parent_calls(store) >= 2, "the run did not get going"
        found, until = interchanges(proc.pid), time.monotonic() + 10
        while len(found) != 2 and time.monotonic() < until:  # a process list read mid-change misses some
            time.sleep(0.2)
            found = interchanges(proc.pid)
        assert len(found) == 2, [" ".join(p.cmdline())[:100] for p in psutil.Process(proc.pid).children(recursive=True)]
        learn = found[1]
        learn.kill()
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert took < 60, took
    assert proc.returncode not in (0, -9) and "Traceback" not in stderr, stderr[-3000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert "interchange" in line and "learn" in line and "resume" in line, line
    deadline = time.monotonic() + 15
    while processes_mentioning(str(tmp_path / "runinfo")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path / "runinfo"))  # no worker pool of that run left behind
    rerun = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert [r["status"] for r in load_summary(store)] == ["done"] * 6


STUCK_LAUNCH = """
import sys, time
import parsl
from parsl import python_app
from finetuna_parsl import cli
from finetuna_parsl.campaign import CampaignStopped
from finetuna_parsl.campaign.runner import SHUTDOWN_LIMIT_S, _isolate_interchanges, _scripts_on_path, _shutdown_parsl
from finetuna_parsl.campaign.site import load_site

config = load_site("laptop", run_dir=sys.argv[1], parent_slots=1)
_isolate_interchanges(config)
with _scripts_on_path():
    dfk = parsl.load(config)
    learn = dfk.executors["learn"]
    learn.interchange_proc.kill()
    learn.interchange_proc.wait()
    time.sleep(1)  # the learn executor's task socket has lost its only peer

    @python_app(executors=["learn"])
    def step():
        return 1

    step()  # its launch thread now blocks for good in zmq's send, as a learn task sent just after a kill does
    time.sleep(1)
    _shutdown_parsl(dfk, SHUTDOWN_LIMIT_S)  # what run_campaign does on CampaignStopped
cli._stopped(CampaignStopped("Parsl's interchange of the 'learn' executor exited (code -9): resume"))
"""


def test_a_parsl_thread_blocked_on_a_dead_interchange_does_not_keep_the_stopped_driver_alive(tmp_path):
    """The CI failure of 2026-12-05 made deterministic: a learn task submitted between the interchange's death and
    the driver noticing it leaves a Parsl launch thread blocked forever in zmq's send; the interpreter's exit joined
    it, so the driver printed its error line and never ended."""
    script = tmp_path / "stuck.py"
    script.write_text(STUCK_LAUNCH)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "runinfo")], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the driver did not exit after its error line: a blocked Parsl thread held it")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("error: Parsl's interchange of the 'learn' executor"), stderr
    deadline = time.monotonic() + 15
    while processes_mentioning(str(tmp_path / "runinfo")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(tmp_path / "runinfo"))
