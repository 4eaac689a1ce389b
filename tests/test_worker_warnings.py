"""Warnings a parent raises on a worker about a system reach the command line once per kind and the store.

The real CLI, real Parsl (the warning is raised in a parent session on a worker), fake VASP, a real HDF5 store.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py

from conftest import TESTS_DIR

CONFIG = """
systems: {{source: demo, count: 2}}
parent:
  kind: vasp
  timeout_s: 60
  options:
    command: ["{python}", "{fake}"]
    incar: {{ENCUT: 350, IBRION: 2, NSW: 5}}
    step_timeout_s: 60
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
"""


def test_a_worker_warning_is_shown_once_and_stored_on_each_system(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text(CONFIG.format(python=sys.executable, fake=TESTS_DIR / "fake_vasp.py", output=tmp_path / "w.h5"))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = [line for line in proc.stderr.splitlines() if "overridden for interactive mode" in line]
    assert len(shown) == 1, proc.stderr[-3000:]  # once per kind, not once per system
    assert shown[0].startswith("warning:") and "IBRION, NSW" in shown[0]
    with h5py.File(tmp_path / "w.h5", "r") as f:
        assert len(f["systems"]) == 2
        for sid, g in f["systems"].items():
            stored = [str(w) for w in g.attrs["warnings"]]
            assert len(stored) == 1 and f"vasp parent for {sid}: INCAR IBRION, NSW overridden" in stored[0]
