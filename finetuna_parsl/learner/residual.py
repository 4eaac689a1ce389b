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

Each correction is also a plain value (PointShift, ResidualFit): built from the surrogate's predictions at parent
points, applied to its prediction anywhere. The learn step (learner/online.py, segment_step) applies them to
predictions made elsewhere (a batched predictor); the calculators below are the same values around a surrogate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize.gpmin.gp import GaussianProcess
from ase.optimize.gpmin.kernel import SquaredExponential
from scipy.linalg import cho_factor, cho_solve


@dataclass(frozen=True, eq=False)
class PointShift:
    """The shift that makes a surrogate exact at one parent point (module docstring), as a value.

    anchor: (n_atoms, 3) A, the parent point x_n; d_energy: dE, eV; d_forces: dF, (n_atoms, 3) eV/A; fade: the
    fade length l, A, or None (the force shift everywhere).
    """

    anchor: np.ndarray
    d_energy: float
    d_forces: np.ndarray
    fade: float | None = None

    @classmethod
    def fit(cls, positions: np.ndarray, energy: float, forces: np.ndarray, surrogate_energy: float,
            surrogate_forces: np.ndarray, fade: float | None = None) -> "PointShift":
        """The shift for a parent point (positions (n_atoms, 3) A, energy eV, unconstrained forces (n_atoms, 3)
        eV/A) and the surrogate's own energy (eV) and forces (eV/A) there. ValueError for a fade not > 0."""
        if fade is not None and not fade > 0:
            raise ValueError(f"fade must be > 0 A (or None for no fade), got {fade}")
        return cls(np.array(positions, dtype=float), float(energy) - float(surrogate_energy),
                   np.asarray(forces, dtype=float) - np.asarray(surrogate_forces), fade)

    def apply(self, positions: np.ndarray, energy: float, forces: np.ndarray) -> tuple[float, np.ndarray]:
        """The corrected (energy eV, forces (n_atoms, 3) eV/A) from the surrogate's own at `positions`
        ((n_atoms, 3) A)."""
        u = np.asarray(positions) - self.anchor
        tilt = float((self.d_forces * u).sum())
        d_forces, weight = self.d_forces, 1.0
        if self.fade is not None:
            weight = float(np.exp(-(u**2).sum() / (2 * self.fade**2)))
            d_forces = weight * (self.d_forces - tilt * u / self.fade**2)
        return energy + self.d_energy - tilt * weight, forces + d_forces


class NewestPointResidual(Calculator):
    """ASE calculator: `surrogate` shifted to reproduce one parent point exactly (a PointShift).

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
        self.surrogate = surrogate
        probe = atoms_at_point.copy()
        probe.calc = surrogate
        self.shift = PointShift.fit(probe.positions, energy, forces, probe.get_potential_energy(),
                                    probe.get_forces(apply_constraint=False), fade)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        probe = self.atoms.copy()
        probe.calc = self.surrogate
        energy = float(probe.get_potential_energy())
        forces = np.asarray(probe.get_forces(apply_constraint=False), dtype=float)
        self.results = {key: value for key, value in self.surrogate.results.items()
                        if key not in ("energy", "free_energy", "forces")}
        energy, forces = self.shift.apply(self.atoms.positions, energy, forces)
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = forces


class _ForceResidualGP(GaussianProcess):
    """ASE's GaussianProcess, except that observed energies carry `energy_noise` (eV): a direct-force
    surrogate's energy need not integrate its forces, so the residual's energies are weak evidence."""

    def __init__(self, energy_noise: float) -> None:
        super().__init__(kernel=SquaredExponential())
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


def _prior_mean(energy: float, forces: np.ndarray, free: np.ndarray, offset: float) -> np.ndarray:
    """GPMin's observation vector of the surrogate: [energy + offset (eV), -forces of the free atoms (eV/A)]."""
    return np.concatenate([[energy + offset], -np.asarray(forces, dtype=float)[free].ravel()])


