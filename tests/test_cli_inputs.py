"""Bad command-line inputs are one line before any work: empty systems files, --systems below 1.

And the console script works however it is invoked: by full path, without its environment's bin on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import h5py
import pytest

from conftest import TESTS_DIR

CONFIG = """
systems: {{source: "{source}", count: 2}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
"""


def cli(tmp_path: Path, *args: str, argv0: list[str] | None = None, env: dict | None = None, timeout: float = 60):
    base = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([*(argv0 or [sys.executable, "-m", "finetuna_parsl.cli"]), *args], cwd=tmp_path,
                          env=env or base, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", ["empty.traj", "empty.extxyz"])
def test_an_empty_systems_file_is_one_line_naming_it(tmp_path, name):
    source = tmp_path / name
    source.write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(source=source, output=tmp_path / "c.h5"))
    proc = cli(tmp_path, "run", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(source) in proc.stderr and "no structures" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("count", ["0", "-1"])
def test_systems_must_be_at_least_one(tmp_path, count):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(source="demo", output=tmp_path / "c.h5"))
    for command in ("run", "bench"):
        proc = cli(tmp_path, command, str(cfg), "--systems", count)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.count("\n") == 1 and "--systems" in proc.stderr and ">= 1" in proc.stderr, proc.stderr
    assert not (tmp_path / "c.h5").exists()


def test_the_console_script_runs_by_full_path_without_its_bin_on_path(tmp_path):
    """cron, batch scripts, pipx: the environment's bin (where Parsl's interchange.py is) is not on PATH."""
    script = Path(sysconfig.get_path("scripts")) / "finetuna-parsl"
    if not script.is_file():
        script = Path(shutil.which("finetuna-parsl") or "")
    if not script.is_file():
        pytest.skip("the finetuna-parsl console script is not installed (pip install -e .)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(source="demo", output=tmp_path / "c.h5").replace("count: 2", "count: 1"))
    env = {k: v for k, v in os.environ.items() if k not in ("PATH", "VIRTUAL_ENV")}
    env |= {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = cli(tmp_path, "run", str(cfg), argv0=[str(script)], env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 system, 1 parent-confirmed relaxed" in proc.stdout
    with h5py.File(tmp_path / "c.h5", "r") as f:
        assert f["systems"][list(f["systems"])[0]].attrs["status"] == "done"
