"""`finetuna-parsl inspect`: a store being written by a real campaign (read from its live summary, the writer
never blocked), and the same store once the run has stopped (read from the HDF5 file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import h5py

from conftest import TESTS_DIR
from click.testing import CliRunner

from finetuna_parsl import live
from finetuna_parsl.cli import main

CONFIG = """
systems: {{source: demo, count: 4}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: {site}
"""


def cli(*args):
    """The command itself, in this process (the campaign it looks at is another process)."""
    return CliRunner().invoke(main, list(args))


def wait_for(condition, what: str, writer: subprocess.Popen, limit_s: float = 120.0):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert writer.poll() is None, f"the campaign ended before {what}: {writer.communicate()[1][-2000:]}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {limit_s} s")


def test_inspect_a_store_while_a_campaign_writes_it_then_after(tmp_path):
    store = tmp_path / "live.h5"
    cfg = tmp_path / "live.yaml"
    cfg.write_text(CONFIG.format(output=store, site=TESTS_DIR / "threads_site.py"))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    writer = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def one_done():
            summary = live.read(store)
            return summary if summary and any(r["status"] == "done" for r in summary["systems"]) else None

        wait_for(one_done, "finished system in the live summary", writer)
        proc = cli("inspect", str(store))
        assert writer.poll() is None  # still writing: what was inspected was a running campaign
        assert proc.exit_code == 0, proc.output
        first = proc.output.splitlines()[0]
        assert "read from the live summary" in first and "campaign running" in first, first
        assert f"pid {writer.pid}" in first
        assert "demo-000-H-Pt-fcc111             done" in proc.output and "initial:1" in proc.output
        seen = json.loads(cli("inspect", "--json", str(store)).stdout)
        assert seen["source"] == "live summary"
        calls_seen = seen["totals"]["parent_calls"]
        assert calls_seen >= 2 and seen["totals"]["parent_calls_by_reason"]["initial"] >= 1

        # the writer carries on: more parent calls land in the store after the reader looked
        wait_for(lambda: sum(r["parent_calls"] for r in (live.read(store) or {"systems": []})["systems"]) > calls_seen,
                 "parent call after the inspection", writer)
    finally:
        writer.send_signal(signal.SIGINT)  # stop it (the store is closed, the summary says 'interrupted')
        _, err = writer.communicate(timeout=120)
    assert writer.returncode in (0, 130), err[-2000:]

    proc = cli("inspect", str(store))
    assert proc.exit_code == 0, proc.output
    assert proc.output.splitlines()[0] == f"store {store} (method online): read from the store {store}"
    with h5py.File(store, "r") as f:
        total = sum(int(g.attrs["parent_calls"]) for g in f["systems"].values())
    assert f"\n{total} parent calls (initial:" in proc.output
    assert live.read(store)["state"] in ("interrupted", "finished")
    assert sum(r["parent_calls"] for r in live.read(store)["systems"]) == total


def test_inspect_shows_errors_in_full_and_refuses_what_is_no_store(tmp_path):
    from finetuna_parsl.store import CampaignStore
    from finetuna_parsl.systems import demo_systems

    system = demo_systems(1)[0]
    with CampaignStore(tmp_path / "failed.h5") as s:
        s.add_system(system)
        s.set_status(system.system_id, "failed", error="parent call failed 3 times: VASP exited 137\n"
                     "--- vasp.out (last lines) ---\nkilled")
    proc = cli("inspect", str(tmp_path / "failed.h5"))
    assert proc.exit_code == 0, proc.output
    assert "VASP exited 137" in proc.output and "    killed" in proc.output and "1 failed" in proc.output
    missing = cli("inspect", str(tmp_path / "none.h5"))
    assert missing.exit_code == 2 and "no such store" in missing.output


def test_a_running_summary_from_another_host_counts_as_live_until_it_goes_stale(tmp_path):
    """A driver in a batch job on another node: its summary is trusted while it keeps being rewritten."""
    import datetime as dt

    live.publish(tmp_path / "s.h5", "online", live.RUNNING, [])
    payload = live.read(tmp_path / "s.h5")
    assert live.writer_alive(payload)  # this process, on this host
    payload["host"] = "another-node"
    assert live.writer_alive(payload)
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=live.STALE_S + 1)
    assert not live.writer_alive({**payload, "written": old.isoformat(timespec="seconds")})
    assert not live.writer_alive({**payload, "state": "finished"})
