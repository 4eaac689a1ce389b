"""A surrogate made exact at the newest parent point: a constant force offset (and the energy that goes with it).

With parent point (x_n, E_n, F_n) and the surrogate's own (E_s(x_n), F_s(x_n)), the corrected surrogate is

    F'(x) = F_s(x) + dF,              dF = F_n - F_s(x_n)
    E'(x) = E_s(x) + dE - dF . (x - x_n),   dE = E_n - E_s(x_n)

so F' = -dE'/dx still holds, and at x_n the corrected surrogate returns the parent's own energy and forces.
The relaxation after a parent call then starts from the parent's forces (as parent-only BFGS would) and only
the change of the forces along the segment comes from the surrogate: its curvature, not its absolute error.
This is the delta-learning idea of Delta-ML (Ramakrishnan et al., JCTC 11, 2087 (2015)), applied locally.
Units: eV, eV/A, A.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class NewestPointResidual(Calculator):
    """ASE calculator: `surrogate` shifted to reproduce one parent point exactly.

    positions: (n_atoms, 3) A of the parent point; energy eV; forces (n_atoms, 3) eV/A, unconstrained.
    The surrogate's extra results (e.g. "uncertainty") are passed through unchanged.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, surrogate: Calculator, atoms_at_point, energy: float, forces: np.ndarray) -> None:
        super().__init__()
        self.surrogate = surrogate
        probe = atoms_at_point.copy()
        probe.calc = surrogate
        self.anchor = probe.positions.copy()
        self.d_energy = float(energy) - float(probe.get_potential_energy())
        self.d_forces = np.asarray(forces, dtype=float) - np.asarray(probe.get_forces(apply_constraint=False))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.calc = self.surrogate
        energy = float(probe.get_potential_energy())
        forces = np.asarray(probe.get_forces(apply_constraint=False), dtype=float)
        shift = float((self.d_forces * (self.atoms.positions - self.anchor)).sum())
        self.results = {key: value for key, value in self.surrogate.results.items()
                        if key not in ("energy", "free_energy", "forces")}
        self.results["energy"] = self.results["free_energy"] = energy + self.d_energy - shift
        self.results["forces"] = forces + self.d_forces
