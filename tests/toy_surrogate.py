"""An imperfect, fine-tunable surrogate for tests that must not depend on the fairchem model.

Prior: EMT plus a smooth, position-dependent error (a cosine potential on every coordinate: forces
off by up to AMPLITUDE eV/A, curvature off by up to AMPLITUDE * WAVENUMBER eV/A^2).
Head: a force/energy correction equal to (parent - prior) at the newest training point (a Delta head),
with an ensemble spread that grows with distance from that point (for the uncertainty rule).
"""

from __future__ import annotations

import pickle

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

AMPLITUDE = 0.05
WAVENUMBER = 1.0
PHASE = np.array([0.3, 1.9, 4.1])


def prior(atoms: Atoms) -> tuple[float, np.ndarray]:
    exact = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    exact.calc = EMT()
    arg = WAVENUMBER * atoms.positions + PHASE
    energy = float(exact.get_potential_energy()) + float((AMPLITUDE / WAVENUMBER * np.cos(arg)).sum())
    return energy, exact.get_forces() + AMPLITUDE * np.sin(arg)


class ToyCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, head: dict) -> None:
        super().__init__()
        self.head = head

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces = prior(self.atoms)
        uncertainty = 0.5
        if self.head.get("positions") is not None:
            forces = forces + self.head["dforces"]
            energy = energy + self.head["denergy"]
            distance = float(np.abs(self.atoms.positions - self.head["positions"]).max())
            uncertainty = 0.5 * distance
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "uncertainty": uncertainty}


class ToySurrogate:
    """Implements the learner's SurrogateModel protocol."""

    def __init__(self) -> None:
        self.fine_tune_calls = 0

    def initial_head(self) -> bytes:
        return pickle.dumps({"positions": None})

    def fine_tune(self, head: bytes, points: list[Atoms]) -> tuple[bytes, dict]:
        self.fine_tune_calls += 1
        newest = points[-1]
        energy, forces = prior(newest)
        new = {
            "positions": newest.positions.copy(),
            "dforces": newest.get_forces(apply_constraint=False) - forces,
            "denergy": newest.get_potential_energy() - energy,
        }
        return pickle.dumps(new), {"seconds": 0.0, "final_loss": 0.0}

    def calculator(self, head: bytes) -> Calculator:
        return ToyCalculator(pickle.loads(head))


def make(**_settings) -> ToySurrogate:
    """Factory for run configs: surrogate.factory = "toy_surrogate:make"."""
    return ToySurrogate()
