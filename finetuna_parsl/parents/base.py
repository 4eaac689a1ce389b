"""The parent-session interface: one live parent per relaxation, reused between calls."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..learner.state import SystemSpec


class ParentError(RuntimeError):
    """A parent session failed (crashed, timed out, refused the input); the message says which and why."""


@dataclass(frozen=True)
class ParentResult:
    """One parent answer: energy (eV), unconstrained forces (eV/A) and what it cost."""

    energy: float
    forces: np.ndarray
    scf_cycles: int = 0
    wall_s: float = 0.0


class ParentSession(abc.ABC):
    """A parent calculator bound to one system for its whole relaxation.

    start() binds it to the system (composition, cell, pbc fixed from then on); calculate() moves the
    atoms and returns the parent's answer, reusing whatever the parent keeps warm (wavefunctions).
    """

    kind: str = "abstract"

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> str | None:
        """Why `options` cannot be used for any system (one line), or None; checked once when the run starts.

        Per-element settings must be mappings by element, never lists that would apply by position.
        """
        return None

    @classmethod
    def unusable(cls, system: SystemSpec, options: Mapping[str, Any]) -> str | None:
        """Why this parent, set up with `options` (the run config's parent.options), cannot compute `system`.

        One line, or None when it can. Checked in the driver when the systems are loaded, before any worker
        starts, so it must be cheap and must not start the parent. Raises nothing.
        """
        return None

    def __init__(self, workdir: str | Path | None = None) -> None:
        self.workdir = Path(workdir) if workdir is not None else None
        self.system: SystemSpec | None = None

    def start(self, system: SystemSpec) -> None:
        self.system = system

    @abc.abstractmethod
    def calculate(self, positions: np.ndarray) -> ParentResult: ...

    def pause(self) -> None:
        """Stop using CPU between calls: the parent's processes are stopped, their state (wavefunctions) kept.

        Called by serve_session after an answer is sent when pausing is on (parent.pause_while_learning), never
        before the first call. The contract every session keeps: calling it again while paused does nothing;
        calculate() and close() on a paused session resume it first, so nobody else ever calls resume().
        No-op for in-process parents (EMT, GPAW: they use no CPU between calls). Raises ParentError when the
        parent cannot be stopped (VASP under srun: scancel refused); serve_session then stops pausing.
        """

    def resume(self) -> None:
        """Undo pause() (no-op when not paused); raises ParentError when the parent cannot be continued."""

    def close(self) -> None:
        self.system = None

    def _check_positions(self, positions: np.ndarray) -> np.ndarray:
        if self.system is None:
            raise ParentError(f"{self.kind} parent: calculate() before start()")
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (self.system.n_atoms, 3):
            raise ParentError(
                f"{self.kind} parent for {self.system.system_id}: expected positions of shape "
                f"({self.system.n_atoms}, 3), got {positions.shape} (a change of composition is not allowed)"
            )
        return positions


def cell_problem(system: SystemSpec, what: str) -> str | None:
    """Why `system`'s cell does not suit `what`, a plane-wave or grid code (one line), or None.

    Such codes treat the cell as the periodic box whatever the pbc flags say (a slab with pbc F along its
    vacuum is fine); a system without a cell (a gas-phase molecule as ase.build.molecule gives it) is not.
    """
    volume = float(np.linalg.det(np.asarray(system.cell, dtype=float)))
    if abs(volume) < 1e-6:
        pbc = np.asarray(system.pbc, dtype=bool).astype(int).tolist()
        return (f"no periodic cell (zero volume, pbc = {pbc}): {what} needs a box around the atoms, "
                "e.g. ase's atoms.center(vacuum=6)")
    return None
