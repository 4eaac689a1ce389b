"""A parent session's on-disk journal of answered calls, so no parent call is paid for twice.

If the driver dies while a call is in flight, the session still finishes it and journals the result;
the resumed relaxation re-proposes the same positions and gets the journaled answer instead of a
new (expensive) calculation. Entries are one .npz per call, written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..records import SOURCE_PARENT, Evaluation


def parent_fingerprint(kind: str, options: dict) -> str:
    """Short hash of the parent's settings: a journal is only reused by an identically set-up parent."""
    text = json.dumps({"kind": kind, "options": options}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class CallJournal:
    """Answered calls of one relaxation's parent, matched by positions (within `tolerance` A)."""

    def __init__(self, directory: str | Path, tolerance: float = 1e-8) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tolerance = tolerance
        self._entries: list[tuple[np.ndarray, Evaluation]] = []
        for path in sorted(self.directory.glob("call-*.npz")):
            with np.load(path) as data:
                self._entries.append((data["positions"], Evaluation(
                    data["positions"], float(data["energy"]), data["forces"], SOURCE_PARENT,
                    scf_cycles=int(data["scf_cycles"]), wall_s=float(data["wall_s"]))))

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
        """Write one answer durably before it is sent to the driver."""
        path = self.directory / f"call-{len(self._entries):06d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, positions=np.asarray(positions, dtype=float), energy=result.energy, forces=result.forces,
                 scf_cycles=result.scf_cycles, wall_s=result.wall_s)
        os.replace(tmp, path)
        self._entries.append((np.asarray(positions, dtype=float).copy(), result))
