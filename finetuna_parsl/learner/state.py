"""Learner state: small, explicit dataclasses that cross process boundaries and resume from the store."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

#: Terminal statuses of a relaxation, and what each means.
STATUS_RUNNING = "running"
STATUS_CONVERGED = "converged"  # a parent call confirmed fmax <= threshold
STATUS_PARENT_BUDGET = "parent_budget"  # parent-call budget spent before convergence
STATUS_SURROGATE_BUDGET = "surrogate_budget"  # surrogate-step budget spent before convergence
STATUS_FAILED = "failed"


def _optional_int(value: Any, system_id: str, key: str) -> int | None:
    """atoms.info's charge/spin as an int (None if absent); ValueError naming the system if not a whole number."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not float(value).is_integer():
        raise ValueError(f"system {system_id}: atoms.info[{key!r}] must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SystemSpec:
    """One structure to relax, as plain arrays (picklable, storable, no calculator attached)."""

    system_id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    fixed: np.ndarray  # bool per atom: True where FixAtoms holds the atom
    tags: np.ndarray
    charge: int | None = None  # total charge (e), from atoms.info["charge"]; fairchem's omol task reads it
    spin: int | None = None  # spin multiplicity, from atoms.info["spin"]

    @classmethod
    def from_atoms(cls, system_id: str, atoms: Atoms) -> "SystemSpec":
        fixed = np.zeros(len(atoms), dtype=bool)
        for constraint in atoms.constraints:
            if isinstance(constraint, FixAtoms):
                fixed[constraint.get_indices()] = True
            else:
                raise ValueError(
                    f"system {system_id}: only FixAtoms constraints are supported, got {type(constraint).__name__}"
                )
        return cls(
            system_id=system_id,
            numbers=atoms.numbers.copy(),
            positions=atoms.positions.copy(),
            cell=np.asarray(atoms.cell.array, dtype=float).copy(),
            pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
            fixed=fixed,
            tags=atoms.get_tags().copy(),
            charge=_optional_int(atoms.info.get("charge"), system_id, "charge"),
            spin=_optional_int(atoms.info.get("spin"), system_id, "spin"),
        )

    def to_atoms(self, positions: np.ndarray | None = None) -> Atoms:
        """A fresh Atoms (with its FixAtoms constraint) at `positions` (default: the initial ones)."""
        atoms = Atoms(
            numbers=self.numbers,
            positions=self.positions if positions is None else positions,
            cell=self.cell,
            pbc=self.pbc,
            tags=self.tags,
        )
        if self.fixed.any():
            atoms.set_constraint(FixAtoms(mask=self.fixed))
        for key in ("charge", "spin"):
            if getattr(self, key) is not None:
                atoms.info[key] = getattr(self, key)
        return atoms

    @property
    def formula(self) -> str:
        return Atoms(numbers=self.numbers).get_chemical_formula()

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


@dataclass(frozen=True)
class ParentPoint:
    """One parent (DFT) evaluation: where, what it said, and what it cost."""

    positions: np.ndarray
    energy: float
    forces: np.ndarray  # unconstrained, as the parent returned them
    scf_cycles: int = 0
    wall_s: float = 0.0


@dataclass(frozen=True)
class SurrogateStep:
    """One surrogate evaluation inside a segment (between two parent calls)."""

    positions: np.ndarray
    energy: float
    forces: np.ndarray
    uncertainty: float = 0.0
    wall_s: float = 0.0


@dataclass(frozen=True)
class LearnerSettings:
    """Query rule and stopping settings of the online learner (the paper's defaults)."""

    query: str = "k-steps"  # relaxed-only | k-steps | uncertainty
    k: int = 3  # k-steps: parent call at least every k surrogate steps
    uncertainty_threshold: float = 0.05  # uncertainty: eV/A of ensemble force std that triggers a call
    fmax: float = 0.03  # parent-confirmed convergence threshold, eV/A
    surrogate_fmax: float | None = None  # surrogate "relaxed" threshold; None means use fmax
    max_parent_calls: int = 100
    max_surrogate_steps: int = 2000
    maxstep: float = 0.2  # BFGS maximum atomic step, A
    alpha: float = 70.0  # BFGS initial Hessian, eV/A^2
    train_on: str = "newest"  # newest | all: which parent points each fine-tune sees
    stall_steps: int = 10  # any rule: call the parent if the surrogate optimizer has stalled, i.e. no atom
    stall_distance: float = 0.02  # moved more than stall_distance (A) over the last stall_steps steps
    backoff: bool = True  # any rule: halve the surrogate segment after one that led the parent uphill, double
    # it back after one that did not; a misleading surrogate then degrades to parent-only BFGS, no worse
    trust_radius: float | None = None  # any rule: call the parent once an atom is farther than this (A) from
    # where it was at the newest parent point (None: no limit)
    exact_at_newest: bool = False  # shift the surrogate so it reproduces the newest parent point's energy and
    # forces exactly (learner/residual.py)

    def __post_init__(self) -> None:
        if self.query not in ("relaxed-only", "k-steps", "uncertainty"):
            raise ValueError(f"query must be relaxed-only, k-steps or uncertainty, got {self.query!r}")
        if self.train_on not in ("newest", "all"):
            raise ValueError(f"train_on must be newest or all, got {self.train_on!r}")
        for name in ("k", "max_parent_calls", "max_surrogate_steps", "stall_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("fmax", "maxstep", "alpha", "uncertainty_threshold", "stall_distance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.trust_radius is not None and not self.trust_radius > 0:
            raise ValueError(f"trust_radius must be > 0 (or null for no limit), got {self.trust_radius}")

    @property
    def relaxed_fmax(self) -> float:
        return self.fmax if self.surrogate_fmax is None else self.surrogate_fmax


@dataclass
class LearnerState:
    """Everything one relaxation needs to continue, anywhere: no calculators, no handles."""

    system: SystemSpec
    settings: LearnerSettings
    parent_points: list[ParentPoint] = field(default_factory=list)
    head: bytes | None = None  # serialized surrogate head weights, fine-tuned so far
    head_points: int = 0  # how many parent points `head` has been fine-tuned on
    surrogate_steps: int = 0
    status: str = STATUS_RUNNING
    error: str = ""

    @property
    def parent_calls(self) -> int:
        return len(self.parent_points)

    @property
    def done(self) -> bool:
        return self.status != STATUS_RUNNING

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, floats, bytes) for JSON/HDF5; inverse of from_dict."""
        return {
            "system": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self.system).items()},
            "settings": dict(vars(self.settings)),
            "parent_points": [
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(p).items()}
                for p in self.parent_points
            ],
            "head": self.head,
            "head_points": self.head_points,
            "surrogate_steps": self.surrogate_steps,
            "status": self.status,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LearnerState":
        s = data["system"]
        system = SystemSpec(
            system_id=s["system_id"],
            numbers=np.asarray(s["numbers"], dtype=int),
            positions=np.asarray(s["positions"], dtype=float),
            cell=np.asarray(s["cell"], dtype=float),
            pbc=np.asarray(s["pbc"], dtype=bool),
            fixed=np.asarray(s["fixed"], dtype=bool),
            tags=np.asarray(s["tags"], dtype=int),
        )
        points = [
            ParentPoint(
                positions=np.asarray(p["positions"], dtype=float),
                energy=float(p["energy"]),
                forces=np.asarray(p["forces"], dtype=float),
                scf_cycles=int(p["scf_cycles"]),
                wall_s=float(p["wall_s"]),
            )
            for p in data["parent_points"]
        ]
        return cls(
            system=system,
            settings=LearnerSettings(**data["settings"]),
            parent_points=points,
            head=data["head"],
            head_points=int(data["head_points"]),
            surrogate_steps=int(data["surrogate_steps"]),
            status=data["status"],
            error=data.get("error", ""),
        )

    def with_status(self, status: str, error: str = "") -> "LearnerState":
        return replace(self, status=status, error=error)


@dataclass(frozen=True)
class Proposal:
    """What a learn step hands back: the segment it ran and where the parent should be called next."""

    positions: np.ndarray  # where to call the parent
    segment: list[SurrogateStep]
    head: bytes | None
    head_points: int
    reason: str  # why the parent is called: initial | relaxed | stalled | k-steps | backoff | uncertainty | trust
    # | budget
    fine_tune_s: float = 0.0
    surrogate_budget_spent: bool = False
