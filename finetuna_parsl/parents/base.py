"""The parent-session interface: one live parent per relaxation, reused between calls."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import CalculatorError, CalculatorSetupError

from ..records import Evaluation, SystemSpec


class ParentError(CalculatorError):
    """A parent session failed; the message says which and why (first line: what happened).

    As such, a run-time failure (crashed, timed out, SCF not converged, connection lost): the campaign retries
    the call on a fresh session (campaign.parent_retries). Split as ASE splits its calculator errors
    (ase.calculators.calculator: CalculatorSetupError vs CalculationFailed).
    """


class ParentSetupError(ParentError, CalculatorSetupError):
    """The parent cannot run as set up (bad options, an executable or POTCAR that is not there, an engine that
    is not installed): retrying cannot help, so the campaign reports it at once instead of retrying."""


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
    def missing_program(cls, options: Mapping[str, Any]) -> str | None:
        """Why the program `options` name (VASP's command) cannot be run from here (one line: the program and
        the PATH searched), or None (found, or a parent that runs no program). Looked up where this is called:
        in the driver before any worker starts when the parent's workers run on its machine, and in the
        session's start() wherever it runs. Raises nothing."""
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
    def calculate(self, positions: np.ndarray) -> Evaluation:
        """The parent's answer at `positions` ((n, 3) Cartesian A, the system's atom order; n fixed by start()).

        Returns an Evaluation with source "parent": energy (eV), unconstrained forces ((n, 3) eV/A, FixAtoms
        is the optimizer's business), scf_cycles (the SCF iterations this call ran; 0 where the code has none)
        and wall_s (seconds of this call). Raises ParentSetupError when the parent cannot run at all as set up
        (retrying cannot help), ParentError for a run-time failure (a crash, a timeout, SCF not converged:
        a retry on a fresh session may succeed).
        """

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
