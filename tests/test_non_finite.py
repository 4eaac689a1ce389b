"""A parent that answers NaN or inf: a run-time failure that names it, never journaled, never stored.

Real EMT on two atoms at one position (its energy is finite, its forces NaN), through the real bridge and a real
campaign (threads site: the parent session still runs the apps and the journal).
"""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from conftest import TESTS_DIR
from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.config import parse_config
from finetuna_parsl.parents import ParentError, make_parent
from finetuna_parsl.parents.bridge import ParentServer, serve_session
from finetuna_parsl.parents.journal import CallJournal
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.systems import demo_systems

CLASH = SystemSpec.from_atoms("clash", Atoms("Cu2", positions=[[1, 1, 1], [1, 1, 1]], cell=[6, 6, 6], pbc=True))


def test_a_nan_answer_ends_the_session_with_a_parent_error_naming_it_and_nothing_journaled(tmp_path):
    server = ParentServer(mode="unix", timeout_s=30)
    journal = CallJournal(tmp_path / "journal")
    out: dict = {}

    def run():
        try:
            serve_session(make_parent("emt"), CLASH, server.bridge_address, timeout_s=30, journal=journal)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server.session_alive = lambda: str(out["error"]) if "error" in out else None
    with pytest.raises(ParentError) as info:
        server.call(CLASH.positions, CLASH.cell)
    thread.join(timeout=10)
    server.stop()
    assert isinstance(out["error"], ParentError)
    for message in (str(info.value), str(out["error"])):
        assert "NaN" in message and "forces" in message and "AssertionError" not in message, message
    assert len(journal) == 0 and not list((tmp_path / "journal").iterdir())


def test_the_driver_refuses_a_non_finite_answer_whoever_sent_it(monkeypatch):
    """The driver's own check: a session that does not check (an older version's) cannot get inf stored."""
    import finetuna_parsl.parents.bridge as bridge
    from finetuna_parsl.parents.emt import EMTSession

    class InfEnergy(EMTSession):
        def calculate(self, positions):
            point = super().calculate(positions)
            return type(point)(point.positions, float("inf"), point.forces, point.source)

    monkeypatch.setattr(bridge, "_check_finite", lambda session, result: None)  # the session side lets it through
    server = ParentServer(mode="unix", timeout_s=30)
    target = demo_systems(1)[0]
    thread = threading.Thread(target=serve_session, args=(InfEnergy(), target, server.bridge_address), daemon=True)
    thread.start()
    with pytest.raises(ParentError, match=r"non-finite result: \+inf in its energy"):
        server.call(target.positions, target.cell)
    server.stop()
    thread.join(timeout=10)


CONFIG = """
systems: {{source: "{source}"}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 3}}
campaign: {{output: "{output}", max_concurrent: 1, parent_retries: 1}}
site: "{site}"
"""


def test_a_campaign_stores_no_nan_and_names_it_in_the_system_error(tmp_path, toy_on_workers):
    source = tmp_path / "clash.extxyz"
    write(source, [CLASH.to_atoms()])
    config = parse_config(CONFIG.format(source=source, output=tmp_path / "nan.h5", site=TESTS_DIR / "threads_site.py"))
    systems = [SystemSpec.from_atoms("clash", CLASH.to_atoms())]
    path, result = run_campaign(config, systems)
    (row,) = result.rows
    assert row["status"] == "failed"
    assert "NaN" in row["error"] and "forces" in row["error"], row["error"]
    assert "AssertionError" not in row["error"]
    assert row["error"].startswith("parent call failed 2 times")  # a run-time failure: retried once, as set
    with h5py.File(path, "r") as f:
        assert f["systems/clash/steps/energy"].shape[0] == 0
    journals = list((tmp_path / "nan-parent" / "clash").glob("journal-*"))
    assert journals and not [p for j in journals for p in j.glob("call-*")]
