"""Run configs: the shipped ones parse; every mistake is one line naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from finetuna_parsl.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_demo_config_parses():
    config = load_config(REPO / "configs" / "demo.yaml")
    assert config.site == "laptop"
    assert config.parent.kind == "emt"
    assert config.learner.query == "k-steps" and config.learner.fmax == 0.03
    assert config.surrogate.checkpoint == "shipped" and config.surrogate.epochs == 400
    assert "learner:" in config.text



def test_shipped_vasp_example_config_parses_and_builds_a_vasp_session(tmp_path):
    from finetuna_parsl.parents import make_parent
    from finetuna_parsl.parents.vasp import VaspInteractiveSession
    from finetuna_parsl.parents.vasp_io import interactive_incar

    config = load_config(REPO / "configs" / "vasp-example.yaml")
    assert config.site == "perlmutter" and config.parent.kind == "vasp" and config.parent.bridge == "tcp"
    options = config.parent.options
    assert options["command"] == "srun -n 64 --cpu-bind=cores vasp_std"
    assert options["incar"]["ENCUT"] == 350 and options["incar"]["GGA"] == "RP" and options["kpoints"] == [4, 4, 1]
    assert interactive_incar(options["incar"])[1] == []  # the example asks for nothing the session must override
    session = make_parent("vasp", workdir=tmp_path, **options)  # every option name is one the session knows
    assert isinstance(session, VaspInteractiveSession) and session.step_timeout_s < config.parent.timeout_s

@pytest.mark.parametrize(
    "text, expected",
    [
        ("learner: {k: five}", "cfg.yaml: learner.k: expected an integer, got str 'five'"),
        ("learner: {kk: 3}", "cfg.yaml: learner.kk: unknown key"),
        ("lerner: {k: 3}", "cfg.yaml: lerner: unknown key"),
        ("learner: {query: sometimes}", "cfg.yaml: learner.query: must be one of relaxed-only, k-steps, uncertainty"),
        ("learner: {fmax: -0.1}", "cfg.yaml: learner.fmax: must be > 0"),
        ("learner: {fmax: true}", "cfg.yaml: learner.fmax: expected a number, got bool"),
        ("learner: {backoff: 3}", "cfg.yaml: learner.backoff: expected true or false, got int 3"),
        ("learner: {residual_points: -1}", "cfg.yaml: learner.residual_points: must be >= 0, got -1"),
        ("learner: {residual_scale: 0}", "cfg.yaml: learner.residual_scale: must be > 0"),
        ("campaign: {max_concurrent: 0}", "cfg.yaml: campaign.max_concurrent: must be > 0"),
        ("systems: {source: /no/such/file.db}", "cfg.yaml: systems.source: no such file or folder: /no/such/file.db"),
        ("surrogate: {checkpoint: /no/model.pt}", "cfg.yaml: surrogate.checkpoint: /no/model.pt: no such file"),
        ("parent: {kind: castep}", "cfg.yaml: parent.kind: unknown parent 'castep'"),
        ("site: 3", "cfg.yaml: site: expected a string"),
        ("learner: [1, 2]", "cfg.yaml: learner: expected a mapping"),
        ("learner: {recipe: paper, k: 3", "cfg.yaml: not valid YAML"),
        ("parent: {pause_while_learning: sometimes}",
         "cfg.yaml: parent.pause_while_learning: must be one of auto, true, false, got 'sometimes'"),
        ("parent: {pause_while_learning: 1}",
         "cfg.yaml: parent.pause_while_learning: expected auto, true or false, got int 1"),
    ],
)
def test_bad_configs_give_one_clear_line(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, where="cfg.yaml")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_missing_config_file():
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config("nope.yaml")


def test_cli_rejects_a_bad_config_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner:\n  k: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "finetuna_parsl.cli", "run", str(bad)], capture_output=True, text=True, cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: learner.k: must be > 0, got 0"
    assert not (tmp_path / "runs").exists()


def test_own_structures_without_a_count_are_all_taken(tmp_path):
    """systems.count left out: every structure of the user's file (it used to stop at 20 without a word)."""
    from ase.build import fcc111
    from ase.io import write

    from finetuna_parsl.systems import load_systems

    frames = [fcc111("Cu", (2, 2, 2), vacuum=5.0) for _ in range(23)]
    write(tmp_path / "mine.extxyz", frames)
    config = parse_config(f"systems: {{source: {tmp_path / 'mine.extxyz'}}}\nsurrogate: {{factory: 'x:y'}}\n")
    assert config.systems.count is None
    systems, skipped = load_systems(config.systems.source, config.systems.count)
    assert len(systems) == 23 and not skipped
    assert len(load_systems("demo", config.systems.count)[0]) == 20  # the demo set keeps its 20


def test_a_relative_checkpoint_is_made_absolute_once_when_the_config_is_read(tmp_path, monkeypatch):
    """Workers may start in another folder (or on another node): they get the path the driver resolved."""
    import shutil

    from finetuna_parsl.surrogate import SHIPPED

    (tmp_path / "models").mkdir()
    shutil.copy(SHIPPED, tmp_path / "models" / "mine.pt")
    monkeypatch.chdir(tmp_path)
    config = parse_config("surrogate: {checkpoint: models/mine.pt}\n", where="cfg.yaml")
    assert config.surrogate.checkpoint == str(tmp_path / "models" / "mine.pt")
    assert "checkpoint: models/mine.pt" in config.text  # the store keeps what the user wrote
    assert parse_config("surrogate: {checkpoint: shipped}\n").surrogate.checkpoint == "shipped"


@pytest.mark.parametrize(
    "value, expected",
    [(None, "auto"), ("auto", "auto"), ("true", "true"), ("false", "false"), ("yes", "true"), ("off", "false"),
     ("True", "true"), ('"false"', "false")],
)
def test_pause_while_learning_takes_auto_or_a_yaml_boolean(value, expected):
    """YAML's booleans (true/false, yes/no, on/off) and the strings auto/true/false; stored as auto|true|false."""
    text = "surrogate: {factory: 'x:y'}\n" + ("" if value is None else f"parent: {{pause_while_learning: {value}}}\n")
    assert parse_config(text).parent.pause_while_learning == expected
