"""A damaged store (truncated by a full disk or a copy cut short, or with a broken object mid-file) is called
damaged, by name, in one line by every command; `--restart` replaces it and `salvage` copies what is readable.

Real HDF5 files damaged the way disks damage them (cut short, a block overwritten); the real CLI in subprocesses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import TESTS_DIR
from finetuna_parsl.config import parse_config
from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.store import CampaignStore, StoreError, check_not_held, load_summary, salvage
from finetuna_parsl.systems import demo_systems

CONFIG = """
systems: {{source: demo, count: 3}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 4}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: "{site}"
"""
SITE = TESTS_DIR / "threads_site.py"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A store of three relaxations with parent calls, as a run writes it (threads site: no worker processes)."""
    folder = tmp_path_factory.mktemp("finished")
    config = parse_config(CONFIG.format(output=folder / "good.h5", site=SITE), where="good.yaml")
    os.environ["PYTHONPATH"] = f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    path, result = run_campaign(config, demo_systems(3))
    assert all(r["parent_calls"] > 0 for r in result.rows)
    return path


def truncated(finished: Path, folder: Path) -> Path:
    path = folder / "cut.h5"
    shutil.copy(finished, path)
    os.truncate(path, os.path.getsize(path) // 2)
    return path


def broken_mid_file(finished: Path, folder: Path, system_index: int = 1) -> tuple[Path, str]:
    """A copy whose system `system_index` has its steps/kind object header overwritten (a bad block)."""
    path = folder / "broken.h5"
    shutil.copy(finished, path)
    with h5py.File(path, "r") as f:
        sid = list(f["systems"])[system_index]
        addr = h5py.h5o.get_info(f["systems"][sid]["steps/kind"].id).addr
    with open(path, "r+b") as handle:
        handle.seek(addr)
        handle.write(b"\0" * 64)
    return path, sid


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_truncated_store_is_damaged_not_held_by_another_process(finished, tmp_path):
    """h5py's 'truncated file: ... sblock->base_addr' matched the lock check's 'lock'."""
    path = truncated(finished, tmp_path)
    with pytest.raises(StoreError) as info:
        CampaignStore(path)
    message = str(info.value)
    assert "damaged" in message and str(path) in message and "truncated" in message
    assert "another process" not in message
    assert "salvage" in message and "--restart" in message
    check_not_held(path)  # --restart may replace it


def test_every_command_names_a_damaged_store_in_one_line(finished, tmp_path):
    cut = truncated(finished, tmp_path)
    broken, sid = broken_mid_file(finished, tmp_path)
    cfg = tmp_path / "run.yaml"
    for path in (cut, broken):
        cfg.write_text(CONFIG.format(output=path, site=SITE))
        for args in (("run", str(cfg)), ("inspect", str(path)), ("export", str(path), "--out", str(tmp_path / "x.extxyz"))):
            line = one_error_line(cli(tmp_path, *args))
            assert "damaged" in line and str(path) in line and "another process" not in line, (args, line)
            assert "salvage" in line, line
        assert not (tmp_path / "x.extxyz").exists()
    with pytest.raises(StoreError, match=f"damaged.*{sid}"):
        load_summary(broken)  # which system is broken, where it is known


def test_restart_replaces_a_truncated_store(finished, tmp_path):
    path = truncated(finished, tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=path, site=SITE))
    proc = cli(tmp_path, "run", str(cfg), "--restart", "--systems", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(load_summary(path)) == 1


def test_salvage_copies_every_readable_system_into_a_new_store_that_resumes(finished, tmp_path):
    broken, lost = broken_mid_file(finished, tmp_path)
    out = tmp_path / "saved.h5"
    proc = cli(tmp_path, "salvage", str(broken), "--out", str(out))
    assert proc.returncode == 1, proc.stderr  # something was lost: not a clean success
    assert "2 of 3 systems" in proc.stdout and lost in proc.stdout + proc.stderr
    good = {r["system_id"]: r for r in load_summary(finished)}
    saved = {r["system_id"]: r for r in load_summary(out)}
    assert set(saved) == set(good) - {lost}
    for sid, row in saved.items():
        assert row == good[sid]
        with h5py.File(finished, "r") as a, h5py.File(out, "r") as b:
            for name in a["systems"][sid]["steps"]:
                np.testing.assert_array_equal(a["systems"][sid]["steps"][name][()], b["systems"][sid]["steps"][name][()])
    with h5py.File(out, "r") as f:  # its runs are kept, plus a line saying it was salvaged
        assert len(f["runs"]) >= 1 and "salvaged" in f.attrs
    # a salvaged store is a store: the run resumes it and redoes only the lost system
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=out, site=SITE))
    rerun = cli(tmp_path, "run", str(cfg))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {r["system_id"] for r in load_summary(out)} == set(good)
    assert salvage(finished, tmp_path / "again.h5") == (list(good), [])  # an intact store loses nothing
    with pytest.raises(StoreError, match="exists"):
        salvage(finished, out)


def test_salvage_of_a_truncated_store_says_what_it_could_read(finished, tmp_path):
    path = truncated(finished, tmp_path)
    proc = cli(tmp_path, "salvage", str(path), "--out", str(tmp_path / "saved.h5"))
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stdout + proc.stderr
