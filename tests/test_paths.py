"""Store folders with spaces or shell-special characters: refused in one line before anything is written where
Parsl would put the folder into a shell command (it does so unquoted: a space ran and overwrote the user's file at
the path before the space, and the run hung); they work where no command is run (in-process sites).

The real CLI in subprocesses with the laptop site (Parsl HighThroughputExecutors, LocalProvider).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from conftest import TESTS_DIR
from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.config import parse_config
from finetuna_parsl.systems import demo_systems

CONFIG = """
systems: {{source: demo, count: 1}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 3}}
campaign: {{output: '{output}', max_concurrent: 1}}
site: {site}
"""


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("folder", ["with space", "dollar$HOME", "semi;colon", "back`tick`", "paren(1)", "star*"])
def test_a_store_folder_parsl_cannot_quote_is_refused_in_one_line_and_nothing_is_written(tmp_path, folder):
    prefix = tmp_path / folder.split(" ")[0]  # what the unquoted command wrote over: the path before the space
    if " " in folder:
        prefix.write_text("the user's own file\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(CONFIG.format(output=tmp_path / folder / "s.h5", site="laptop"))
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli(tmp_path, "run", str(cfg))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(tmp_path / folder) in lines[0] and "Parsl" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder made, nothing overwritten
    if " " in folder:
        assert prefix.read_text() == "the user's own file\n"


def test_a_folder_with_a_space_works_where_no_command_is_run(tmp_path, toy_on_workers):
    """In-process executors (threads) start no shell: nothing to refuse."""
    output = tmp_path / "with space" / "é ü" / "s.h5"
    config = parse_config(CONFIG.format(output=output, site=TESTS_DIR / "threads_site.py"))
    path, result = run_campaign(config, demo_systems(1))
    assert path == output and result.rows[0]["parent_calls"] == 3
    with h5py.File(output, "r") as f:
        assert len(f["systems"]) == 1


def test_unicode_letters_are_not_refused(tmp_path):
    from finetuna_parsl.campaign.runner import shell_unsafe

    assert shell_unsafe(str(tmp_path / "café-ü_1.2" / "run+x,y=z@h:1")) is None
    assert "space" in shell_unsafe("/a/with space")
    assert "'$'" in shell_unsafe("/a/b$c")
    assert "newline" in shell_unsafe("/a/b\nc")
