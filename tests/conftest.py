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
