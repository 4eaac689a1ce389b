"""A real campaign: Parsl HighThroughputExecutors on LocalProvider, EMT parent, a real HDF5 store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import TESTS_DIR
from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.config import parse_config
from finetuna_parsl.learner import free_fmax
from finetuna_parsl.systems import demo_systems

TOY_CONFIG = """
systems: {{source: demo, count: 3}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: laptop
"""


def test_three_system_campaign_through_parsl_reads_back_with_plain_h5py(tmp_path, toy_on_workers):
    output = tmp_path / "runs" / "three.h5"
    config = parse_config(TOY_CONFIG.format(output=output), where="three.yaml")
    systems = demo_systems(3)
    path, result = run_campaign(config, systems)
    assert path == output and output.exists()
    assert result.parent_calls_this_run == sum(r["parent_calls"] for r in result.rows)
    summary = {r["system_id"]: r for r in result.rows}
    assert set(summary) == {s.system_id for s in systems}

    with h5py.File(output, "r") as f:
        assert "k-steps" in f.attrs["run_config"]
        for system in systems:
            g = f["systems"][system.system_id]
            n = system.n_atoms
            steps = g["steps"]
            count = steps["energy"].shape[0]
            assert steps["positions"].shape == (count, n, 3)
            assert steps["forces"].shape == (count, n, 3)
            kind = steps["kind"][()]
            assert set(np.unique(kind)) == {0, 1}
            assert kind[0] == 1 and kind[-1] == 1  # starts and ends with a parent call
            reasons = steps["reason"].asstr()[()]  # why each parent call was made, the query rule's word
            parent_reasons = list(reasons[kind == 1])
            assert parent_reasons[0] == "initial" and len(parent_reasons) > 1
            assert set(parent_reasons[1:]) <= {"k-steps", "relaxed", "backoff", "stalled"}, parent_reasons
            assert set(reasons[kind == 0]) == {""}
            # the learner's fine-tuning time before each parent call: none before the first, some before the rest
            fine_tune = steps["fine_tune_s"][()]
            assert fine_tune[kind == 1][0] == 0 and (fine_tune[kind == 1][1:] > 0).all()
            assert (fine_tune[kind == 0] == 0).all()
            assert summary[system.system_id]["fine_tune_s"] == pytest.approx(fine_tune.sum())
            parent_rows = int((kind == 1).sum())
            row = summary[system.system_id]
            assert parent_rows == g.attrs["parent_calls"] == row["parent_calls"]
            assert int((kind == 0).sum()) == g.attrs["surrogate_steps"] == row["surrogate_steps"]
            assert g.attrs["status"] == "done" and g.attrs["outcome"] == "converged"
            last_parent = steps["forces"][np.flatnonzero(kind == 1)[-1]]
            assert free_fmax(last_parent, g["fixed"][()]) <= 0.03
            assert abs(g.attrs["final_energy"] - steps["energy"][np.flatnonzero(kind == 1)[-1]]) < 1e-12
            np.testing.assert_array_equal(g["numbers"][()], system.numbers)
            assert "weights" in g["head"]

    # running again resumes the store: every system is done, so no parent call is made
    _, again = run_campaign(config, systems)
    assert again.parent_calls_this_run == 0
    assert [r["parent_calls"] for r in again.rows] == [r["parent_calls"] for r in result.rows]


def test_cli_run_with_bfgs_comparison(tmp_path, toy_on_workers):
    cfg = tmp_path / "two.yaml"
    cfg.write_text(TOY_CONFIG.format(output=tmp_path / "two.h5").replace("count: 3", "count: 2"))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg), "--compare", "bfgs"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "2 systems, 2 parent-confirmed relaxed" in out
    table = out[out.index("method "):]
    online_row = [line for line in table.splitlines() if line.startswith("online")][0].split()
    online_calls, bfgs_calls, ratio = int(online_row[3]), int(online_row[4]), float(online_row[5])
    assert online_calls < bfgs_calls and abs(ratio - online_calls / bfgs_calls) < 1e-3
    same, lower, higher, anomalous, reference_anomalous = (int(cell) for cell in online_row[8:13])
    assert same + lower + higher == 2  # each system in the reference's minimum or another, lower or higher
    for who, n in (("online", anomalous), ("bfgs", reference_anomalous)):
        assert (f"{who}: anomalies on {n} of 2" in out) == (n > 0)
    assert "anomalies (OC20 flags of the last parent-confirmed structure)" in out
    assert "done=2" in proc.stderr  # the progress line
    with h5py.File(tmp_path / "two.bfgs.h5", "r") as f:
        assert sum(int(g.attrs["parent_calls"]) for g in f["systems"].values()) == bfgs_calls
        assert f.attrs["method"] == "bfgs"
        for g in f["systems"].values():  # a reference method's calls carry its name as their reason
            kind = g["steps/kind"][()]
            assert set(g["steps/reason"].asstr()[()][kind == 1]) == {"bfgs"}
    assert Path(tmp_path / "two.h5").exists()


def test_progress_counts_the_parent_calls_of_resumed_work(tmp_path, toy_on_workers):
    """A resumed run's progress line counts every stored parent call of its systems, not only this run's."""
    import dataclasses

    from finetuna_parsl.campaign.progress import ProgressLine

    output = tmp_path / "resumed.h5"
    text = TOY_CONFIG.format(output=output).replace("site: laptop", f"site: {TESTS_DIR / 'threads_site.py'}")
    config = parse_config(text.replace("k: 3}", "k: 3, fmax: 0.1}"))  # a loose fmax: a short test
    systems = demo_systems(2)
    _, first = run_campaign(config, systems[:1])
    before = first.rows[0]["parent_calls"]
    with h5py.File(output, "a") as f:  # as if the first run had been stopped right after its last parent call
        f["systems"][systems[0].system_id].attrs["status"] = "interrupted"
    seen = []
    _, second = run_campaign(config, systems, on_progress=lambda p: seen.append(dataclasses.replace(p)))
    total = sum(r["parent_calls"] for r in second.rows)
    assert seen[0].parent_calls == seen[0].resumed_parent_calls == before
    assert seen[-1].parent_calls == total and seen[-1].done == 2
    assert second.parent_calls_this_run == total - before
    line = ProgressLine("online").text(seen[-1])
    assert line.split(" parent_calls=")[1].startswith(f"{total} ({total - before} this run)")
