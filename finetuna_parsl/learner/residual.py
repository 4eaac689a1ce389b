"""A surrogate made exact at the newest parent point: a constant force offset (and the energy that goes with it).

With parent point (x_n, E_n, F_n) and the surrogate's own (E_s(x_n), F_s(x_n)), the corrected surrogate is

    F'(x) = F_s(x) + dF,              dF = F_n - F_s(x_n)
    E'(x) = E_s(x) + dE - dF . (x - x_n),   dE = E_n - E_s(x_n)

so F' = -dE'/dx still holds, and at x_n the corrected surrogate returns the parent's own energy and forces.
The relaxation after a parent call then starts from the parent's forces (as parent-only BFGS would) and only
the change of the forces along the segment comes from the surrogate: its curvature, not its absolute error.
This is the delta-learning idea of Delta-ML (Ramakrishnan et al., JCTC 11, 2087 (2015)), applied locally.

The constant dF acts everywhere, also where nothing on the surrogate balances it: under relaxed-only (segments
with no step limit) it pushed an H2O 124 A off its slab. With a fade length l (A) the tilt fades out,

    E'(x) = E_s(x) + dE - dF . u w(u),   u = x - x_n,   w(u) = exp(-|u|^2 / (2 l^2))
    F'(x) = F_s(x) + w(u) (dF - (dF . u) u / l^2)

still conservative, still exact at x_n, and the surrogate itself (plus the constant dE) a few l away.
Units: eV, eV/A, A.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize.gpmin.gp import GaussianProcess
from ase.optimize.gpmin.kernel import SquaredExponential
from ase.optimize.gpmin.prior import Prior
from scipy.linalg import cho_factor, cho_solve


class NewestPointResidual(Calculator):
    """ASE calculator: `surrogate` shifted to reproduce one parent point exactly.

    positions: (n_atoms, 3) A of the parent point; energy eV; forces (n_atoms, 3) eV/A, unconstrained.
    fade: None (the force shift everywhere) or its fade length, A (module docstring); ValueError if not > 0.
    The surrogate's extra results (e.g. "uncertainty") are passed through unchanged.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, surrogate: Calculator, atoms_at_point, energy: float, forces: np.ndarray,
                 fade: float | None = None) -> None:
        super().__init__()
        if fade is not None and not fade > 0:
            raise ValueError(f"fade must be > 0 A (or None for no fade), got {fade}")
        self.fade = fade
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
        u = self.atoms.positions - self.anchor
        tilt = float((self.d_forces * u).sum())
        d_forces, weight = self.d_forces, 1.0
        if self.fade is not None:
            weight = float(np.exp(-(u**2).sum() / (2 * self.fade**2)))
            d_forces = weight * (self.d_forces - tilt * u / self.fade**2)
        self.results = {key: value for key, value in self.surrogate.results.items()
                        if key not in ("energy", "free_energy", "forces")}
        self.results["energy"] = self.results["free_energy"] = energy + self.d_energy - tilt * weight
        self.results["forces"] = forces + d_forces


class _SurrogateMean(Prior):
    """ASE GPMin prior: the surrogate's energy (plus a constant) and gradient over the free coordinates."""

    def __init__(self, surrogate: Calculator, atoms, free: np.ndarray) -> None:
        super().__init__()
        self.atoms = atoms.copy()
        self.atoms.calc = surrogate
        self.free = free
        self.energy_offset = 0.0  # eV, set by ParentPointsResidual from the parent points
        self.results: dict = {}

    def potential(self, x: np.ndarray) -> np.ndarray:
        positions = self.atoms.positions.copy()
        positions[self.free] = x.reshape(-1, 3)
        self.atoms.positions = positions
        energy = float(self.atoms.get_potential_energy())
        forces = np.asarray(self.atoms.get_forces(apply_constraint=False), dtype=float)
        self.results = dict(self.atoms.calc.results)
        return np.concatenate([[energy + self.energy_offset], -forces[self.free].ravel()])