@dataclass(frozen=True, eq=False)
class ResidualFit:
    """The Gaussian process of ParentPointsResidual, trained, as a value.

    free: (n_atoms,) bool, the atoms it acts on (fixed atoms keep the surrogate's forces); energy_offset: eV, the
    mean parent - surrogate energy at the points (the prior mean's constant); X: (n_points, 3 n_free) A, the
    points' free coordinates; a: (n_points (3 n_free + 1),) the trained weights; kernel: ASE's
    SquaredExponential with the fit's weight (eV) and scale (A).
    """

    free: np.ndarray
    energy_offset: float
    X: np.ndarray
    a: np.ndarray
    kernel: SquaredExponential

    @classmethod
    def fit(cls, points: Sequence[tuple[np.ndarray, float, np.ndarray]], free: np.ndarray,
            at_points: Sequence[tuple[float, np.ndarray]], scale: float = 0.4, weight: float = 1.0,
            noise: float = 0.001, energy_noise: float = 1.0) -> "ResidualFit":
        """Trained on `points` ((positions (n_atoms, 3) A, energy eV, unconstrained forces (n_atoms, 3) eV/A) of
        parent points) and `at_points`, the surrogate's (energy eV, forces (n_atoms, 3) eV/A) at each point's
        free coordinates. ParentPointsResidual's docstring has the parameters; scipy's LinAlgError if the
        points make the kernel matrix singular."""
        free = np.asarray(free, dtype=bool)
        X = np.array([np.asarray(p, dtype=float)[free].ravel() for p, _, _ in points])
        Y = np.array([np.concatenate([[e], -np.asarray(f, dtype=float)[free].ravel()]) for _, e, f in points])
        prior_values = np.array([_prior_mean(e, f, free, 0.0) for e, f in at_points])
        # The surrogate's energy zero need not be the parent's: the prior mean carries their mean offset.
        energy_offset = float(np.mean(Y[:, 0] - prior_values[:, 0]))
        prior_values[:, 0] += energy_offset
        gp = _ForceResidualGP(energy_noise)
        gp.set_hyperparams(np.array([weight, scale, noise]))
        gp.train(X, Y, prior_values=prior_values)
        return cls(free, energy_offset, gp.X, gp.a, gp.kernel)

    def apply(self, positions: np.ndarray, energy: float, forces: np.ndarray) -> tuple[float, np.ndarray]:
        """The corrected (energy eV, forces (n_atoms, 3) eV/A) from the surrogate's own at `positions`
        ((n_atoms, 3) A): GaussianProcess.predict with the surrogate's prediction as the prior mean."""
        x = np.asarray(positions)[self.free].ravel()
        k = self.kernel.kernel_vector(x, self.X, self.X.shape[0])
        prediction = _prior_mean(energy, forces, self.free, self.energy_offset) + np.dot(k, self.a)
        out = np.array(forces, dtype=float)  # fixed atoms: the surrogate's own
        out[self.free] = -prediction[1:].reshape(-1, 3)
        return float(prediction[0]), out


class ParentPointsResidual(Calculator):
    """ASE calculator: `surrogate` plus a Gaussian process fitted to its residual (parent - surrogate) at
    parent points (a ResidualFit), so it reproduces every given parent point's forces and reverts to the
    surrogate far from them (a length `scale` A away, in the space of free coordinates).

    This is GPMin's model (ASE's GaussianProcess and SquaredExponential kernel; Garijo del Rio et al., PRB 100,
    104103 (2019)) with the surrogate as its prior mean instead of a constant, i.e. ASE's CalculatorPrior
    idea; as in Delta-ML only the surrogate's error is learned. points: (positions (n_atoms, 3) A,
    energy eV, unconstrained forces (n_atoms, 3) eV/A). GPMin's defaults: weight 1 eV, force noise
    0.001 eV/A; energies enter with `energy_noise` 1 eV, i.e. barely (see _ForceResidualGP). Extra surrogate
    results (e.g. "uncertainty") are passed through. Costs one surrogate call per point to build, then one per
    prediction; scipy's LinAlgError if the points make the kernel matrix singular (not seen with the noise).
    The surrogate is asked at the free coordinates with the fixed atoms where `atoms` has them.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, surrogate: Calculator, atoms, points: list[tuple[np.ndarray, float, np.ndarray]],
                 free: np.ndarray, scale: float = 0.4, weight: float = 1.0, noise: float = 0.001,
                 energy_noise: float = 1.0) -> None:
        super().__init__()
        self.free = np.asarray(free, dtype=bool)
        self.probe = atoms.copy()
        self.probe.calc = surrogate
        at_points = [self._surrogate_at(p) for p, _, _ in points]  # one surrogate call per point
        self.fit = ResidualFit.fit(points, self.free, at_points, scale=scale, weight=weight, noise=noise,
                                   energy_noise=energy_noise)

    def _surrogate_at(self, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """The surrogate's (energy, forces) at the free coordinates of `positions`."""
        at = self.probe.positions.copy()
        at[self.free] = np.asarray(positions, dtype=float)[self.free]
        self.probe.positions = at
        return (float(self.probe.get_potential_energy()),
                np.asarray(self.probe.get_forces(apply_constraint=False), dtype=float))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces = self._surrogate_at(self.atoms.positions)
        self.results = {key: value for key, value in self.probe.calc.results.items()
                        if key not in ("energy", "free_energy", "forces")}
        energy, forces = self.fit.apply(self.probe.positions, energy, forces)
        self.results["energy"] = self.results["free_energy"] = energy
        self.results["forces"] = forces
