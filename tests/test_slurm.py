"""The local_slurm site against a real single-node Slurm started for this test (Debian slurm-wlm + munge)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter

import h5py
import pytest

from conftest import TESTS_DIR

SLURM_DIR = TESTS_DIR / "slurm"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running single-node Slurm; skipped with the reason where it cannot start."""
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd for the test needs root")
    state = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(["bash", str(SLURM_DIR / "start.sh"), str(state)], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        subprocess.run(["bash", str(SLURM_DIR / "stop.sh"), str(state)], timeout=60)
        logs = " | ".join(p.read_text()[-300:] for p in (state / "log").glob("*.log"))
        pytest.skip(f"Slurm could not start here: {proc.stderr.strip()[-300:]} {logs}")
    conf = proc.stdout.strip().splitlines()[-1].split("=", 1)[1]
    yield conf
    subprocess.run(["bash", str(SLURM_DIR / "stop.sh"), str(state)], timeout=60)


def test_campaign_runs_through_the_local_slurm_site(slurm, tmp_path):
    log = tmp_path / "calls.log"
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(
        f"systems: {{source: demo, count: 2}}\nparent: {{kind: emt, options: {{call_log: '{log}'}}}}\n"
        f"surrogate: {{factory: 'toy_surrogate:make'}}\nlearner: {{recipe: paper, k: 3}}\n"
        f"campaign: {{output: '{tmp_path / 's.h5'}', max_concurrent: 2}}\nsite: local_slurm\n"
    )
    env = {**os.environ, "SLURM_CONF": slurm,
           "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 systems, 2 parent-confirmed relaxed" in proc.stdout
    lines = [line.split() for line in log.read_text().splitlines()]
    jobs = {line[4] for line in lines}
    assert "-" not in jobs and len(jobs) == 1  # every parent call ran inside the parent block's Slurm job
    with h5py.File(tmp_path / "s.h5", "r") as f:
        stored = {sid: int(g.attrs["parent_calls"]) for sid, g in f["systems"].items()}
    assert Counter(line[0] for line in lines) == stored
