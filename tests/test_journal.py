"""The parent call journal: atomic entries, temp and damaged files never read as answers, full disks survived.

Real files on disk; a real full filesystem (a small tmpfs, tests/fault_fs.py) where this machine allows one.
"""

from __future__ import annotations

import numpy as np
import pytest

from fault_fs import small_filesystem
from finetuna_parsl.parents.journal import CallJournal
from finetuna_parsl.records import SOURCE_PARENT, Evaluation

POSITIONS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.5]])


def answer(energy: float = -1.25, positions: np.ndarray = POSITIONS) -> Evaluation:
    return Evaluation(positions, energy, np.full(positions.shape, 0.1), SOURCE_PARENT, scf_cycles=3, wall_s=0.5)


def test_an_answer_recorded_is_read_back_by_the_next_session(tmp_path):
    CallJournal(tmp_path).record(POSITIONS, answer())
    again = CallJournal(tmp_path)
    assert len(again) == 1
    hit = again.lookup(POSITIONS)
    assert hit.energy == -1.25 and hit.scf_cycles == 3
    assert again.lookup(POSITIONS + 0.1) is None


def test_a_temp_file_left_by_a_kill_or_a_full_disk_is_never_read_as_an_answer(tmp_path):
    """A 0-byte call-*.tmp.npz (killed mid-write, or ENOSPC) used to be loaded: EOFError in every later session."""
    CallJournal(tmp_path).record(POSITIONS, answer())
    (tmp_path / "call-000001.tmp.npz").write_bytes(b"")
    (tmp_path / "call-000002.tmp.npz").write_bytes(b"PK\x03\x04 half a zip")
    journal = CallJournal(tmp_path)
    assert len(journal) == 1
    assert not list(tmp_path.glob("*.tmp*"))  # cleaned up: they hold nothing
    journal.record(POSITIONS + 1, answer(-2.0, POSITIONS + 1))  # and the next entry does not collide with them
    assert len(CallJournal(tmp_path)) == 2


def test_a_damaged_entry_is_set_aside_and_the_call_is_simply_made_again(tmp_path):
    CallJournal(tmp_path).record(POSITIONS, answer())
    (tmp_path / "call-000001.npz").write_bytes(b"")  # a crash of an older version between write and rename
    with pytest.warns(UserWarning, match="call-000001.npz.*unreadable"):
        journal = CallJournal(tmp_path)
    assert len(journal) == 1
    assert (tmp_path / "call-000001.npz.damaged").exists()  # kept for a look, never read again
    assert not (tmp_path / "call-000001.npz").exists()
    journal.record(POSITIONS + 1, answer(-2.0, POSITIONS + 1))
    assert len(CallJournal(tmp_path)) == 2


def test_a_non_finite_answer_is_never_journaled_nor_replayed(tmp_path):
    """An answer with NaN would be replayed by every retry and rerun."""
    journal = CallJournal(tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        journal.record(POSITIONS, answer(float("nan")))
    bad_forces = Evaluation(POSITIONS, -1.0, np.array([[0, 0, np.inf], [0, 0, 0.0]]), SOURCE_PARENT)
    with pytest.raises(ValueError, match="inf"):
        journal.record(POSITIONS, bad_forces)
    assert len(journal) == 0 and not list(tmp_path.iterdir())
    # one written by an older version is not served either
    np.savez(tmp_path / "call-000000.npz", positions=POSITIONS, energy=np.nan, forces=np.zeros((2, 3)),
             scf_cycles=1, wall_s=1.0)
    with pytest.warns(UserWarning, match="not finite"):
        assert CallJournal(tmp_path).lookup(POSITIONS) is None


def test_a_full_disk_during_a_journal_write_leaves_no_temp_file_and_the_journal_readable(tmp_path):
    with small_filesystem(tmp_path / "small", "64k") as disk:
        journal = CallJournal(disk / "journal")
        journal.record(POSITIONS, answer())
        big = np.zeros((600, 3))  # 29 kB a call: a second one does not fit in 64 kB
        journal.record(big, answer(-3.0, big))
        with pytest.raises(OSError) as info:
            journal.record(big + 1, answer(-4.0, big + 1))
        assert info.value.errno == 28  # ENOSPC, as the OS gave it
        assert not list((disk / "journal").glob("*.part")) and not list((disk / "journal").glob("*.tmp*"))
        assert len(CallJournal(disk / "journal")) == 2  # what was written before is all there
