"""Crash and resume: SIGKILL the driver mid-campaign, run again, and account for every parent call."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import psutil

from conftest import TESTS_DIR, processes_mentioning

CONFIG = """
systems: {{source: demo, count: 10}}
parent: {{kind: emt, options: {{call_log: "{log}"}}}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 4}}
"""


def cli(args, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def test_sigkill_of_the_driver_loses_no_parent_call(tmp_path):
    log = tmp_path / "calls.log"
    store = tmp_path / "kill.h5"
    cfg = tmp_path / "kill.yaml"
    cfg.write_text(CONFIG.format(log=log, output=store))

    first = cli(["run", str(cfg)], tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if log.exists() and len(log.read_text().splitlines()) >= 40:
            break
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.05)
    # The first run's Parsl processes, recorded now to tidy after the test: the driver's descendants (its
    # interchanges) and the worker pools, which the provider's `bash -c ... &` already detached from it (found by
    # their run folder). Other process groups, so killpg misses them; psutil's handles refuse a reused pid.
    orphans = psutil.Process(first.pid).children(recursive=True)
    for pid in processes_mentioning(str(tmp_path / "runinfo")):
        try:
            pool = psutil.Process(pid)
            orphans += [pool, *pool.children(recursive=True)]  # its workers too: killed alone, a pool leaves them
        except psutil.NoSuchProcess:
            pass
    os.kill(first.pid, signal.SIGKILL)  # the driver only; its Parsl workers are orphaned mid-call
    first.wait(timeout=30)
    calls_before = len(log.read_text().splitlines())
    assert 40 <= calls_before < 150  # killed mid-run, not after the end

    second = cli(["run", str(cfg)], tmp_path)
    try:
        out, err = second.communicate(timeout=600)
    finally:
        for proc in orphans:  # tidy the first run's orphaned Parsl processes, whatever the second run did
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    for sock in Path("/tmp").glob(f"ipi_finetuna-{first.pid}-*"):  # bridge sockets a killed driver leaves
        sock.unlink()
    assert second.returncode == 0, err[-3000:]
    assert "10 systems, 10 parent-confirmed relaxed" in out

    made = Counter(line.split()[0] for line in log.read_text().splitlines())
    with h5py.File(store, "r") as f:
        stored = {}
        for sid, g in f["systems"].items():
            kind = g["steps/kind"][()]
            parents = g["steps/positions"][()][kind == 1]
            stored[sid] = len(parents)
            assert g.attrs["parent_calls"] == len(parents) and g.attrs["outcome"] == "converged"
            reasons = list(g["steps/reason"].asstr()[()][kind == 1])  # written with each row, across the kill
            assert reasons[0] == "initial" and all(reasons[1:]) and "initial" not in reasons[1:], reasons
            flat = parents.reshape(len(parents), -1)
            distances = np.abs(flat[:, None, :] - flat[None, :, :]).max(axis=2) + np.eye(len(parents))
            assert distances.min() > 1e-8, f"{sid}: a parent point is stored twice"
    assert len(stored) == 10
    assert made == Counter(stored)  # every call the parent made is in the store, none made twice


def test_sigterm_of_the_driver_shuts_its_parsl_workers_down(tmp_path):
    log = tmp_path / "calls.log"
    cfg = tmp_path / "term.yaml"
    cfg.write_text(CONFIG.format(log=log, output=tmp_path / "term.h5"))
    driver = cli(["run", str(cfg)], tmp_path)
    deadline = time.monotonic() + 180
    while not (log.exists() and len(log.read_text().splitlines()) >= 10):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[1][-3000:]
        time.sleep(0.05)
    assert processes_mentioning(str(tmp_path / "runinfo"))  # the worker pools are running
    os.kill(driver.pid, signal.SIGTERM)  # the driver only, as `kill` or a batch system would
    driver.wait(timeout=60)
    deadline = time.monotonic() + 60
    while processes_mentioning(str(tmp_path / "runinfo")) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = processes_mentioning(str(tmp_path / "runinfo"))
    try:
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert not left, f"worker processes outlived the driver: {left}"


REFERENCE_CONFIG = """
systems: {{source: demo, count: 8}}
parent: {{kind: ase, calculator: "ase_calculators:SlowEMT", options: {{call_log: "{log}", delay: 0.03}}}}
surrogate: {{factory: "toy_surrogate:make"}}
campaign: {{output: "{output}", max_concurrent: 4}}
"""


def test_a_reference_relaxation_killed_mid_way_pays_no_parent_call_twice(tmp_path):
    """A reference relaxation (here parent-only BFGS) runs whole in one parent task; before its calls were
    journaled, a crash lost every call of the relaxations in flight and the resumed run paid for them again
    (with DFT: hours per call). Now the resumed optimizer replays its steps from the journal."""
    log = tmp_path / "calls.log"
    cfg = tmp_path / "ref.yaml"
    cfg.write_text(REFERENCE_CONFIG.format(log=log, output=tmp_path / "ref.h5"))
    args = ["bench", str(cfg), "--methods", "bfgs", "--out", str(tmp_path / "bench")]
    first = cli(args, tmp_path)
    deadline = time.monotonic() + 180
    while not (log.exists() and len(log.read_text().splitlines()) >= 40):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
        time.sleep(0.05)
    # The whole allocation dies at once (a node failure, a batch job killed): the driver and its worker pools.
    doomed = psutil.Process(first.pid).children(recursive=True)
    for pid in processes_mentioning(str(tmp_path / "runinfo")):
        try:
            pool = psutil.Process(pid)
            doomed += [pool, *pool.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    os.kill(first.pid, signal.SIGKILL)
    for proc in doomed:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    first.wait(timeout=30)
    psutil.wait_procs(doomed, timeout=30)
    before = Counter(line.split()[0] for line in log.read_text().splitlines())
    assert 40 <= sum(before.values())

    second = cli(args, tmp_path)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    made = Counter(line.split()[0] for line in log.read_text().splitlines())
    stored = {}
    with h5py.File(tmp_path / "ref.bfgs.h5", "r") as f:
        for sid, g in f["systems"].items():
            assert g.attrs["outcome"] == "converged"
            stored[sid] = int((g["steps/kind"][()] == 1).sum())
    assert len(stored) == 8
    cut = [sid for sid in before if made[sid] > before[sid]]  # in flight at the kill: the second run went on with them
    assert cut and max(before[sid] for sid in cut) >= 2, (before, stored)  # relaxations killed part way
    # Every call paid once: the resumed relaxations replayed the journal (without it, each cut relaxation pays all
    # its calls before the kill again). The one exception no journal can close: a SIGKILL that lands between the
    # parent's answer and its journal entry loses that answer, so a relaxation in flight may pay that one call again.
    again = {sid: made[sid] - stored[sid] for sid in stored if made[sid] != stored[sid]}
    assert all(sid in cut and n == 1 for sid, n in again.items()), (again, before, stored)
    assert len(again) <= 4  # at most one per relaxation in flight (max_concurrent)
