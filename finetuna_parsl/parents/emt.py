"""EMT parent: instant, licence-free; the parent of the demo and of the tests."""

from __future__ import annotations

import time

import numpy as np
from ase.calculators.emt import EMT

from ..learner.state import SystemSpec
from .base import ParentResult, ParentSession


class EMTSession(ParentSession):
    """ASE's EMT calculator kept on one Atoms object for the whole relaxation."""

    kind = "emt"

    def start(self, system: SystemSpec) -> None:
        super().start(system)
        self._atoms = system.to_atoms()
        self._atoms.set_constraint()  # the parent reports raw forces; constraints are the optimizer's business
        self._atoms.calc = EMT()

    def calculate(self, positions: np.ndarray) -> ParentResult:
        positions = self._check_positions(positions)
        t0 = time.perf_counter()
        self._atoms.positions = positions
        energy = float(self._atoms.get_potential_energy())
        forces = np.array(self._atoms.get_forces(), dtype=float)
        return ParentResult(energy=energy, forces=forces, scf_cycles=0, wall_s=time.perf_counter() - t0)
