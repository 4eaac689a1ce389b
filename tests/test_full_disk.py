"""A full disk stops the campaign cleanly: one line naming the filesystem, the store readable, resume continues.

Real small filesystems (tmpfs, tests/fault_fs.py; skipped where they cannot be mounted), filled by a real file the
way another job fills a shared disk; real HDF5; a real campaign (threads site) with the EMT parent.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

import finetuna_parsl.store.errors as store_errors  # where check_space reads the reserve
from fault_fs import small_filesystem
from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.config import parse_config
from finetuna_parsl.records import SOURCE_PARENT, Evaluation
from finetuna_parsl.store import CampaignStore, DiskFull, StoreError, load_summary
from finetuna_parsl.systems import demo_systems
from conftest import TESTS_DIR

MiB = 2**20


def fill(folder: Path, leave_bytes: int) -> Path:
    """Write a ballast file until only about `leave_bytes` are free on folder's filesystem."""
    ballast = folder / "ballast"
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    with open(ballast, "ab") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return ballast


def test_a_store_stops_before_its_filesystem_is_full_and_stays_readable(tmp_path, monkeypatch):
    monkeypatch.setattr(store_errors, "DISK_RESERVE_BYTES", 1 * MiB)
    system = demo_systems(1)[0]
    with small_filesystem(tmp_path / "disk", "8m") as disk:
        path = disk / "s.h5"
        store = CampaignStore(path, run_config="x: 1")
        store.add_system(system)
        fill(disk, 3 * MiB)
        written = 0
        with pytest.raises(DiskFull) as info:
            for i in range(100000):
                point = Evaluation(system.positions + i * 1e-3, -float(i), np.full((system.n_atoms, 3), 0.1),
                                   SOURCE_PARENT, reason="k-steps")
                store.append_steps(system.system_id, [point] * 50)
                written += 50
        store.close()
        message = str(info.value)
        assert isinstance(info.value, StoreError) and "\n" not in message
        assert str(disk) in message and "full" in message and "resume" in message, message
        with h5py.File(path, "r") as f:  # readable, and every row written before the stop is there
            energy = f[f"systems/{system.system_id}/steps/energy"][()]
        assert len(energy) == written and written > 0
        assert load_summary(path)[0]["parent_calls"] == written


CONFIG = """
systems: {{source: demo, count: 2}}
parent: {{kind: emt, options: {{call_log: "{log}"}}}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, max_parent_calls: 8}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: "{site}"
"""


def test_a_campaign_on_a_disk_that_fills_stops_cleanly_and_resumes_with_nothing_lost(tmp_path, monkeypatch,
                                                                                      toy_on_workers):
    monkeypatch.setattr(store_errors, "DISK_RESERVE_BYTES", 1 * MiB)
    log = tmp_path / "calls.log"  # on another filesystem: every parent calculation, paid or not
    with small_filesystem(tmp_path / "disk", "16m") as disk:
        config = parse_config(CONFIG.format(log=log, output=disk / "s.h5", site=TESTS_DIR / "threads_site.py"))
        ballast = []

        def fill_after_three_calls(progress):
            if progress.parent_calls >= 3 and not ballast:
                ballast.append(fill(disk, MiB // 2))

        with pytest.raises(DiskFull) as info:
            run_campaign(config, demo_systems(2), on_progress=fill_after_three_calls)
        assert str(disk) in str(info.value)
        stopped = load_summary(disk / "s.h5")  # readable as it is, still on the full disk
        assert sum(r["parent_calls"] for r in stopped) >= 3
        ballast[0].unlink()  # space freed: the same run resumes
        _, result = run_campaign(config, demo_systems(2))
        assert [r["status"] for r in result.rows] == ["done", "done"]
        stored = sum(r["parent_calls"] for r in result.rows)
    paid = len(log.read_text().splitlines())
    assert paid == stored  # no parent call lost, none paid twice


def test_a_journal_on_a_full_disk_costs_a_warning_not_the_answer(tmp_path):
    """The answer is paid for: it goes to the driver (which stores it) even when it cannot be journaled."""
    import threading

    from finetuna_parsl.parents import make_parent
    from finetuna_parsl.parents.bridge import ParentServer, serve_session
    from finetuna_parsl.parents.journal import CallJournal

    system = demo_systems(1)[0]
    with small_filesystem(tmp_path / "disk", "64k") as disk:
        journal = CallJournal(disk / "journal")
        fill(disk, 0)
        server = ParentServer(mode="unix", timeout_s=30)
        thread = threading.Thread(target=serve_session, daemon=True,
                                  args=(make_parent("emt"), system, server.bridge_address, 30, journal))
        thread.start()
        point = server.call(system.positions, system.cell)
        warnings = server.take_warnings()
        server.stop()
        thread.join(timeout=10)
        assert np.isfinite(point.energy)
        assert len(journal) == 0 and not [p for p in (disk / "journal").iterdir()]
    assert any("not journaled" in w and "No space left on device" in w for w in warnings), warnings
