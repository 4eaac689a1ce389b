"""A parent session's on-disk journal of answered calls, so no parent call is paid for twice.

If the driver dies while a call is in flight, the session still finishes it and journals the result;
the resumed relaxation re-proposes the same positions and gets the journaled answer instead of a
new (expensive) calculation. Entries are one .npz per call, written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..records import SOURCE_PARENT, Evaluation


def parent_fingerprint(kind: str, options: dict) -> str:
    """Short hash of the parent's settings: a journal is only reused by an identically set-up parent."""
    text = json.dumps({"kind": kind, "options": options}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


#: Entries: call-NNNNNN.npz. Written as a uniquely named temp file (never matched by the entries' pattern), flushed
#: and fsynced, then renamed: an entry is whole or absent, whatever kills the writer or fills the disk.
ENTRY_GLOB = "call-*.npz"
TEMP_GLOB = "*.part"
#: An unreadable or non-finite entry is renamed with this suffix (kept for a look, never read again).
DAMAGED_SUFFIX = ".damaged"


def non_finite(energy: float, forces: np.ndarray) -> str | None:
    """What is not finite in a parent's answer (one line naming NaN or inf, energy and/or forces), or None."""
    def name(value: float) -> str:
        return "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")

    found = []
    if not np.isfinite(energy):
        found.append(f"energy {name(energy)}")
    forces = np.asarray(forces, dtype=float)
    bad = ~np.isfinite(forces)
    if bad.any():
        kinds = sorted({name(float(v)) for v in forces[bad]})
        atoms = sorted({int(i) for i in np.argwhere(bad)[:, 0]})
        shown = ", ".join(str(i) for i in atoms[:8]) + (", ..." if len(atoms) > 8 else "")
        found.append(f"forces {'/'.join(kinds)} on {len(atoms)} atom(s) ({shown})")
    return " and ".join(found) or None


class CallJournal:
    """Answered calls of one relaxation's parent, matched by positions (within `tolerance` A).

    Reading never fails on what a crash or a full disk can leave behind: temp files (this version's *.part,
    an older version's call-*.tmp.npz) are deleted, an entry that cannot be read or holds a non-finite answer is
    renamed *.damaged with a warning (that call is simply made again). record() raises OSError (ENOSPC ...)
    with nothing left behind, and ValueError for a non-finite answer, which is never written.
    """

    def __init__(self, directory: str | Path, tolerance: float = 1e-8) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tolerance = tolerance
        self._entries: list[tuple[np.ndarray, Evaluation]] = []
        for leftover in [*self.directory.glob(TEMP_GLOB), *self.directory.glob("call-*.tmp.npz")]:
            leftover.unlink(missing_ok=True)  # a write that never finished: it answers nothing
        self._next = 0
        for path in sorted(self.directory.glob(ENTRY_GLOB)):
            self._next = max(self._next, _index(path) + 1)
            try:
                with np.load(path) as data:
                    entry = (data["positions"], Evaluation(
                        data["positions"], float(data["energy"]), data["forces"], SOURCE_PARENT,
                        scf_cycles=int(data["scf_cycles"]), wall_s=float(data["wall_s"])))
            except Exception as exc:  # noqa: BLE001 - any damage (EOFError, BadZipFile, KeyError ...) is the same
                self._set_aside(path, f"unreadable ({type(exc).__name__}: {exc})")
                continue
            problem = non_finite(entry[1].energy, entry[1].forces)
            if problem is not None:
                self._set_aside(path, f"its answer is not finite ({problem})")
                continue
            self._entries.append(entry)
        for path in self.directory.glob(f"call-*{DAMAGED_SUFFIX}"):
            self._next = max(self._next, _index(path) + 1)

    def _set_aside(self, path: Path, why: str) -> None:
        warnings.warn(f"parent call journal entry {path} is {why}: set aside as {path.name}{DAMAGED_SUFFIX}, "
                      "the call is made again if needed", stacklevel=3)
        os.replace(path, path.with_name(path.name + DAMAGED_SUFFIX))

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, positions: np.ndarray) -> Evaluation | None:
        """The journaled answer at these positions, newest first, or None."""
        positions = np.asarray(positions, dtype=float)
        for stored, result in reversed(self._entries):
            if stored.shape == positions.shape and np.abs(stored - positions).max() <= self.tolerance:
                return result
        return None

    def record(self, positions: np.ndarray, result: Evaluation) -> None:
        """Write one answer durably (temp file, flush, fsync, rename) before it is sent to the driver.

        ValueError (naming NaN/inf) for a non-finite answer, which is not written; OSError when the disk is full or
        the folder unwritable, after removing the temp file.
        """
        problem = non_finite(result.energy, result.forces)
        if problem is not None:
            raise ValueError(f"parent answer not journaled: {problem}")
        path = self.directory / f"call-{self._next:06d}.npz"
        tmp = self.directory / f".{path.stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, positions=np.asarray(positions, dtype=float), energy=result.energy,
                         forces=result.forces, scf_cycles=result.scf_cycles, wall_s=result.wall_s)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_folder(self.directory)
        self._next += 1
        self._entries.append((np.asarray(positions, dtype=float).copy(), result))


def _index(path: Path) -> int:
    try:
        return int(path.name.split("-", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return -1


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (quiet where the OS cannot open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
