"""Resuming a store with other parent settings (ENCUT 350 -> 500) is refused in one line naming the change and
the two ways on (--restart, or --accept-parent-change); nothing is mixed silently.

The real CLI in subprocesses, threads site (no worker processes), EMT parent, real HDF5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py

from conftest import TESTS_DIR
from finetuna_parsl.store import read_runs

CONFIG = """
systems: {{source: demo, count: {count}}}
parent: {{kind: emt, options: {options}}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: "{site}"
"""


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def runs(path: Path) -> list[dict]:
    with h5py.File(path, "r") as f:
        return read_runs(f)


def test_resuming_with_changed_parent_options_is_refused_until_asked(tmp_path):
    store = tmp_path / "s.h5"
    cfg = tmp_path / "run.yaml"
    write = lambda options, count=1: cfg.write_text(  # noqa: E731
        CONFIG.format(count=count, options=options, output=store, site=TESTS_DIR / "threads_site.py"))
    write("{}")
    first = cli(tmp_path, "run", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(runs(store)) == 1

    log = tmp_path / "calls.log"
    write(f'{{call_log: "{log}"}}', count=2)  # a changed parent option, and a new system to run with it
    refused = cli(tmp_path, "run", str(cfg))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert str(store) in line and "parent" in line and "call_log" in line, line
    assert "--restart" in line and "--accept-parent-change" in line, line
    assert len(runs(store)) == 1 and not log.exists()  # nothing run, nothing added to the store

    same_again = cfg.read_text()
    write("{}", count=2)  # the stored settings: resumes as always
    assert cli(tmp_path, "run", str(cfg)).returncode == 0
    cfg.write_text(same_again)
    accepted = cli(tmp_path, "run", str(cfg), "--accept-parent-change")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "parent settings changed" in accepted.stderr  # said, even when accepted
    assert len(runs(store)) == 3


def test_restart_is_the_other_way_on(tmp_path):
    store = tmp_path / "s.h5"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(count=1, options="{}", output=store, site=TESTS_DIR / "threads_site.py"))
    assert cli(tmp_path, "run", str(cfg)).returncode == 0
    cfg.write_text(CONFIG.format(count=1, options="{fail_after_calls: 100}", output=store,
                                 site=TESTS_DIR / "threads_site.py"))
    proc = cli(tmp_path, "run", str(cfg), "--restart")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs(store)) == 1


def test_bench_refuses_changed_parent_settings_until_asked(tmp_path):
    store = tmp_path / "b.h5"
    cfg = tmp_path / "bench.yaml"
    write = lambda options: cfg.write_text(  # noqa: E731
        CONFIG.format(count=1, options=options, output=store, site=TESTS_DIR / "threads_site.py"))
    write("{}")
    first = cli(tmp_path, "bench", str(cfg), "--methods", "bfgs")
    assert first.returncode == 0, first.stderr[-3000:]
    write(f'{{call_log: "{tmp_path / "calls.log"}"}}')
    refused = cli(tmp_path, "bench", str(cfg), "--methods", "bfgs")
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert refused.returncode == 2 and "--accept-parent-change" in line, refused.stderr[-3000:]
    accepted = cli(tmp_path, "bench", str(cfg), "--methods", "bfgs", "--accept-parent-change")
    assert accepted.returncode == 0, accepted.stderr[-3000:]


def test_resuming_with_other_learner_or_surrogate_settings_is_refused_and_a_parent_only_store_does_not_care(tmp_path):
    """A store's finished systems are skipped on resume, so a changed learner or prior (here learner.k 3 -> 5, then
    surrogate.lr) would leave a table that mixes results of both under the new settings' name: refused in one line
    naming the change. The parent-only reference methods use neither: their stores resume whatever the learner says.
    Budgets (max_parent_calls, max_surrogate_steps) and where the surrogate runs (device, threads) may change."""
    store = tmp_path / "s.h5"
    cfg = tmp_path / "run.yaml"
    site = TESTS_DIR / "threads_site.py"
    cfg.write_text(CONFIG.format(count=1, options="{}", output=store, site=site))
    first = cli(tmp_path, "run", str(cfg))
    assert first.returncode == 0, first.stderr[-3000:]
    assert runs(store)[-1]["settings"]["learner"]["k"] == 3  # the effective settings are stored with the run

    text = cfg.read_text()
    for old, new, named in (("k: 3,", "k: 5,", "learner.k 3 -> 5"),
                            ('factory: "toy_surrogate:make"}', 'factory: "toy_surrogate:make", lr: 0.01}',
                             "surrogate.lr 0.0003 -> 0.01")):
        cfg.write_text(text.replace(old, new).replace("count: 1", "count: 2"))
        refused = cli(tmp_path, "run", str(cfg))
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
        assert str(store) in line and named in line and "--restart" in line, line
        assert len(runs(store)) == 1  # nothing run

    cfg.write_text(text.replace("max_parent_calls: 3", "max_parent_calls: 4").replace(
        'factory: "toy_surrogate:make"}', 'factory: "toy_surrogate:make", threads: 2}'))
    budget = cli(tmp_path, "run", str(cfg))
    assert budget.returncode == 0, budget.stderr[-3000:]

    cfg.write_text(text.replace("k: 3,", "k: 5,"))
    bench = cli(tmp_path, "bench", str(cfg), "--methods", "bfgs", "--out", str(tmp_path / "b"))
    assert bench.returncode == 0, bench.stderr[-3000:]
    cfg.write_text(text.replace("k: 3,", "k: 7,"))  # bfgs's store resumes: it never used the learner
    again = cli(tmp_path, "bench", str(cfg), "--methods", "bfgs", "--out", str(tmp_path / "b"))
    assert again.returncode == 0 and "error:" not in again.stderr, again.stderr[-3000:]
