"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent


@pytest.fixture
def toy_on_workers(monkeypatch):
    """Make tests/toy_surrogate.py importable by Parsl worker processes (they inherit the environment)."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{TESTS_DIR}{os.pathsep}{path}" if path else str(TESTS_DIR))
    return "toy_surrogate:make"


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (a run's folder appears in its Parsl worker pools' command lines)."""
    import psutil

    # process_iter with attrs leaves a process that vanished or is not ours to read as cmdline None
    return [p.pid for p in psutil.process_iter(["cmdline"]) if text in " ".join(p.info["cmdline"] or ())]


# --- The fast tier: `python -m pytest -m "not campaign"` (the pure layers, under 3 minutes on 2 cores) ---------------
# A test module that starts a campaign (Parsl executors, a `finetuna-parsl` subprocess, a parent program) is in
# CAMPAIGN_MODULES, which marks its tests `campaign`; the README's test command and CI run every test. A test outside
# these modules that starts Parsl fails, naming the marker, so a slow test cannot slip into the fast tier unseen.
CAMPAIGN_MODULES = frozenset({
    "test_anomaly_reports", "test_full_disk", "test_non_finite",
    "test_ase_parent", "test_bad_paths", "test_bench", "test_bridge", "test_campaign", "test_checkpoints",
    "test_cli_inputs", "test_dead_parsl", "test_gpaw", "test_inspect", "test_interrupt", "test_leftovers",
    "test_new_user", "test_parent_checks", "test_parent_failures", "test_paths", "test_reference",
    "test_reproducible", "test_resume", "test_resume_settings", "test_slurm", "test_species_settings",
    "test_standins", "test_store_damage", "test_store_lock", "test_surrogate", "test_timeouts", "test_vasp",
    "test_vasp_ml", "test_worker_warnings",
})


def pytest_configure(config):
    config.addinivalue_line("markers", "campaign: starts a campaign, Parsl or a parent program (left out of the "
                                       "fast tier: pytest -m 'not campaign')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in CAMPAIGN_MODULES:
            item.add_marker(pytest.mark.campaign)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_parsl(request, monkeypatch):
    """Outside CAMPAIGN_MODULES, starting Parsl is a mistake in the tiering: fail naming the fix."""
    if request.node.get_closest_marker("campaign") is not None:
        return
    import parsl

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts Parsl: add its module to CAMPAIGN_MODULES in "
                             "tests/conftest.py (the fast tier, pytest -m 'not campaign', leaves campaigns out)")

    monkeypatch.setattr(parsl, "load", refuse)


def paper(**overrides):
    """The FINETUNA paper's learner settings (learner/recipes.py `paper`: k=3, fine-tuning on the newest point, the
    surrogate relaxed at fmax) with `overrides`: what the learner's unit tests were written against, from when
    the code defaults were the paper's (they are the measured recipe now)."""
    from finetuna_parsl.learner.recipes import recipe

    return recipe("paper", **overrides)
