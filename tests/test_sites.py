"""Site files build valid Parsl configs (checked without submitting anything)."""

from __future__ import annotations

from pathlib import Path

import pytest
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

from finetuna_parsl.campaign.site import SiteError, known_sites, load_site

EXPECTED_PROVIDER = {
    "laptop": LocalProvider, "local_slurm": SlurmProvider, "perlmutter": SlurmProvider, "polaris": PBSProProvider,
    "slurm_cluster": SlurmProvider,
}


def test_shipped_sites():
    assert set(known_sites()) == set(EXPECTED_PROVIDER)


@pytest.mark.parametrize("name", sorted(EXPECTED_PROVIDER))
def test_site_builds_a_config_with_parent_and_learn_executors(name, tmp_path):
    config = load_site(name, run_dir=str(tmp_path / "runinfo"), parent_slots=16)
    assert isinstance(config, Config) and config.run_dir == str(tmp_path / "runinfo")
    executors = {e.label: e for e in config.executors}
    assert set(executors) == {"parent", "learn"}
    for executor in executors.values():
        assert isinstance(executor, HighThroughputExecutor)
        assert isinstance(executor.provider, EXPECTED_PROVIDER[name])
        assert executor.provider.max_blocks >= 1
        assert executor.provider.init_blocks <= executor.provider.max_blocks
    if name in ("perlmutter", "polaris"):  # GPU learn workers are pinned one accelerator each
        assert len(executors["learn"].available_accelerators) >= 4
        assert executors["parent"].drain_period is not None  # a block at walltime drains, not fails tasks
    if name == "laptop":
        assert executors["parent"].max_workers_per_node == 16


def test_slurm_cluster_site_takes_every_cluster_value_from_the_environment(tmp_path, monkeypatch):
    """The values configs/slurm-driver.sbatch exports are the ones the worker jobs get."""
    script = (Path(__file__).resolve().parents[1] / "configs" / "slurm-driver.sbatch").read_text()
    exported = dict(line.split("#")[0].strip().removeprefix("export ").split("=", 1)
                    for line in script.splitlines() if line.startswith("export FINETUNA_"))
    for name, value in exported.items():
        monkeypatch.setenv(name, value.strip('"'))
    monkeypatch.setenv("FINETUNA_DRIVER_ADDRESS", "10.0.0.7")
    config = load_site("slurm_cluster", run_dir=str(tmp_path), parent_slots=8)
    parent, learn = (e for e in config.executors)
    assert parent.address == learn.address == "10.0.0.7" and parent.max_workers_per_node == 8
    assert parent.provider.account == "m1234" and parent.provider.partition == "regular"
    assert parent.provider.nodes_per_block == 8 and parent.provider.walltime == "06:00:00"
    assert "#SBATCH --constraint=cpu" in parent.provider.scheduler_options
    assert "module load vasp/6.4" in parent.provider.worker_init
    assert learn.provider.partition == "gpu" and learn.provider.gpus_per_node == 4
    assert len(learn.available_accelerators) == 4


def test_user_site_file_by_path(tmp_path):
    site = tmp_path / "mine.py"
    site.write_text(
        "from parsl.config import Config\n"
        "from parsl.executors import ThreadPoolExecutor\n"
        "def make_config(run_dir, parent_slots):\n"
        "    return Config(executors=[ThreadPoolExecutor(label='parent', max_threads=parent_slots),\n"
        "                             ThreadPoolExecutor(label='learn', max_threads=1)], run_dir=run_dir)\n"
    )
    config = load_site(str(site), run_dir=str(tmp_path), parent_slots=3)
    assert [e.label for e in config.executors] == ["parent", "learn"]


