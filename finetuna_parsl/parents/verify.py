"""Does a warm parent session give the answer a cold one gives? (`finetuna-parsl verify-parent`)

A warm session reuses state between calls (wavefunctions, a running code, a model in memory); that is only safe
when its answer at given positions equals a fresh calculation's. Measured when this was written: Quantum ESPRESSO
6.7 kept alive through ASE's socket mode returned energies about 1 eV off after a 0.02 A move, while CP2K's
cp2k_shell and GPAW agreed with a cold run to 1e-9 and 5e-6 eV (benchmarks/parents.md). The check: one session
answers at the start positions and then at positions moved by `displacement`; a second, new session answers at
the moved positions only; the two answers at the moved positions are compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..records import SystemSpec
from .base import ParentSession

#: Default agreement a warm answer must reach (eV, eV/A): looser than any converged SCF's noise (VASP's EDIFF
#: 1e-4 eV in OC20's INCAR; GPAW agreed to 5e-6 eV), far tighter than the 0.02 eV accuracy the benchmark counts.
ENERGY_TOL = 1e-3
FORCE_TOL = 0.01


@dataclass(frozen=True)
class WarmColdCheck:
    """Answers of a warm session (its second call) and a cold one at the same positions.

    energies in eV, force difference the largest per-component |warm - cold| in eV/A, SCF cycles as the parent
    reports them (0 where it has none); ok when both differences are within the tolerances.
    """

    system_id: str
    displacement: float
    warm_energy: float
    cold_energy: float
    max_force_diff: float
    warm_first_scf: int
    warm_scf: int
    cold_scf: int
    energy_tol: float
    force_tol: float

    @property
    def energy_diff(self) -> float:
        return abs(self.warm_energy - self.cold_energy)

    @property
    def ok(self) -> bool:
        return self.energy_diff <= self.energy_tol and self.max_force_diff <= self.force_tol

    def line(self) -> str:
        """One line for a terminal or a table."""
        verdict = "agree" if self.ok else "DIFFER"
        return (f"{self.system_id}: warm and cold {verdict} after a {self.displacement:g} A move: |dE| "
                f"{self.energy_diff:.2e} eV (tolerance {self.energy_tol:g}), max |dF| {self.max_force_diff:.2e} eV/A "
                f"(tolerance {self.force_tol:g}); SCF cycles: warm {self.warm_scf} (first call {self.warm_first_scf}), "
                f"cold {self.cold_scf}")


def moved_positions(system: SystemSpec, displacement: float, seed: int = 0) -> np.ndarray:
    """(n, 3) A: the start positions with every free atom moved `displacement` A in a random direction."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(system.n_atoms, 3))
    steps *= displacement / np.linalg.norm(steps, axis=1, keepdims=True)
    steps[np.asarray(system.fixed, dtype=bool)] = 0.0
    return np.asarray(system.positions, dtype=float) + steps


def warm_vs_cold(make_session: Callable[[str], ParentSession], system: SystemSpec, displacement: float = 0.02,
                 seed: int = 0, energy_tol: float = ENERGY_TOL, force_tol: float = FORCE_TOL) -> WarmColdCheck:
    """Compare a warm session's second answer with a new session's first at the same positions.

    make_session(label) returns a new, unstarted session ("warm" or "cold", e.g. for its working folder). Raises
    what the sessions raise (ParentSetupError, ParentError); closes both sessions either way.
    """
    moved = moved_positions(system, displacement, seed)
    warm = make_session("warm")
    warm.start(system)
    try:
        first = warm.calculate(np.asarray(system.positions, dtype=float))
        warm_answer = warm.calculate(moved)
    finally:
        warm.close()
    cold = make_session("cold")
    cold.start(system)
    try:
        cold_answer = cold.calculate(moved)
    finally:
        cold.close()
    return WarmColdCheck(
        system_id=system.system_id, displacement=displacement, warm_energy=warm_answer.energy,
        cold_energy=cold_answer.energy,
        max_force_diff=float(np.abs(np.asarray(warm_answer.forces) - np.asarray(cold_answer.forces)).max()),
        warm_first_scf=first.scf_cycles, warm_scf=warm_answer.scf_cycles, cold_scf=cold_answer.scf_cycles,
        energy_tol=energy_tol, force_tol=force_tol)
