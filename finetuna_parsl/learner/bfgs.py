"""BFGS with an explicit Hessian, so it can be rebuilt from parent points only (the FINETUNA trick).

The algebra is ASE's `BFGS` (same initial Hessian, update and maxstep scaling); keeping it here as a
small value object lets the learner reset and replay it without an optimizer's hidden state.

One option departs from ASE: Powell's damped update (`damping`, Nocedal & Wright, Numerical Optimization, 2nd
ed., Procedure 18.2). Parent points replayed after a segment are several surrogate steps apart, so a secant
pair can report almost no curvature (two near-relaxed points 0.3 A apart with similar small forces) or negative
curvature. ASE's update takes it as it is: on the out-of-domain bench the rebuilt Hessian's lowest eigenvalue
fell to 0.003 eV/A^2, and the step from a parent point at fmax 0.08 eV/A went a full maxstep to where the
parent's fmax was 4.4 eV/A (benchmarks/history/2026-11-30-learner-damped.md). Damping keeps the curvature
along each step at least `damping` times what the Hessian held before.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def free_fmax(forces: np.ndarray, fixed: np.ndarray) -> float:
    """Largest force norm over atoms not held by FixAtoms (eV/A)."""
    forces = np.asarray(forces, dtype=float).reshape(-1, 3)
    free = ~np.asarray(fixed, dtype=bool)
    if not free.any():
        return 0.0
    return float(np.sqrt((forces[free] ** 2).sum(axis=1)).max())


def constrain(forces: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Forces as the optimizer sees them: zero on fixed atoms (FixAtoms.adjust_forces)."""
    out = np.array(forces, dtype=float).reshape(-1, 3)
    out[np.asarray(fixed, dtype=bool)] = 0.0
    return out


class HessianBFGS:
    """Quasi-Newton state: Hessian plus the last (positions, forces) pair it was updated with."""

    def __init__(
        self, n_atoms: int, alpha: float = 70.0, maxstep: float = 0.2, fixed: np.ndarray | None = None,
        damping: float = 0.0,
    ) -> None:
        """alpha: initial Hessian, eV/A^2; maxstep: A; damping: Powell's threshold (0: ASE's plain update;
        0.2: Nocedal & Wright's value). ValueError for damping outside [0, 1)."""
        if not 0.0 <= damping < 1.0:
            raise ValueError(f"damping must be in [0, 1), got {damping}")
        self.alpha = alpha
        self.maxstep = maxstep
        self.damping = damping
        self.fixed = np.zeros(n_atoms, dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool)
        self.H = np.eye(3 * n_atoms) * alpha
        self.pos0: np.ndarray | None = None
        self.forces0: np.ndarray | None = None

    def update(self, positions: np.ndarray, forces: np.ndarray) -> None:
        """BFGS update with the step from the previous (pos0, forces0) to this point.

        With damping > 0 the gradient change y is replaced by theta*y + (1-theta)*H s where s.y < damping * s.H.s
        (theta chosen so that s.y' = damping * s.H.s): the Hessian stays positive definite and no step can
        collapse its curvature (Powell; Nocedal & Wright Procedure 18.2)."""
        pos = np.asarray(positions, dtype=float).ravel()
        f = np.asarray(forces, dtype=float).ravel()
        if self.pos0 is not None:
            dpos = pos - self.pos0
            if np.abs(dpos).max() >= 1e-7:
                dgrad = -(f - self.forces0)
                dg = self.H @ dpos
                b = dpos @ dg
                if self.damping and dpos @ dgrad < self.damping * b:
                    theta = (1.0 - self.damping) * b / (b - dpos @ dgrad)
                    dgrad = theta * dgrad + (1.0 - theta) * dg
                a = dpos @ dgrad
                self.H += np.outer(dgrad, dgrad) / a - np.outer(dg, dg) / b
        self.pos0 = pos.copy()
        self.forces0 = f.copy()

    def step(self, positions: np.ndarray, forces: np.ndarray) -> np.ndarray:
        """Update with (positions, forces) and return the next positions (maxstep-limited).

        Like ASE (step, then Atoms.set_positions through FixAtoms), fixed atoms stay where they are.
        """
        self.update(positions, forces)
        f = np.asarray(forces, dtype=float).ravel()
        omega, vectors = np.linalg.eigh(self.H)
        dpos = (vectors @ (f @ vectors / np.fabs(omega))).reshape(-1, 3)
        longest = np.sqrt((dpos**2).sum(axis=1)).max()
        if longest >= self.maxstep:
            dpos *= self.maxstep / longest
        old = np.asarray(positions, dtype=float).reshape(-1, 3)
        new = old + dpos
        new[self.fixed] = old[self.fixed]
        return new

    @classmethod
    def replay(
        cls,
        points: Iterable[tuple[np.ndarray, np.ndarray]],
        n_atoms: int,
        alpha: float = 70.0,
        maxstep: float = 0.2,
        fixed: np.ndarray | None = None,
        damping: float = 0.0,
    ) -> "HessianBFGS":
        """Fresh Hessian updated over consecutive (positions, forces) points, in order.

        The last point is left as (pos0, forces0): the caller then calls step() with it, or with the
        next point. Used with parent points only, so surrogate errors never enter the curvature.
        """
        opt = cls(n_atoms, alpha=alpha, maxstep=maxstep, fixed=fixed, damping=damping)
        for positions, forces in points:
            opt.update(positions, forces)
        return opt