class _ForceResidualGP(GaussianProcess):
    """ASE's GaussianProcess, except that observed energies carry `energy_noise` (eV): a direct-force
    surrogate's energy need not integrate its forces, so the residual's energies are weak evidence."""

    def __init__(self, prior: Prior, energy_noise: float) -> None:
        super().__init__(prior=prior, kernel=SquaredExponential())
        self.energy_noise = energy_noise

    def train(self, X: np.ndarray, Y: np.ndarray, noise: float | None = None,
              prior_values: np.ndarray | None = None) -> None:
        """As GaussianProcess.train; `prior_values` (n, D+1), the prior already evaluated at X, saves those
        surrogate calls."""
        n, d = X.shape
        self.X = X.copy()
        K = self.kernel.kernel_matrix(X)
        K[np.diag_indices_from(K)] += np.array(n * ([self.energy_noise] + d * [self.noise])) ** 2
        self.m = self.prior.prior(X) if prior_values is None else np.asarray(prior_values).ravel()
        self.a = Y.flatten() - self.m
        self.L, self.lower = cho_factor(K, lower=True)
        self.a = cho_solve((self.L, self.lower), self.a)


class ParentPointsResidual(Calculator):
    """ASE calculator: `surrogate` plus a Gaussian process fitted to its residual (parent - surrogate) at
    parent points, so it reproduces every given parent point's forces and reverts to the surrogate far from
    them (a length `scale` A away, in the space of free coordinates).

    This is GPMin's model (ASE's GaussianProcess and SquaredExponential kernel; Garijo del Rio et al., PRB 100,
    104103 (2019)) with the surrogate as its prior mean instead of a constant, i.e. ASE's CalculatorPrior
    idea; as in Delta-ML only the surrogate's error is learned. points: (positions (n_atoms, 3) A,
    energy eV, unconstrained forces (n_atoms, 3) eV/A). GPMin's defaults: weight 1 eV, force noise
    0.001 eV/A; energies enter with `energy_noise` 1 eV, i.e. barely (see _ForceResidualGP). Extra surrogate
    results (e.g. "uncertainty") are passed through. Costs one surrogate call per point to build, then one per
    prediction; scipy's LinAlgError if the points make the kernel matrix singular (not seen with the noise).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, surrogate: Calculator, atoms, points: list[tuple[np.ndarray, float, np.ndarray]],
                 free: np.ndarray, scale: float = 0.4, weight: float = 1.0, noise: float = 0.001,
                 energy_noise: float = 1.0) -> None:
        super().__init__()
        self.free = np.asarray(free, dtype=bool)
        X = np.array([np.asarray(p, dtype=float)[self.free].ravel() for p, _, _ in points])
        Y = np.array([np.concatenate([[e], -np.asarray(f, dtype=float)[self.free].ravel()]) for _, e, f in points])
        self.prior = _SurrogateMean(surrogate, atoms, self.free)
        prior_values = np.array([self.prior.potential(x) for x in X])  # one surrogate call per point
        # The surrogate's energy zero need not be the parent's: the prior mean carries their mean offset.
        self.prior.energy_offset = float(np.mean(Y[:, 0] - prior_values[:, 0]))
        prior_values[:, 0] += self.prior.energy_offset
        self.gp = _ForceResidualGP(self.prior, energy_noise)
        self.gp.set_hyperparams(np.array([weight, scale, noise]))
        self.gp.train(X, Y, prior_values=prior_values)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        prediction = self.gp.predict(self.atoms.positions[self.free].ravel())
        self.results = {key: value for key, value in self.prior.results.items()
                        if key not in ("energy", "free_energy", "forces")}
        forces = np.array(self.prior.results["forces"], dtype=float)  # fixed atoms: the surrogate's own
        forces[self.free] = -prediction[1:].reshape(-1, 3)
        self.results["energy"] = self.results["free_energy"] = float(prediction[0])
        self.results["forces"] = forces