def test_bad_sites_are_named(tmp_path):
    with pytest.raises(SiteError, match="unknown site 'moon'.*laptop"):
        load_site("moon", run_dir=str(tmp_path), parent_slots=1)
    wrong = tmp_path / "wrong.py"
    wrong.write_text(
        "from parsl.config import Config\nfrom parsl.executors import ThreadPoolExecutor\n"
        "def make_config(run_dir, parent_slots):\n    return Config(executors=[ThreadPoolExecutor(label='x')])\n"
    )
    with pytest.raises(SiteError, match="labelled 'parent' and 'learn'"):
        load_site(str(wrong), run_dir=str(tmp_path), parent_slots=1)


# --- parent.pause_while_learning: auto resolved against the site (campaign/pausing.py) ----------------------

SHARES_PARENT_NODE = {
    "laptop": True, "local_slurm": True, "perlmutter": False, "polaris": False, "slurm_cluster": False,
}

USER_SITE = """
from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider, SlurmProvider
{declaration}
def make_config(run_dir, parent_slots):
    return Config(executors=[{parent}, {learn}], run_dir=run_dir)
"""
THREADS = "ThreadPoolExecutor(label='{label}')"
LOCAL = "HighThroughputExecutor(label='{label}', provider=LocalProvider())"
SLURM = "HighThroughputExecutor(label='{label}', provider=SlurmProvider())"


def user_site(tmp_path, parent: str, learn: str, declaration: str = "") -> str:
    path = tmp_path / "mine.py"
    path.write_text(USER_SITE.format(declaration=declaration, parent=parent.format(label="parent"),
                                     learn=learn.format(label="learn")))
    return str(path)


def test_every_shipped_site_declares_whether_learn_shares_the_parent_node(tmp_path):
    from finetuna_parsl.campaign.pausing import pause_while_learning
    from finetuna_parsl.campaign.site import import_site

    assert set(SHARES_PARENT_NODE) == set(known_sites())
    for name, shares in SHARES_PARENT_NODE.items():
        assert import_site(name).LEARN_SHARES_PARENT_NODE is shares, name  # declared, not inferred
        config = load_site(name, run_dir=str(tmp_path), parent_slots=4)
        assert pause_while_learning("auto", name, config) is shares, name
        assert pause_while_learning("true", name, config) is True  # an explicit setting wins over the site
        assert pause_while_learning("false", name, config) is False


@pytest.mark.parametrize(
    "parent, learn, declaration, expected",
    [
        (THREADS, THREADS, "", True),  # both in the driver's process: one machine
        (LOCAL, LOCAL, "", True),  # both LocalProvider: the driver's machine
        (LOCAL, SLURM, "", False),  # the learn workers in a batch job: other nodes, as far as we can tell
        (SLURM, SLURM, "", False),  # two batch jobs: unknown, so the safe choice (never signal VASP)
        (SLURM, SLURM, "LEARN_SHARES_PARENT_NODE = True", True),  # the site's word wins
        (LOCAL, LOCAL, "LEARN_SHARES_PARENT_NODE = False", False),
    ],
    ids=["threads", "local", "local+slurm", "slurm", "slurm-declared-true", "local-declared-false"],
)
def test_auto_on_a_user_site_follows_its_declaration_else_where_its_executors_run(
    tmp_path, parent, learn, declaration, expected
):
    from finetuna_parsl.campaign.pausing import pause_while_learning

    site = user_site(tmp_path, parent, learn, declaration)
    assert pause_while_learning("auto", site, load_site(site, run_dir=str(tmp_path), parent_slots=2)) is expected


def test_a_bad_declaration_or_setting_is_named(tmp_path):
    from finetuna_parsl.campaign.pausing import pause_while_learning

    site = user_site(tmp_path, THREADS, THREADS, "LEARN_SHARES_PARENT_NODE = 'yes'")
    config = load_site(site, run_dir=str(tmp_path), parent_slots=2)
    with pytest.raises(SiteError, match="mine.py: LEARN_SHARES_PARENT_NODE must be True or False, got str 'yes'"):
        pause_while_learning("auto", site, config)
    with pytest.raises(ValueError, match="parent.pause_while_learning must be one of auto, true, false, got 'maybe'"):
        pause_while_learning("maybe", "laptop", config)
