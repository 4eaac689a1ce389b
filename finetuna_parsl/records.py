"""The plain records every layer shares: the system, one evaluation, the learner's settings, a system's result,
and the names.

The bottom of the package (it imports only numpy and ase; the layer picture is the package docstring).
SystemResult is a system's result as the store's summary gives it, what the tables, metrics, `inspect` and
export read.
Every record is frozen and picklable, so it crosses process boundaries (Parsl) unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms

#: The built-in query rules' names (the rules themselves: learner/rules/builtin.py).
QUERY_RELAXED_ONLY = "relaxed-only"
QUERY_K_STEPS = "k-steps"
QUERY_UNCERTAINTY = "uncertainty"
#: Which parent points each fine-tune sees.
TRAIN_NEWEST = "newest"
TRAIN_ALL = "all"
TRAIN_ON = (TRAIN_NEWEST, TRAIN_ALL)
#: parent.pause_while_learning (campaign/pausing.py): auto = when the learn workers share the parent's node.
PAUSE_WHILE_LEARNING = ("auto", "true", "false")

#: Why a parent call was made (Evaluation.reason of a parent row). A reference method's calls carry its name.
REASON_INITIAL = "initial"  # the first call, at the starting structure
REASON_RELAXED = "relaxed"  # the surrogate says fmax <= threshold
REASON_STALLED = "stalled"  # the surrogate optimizer stopped moving
REASON_K_STEPS = QUERY_K_STEPS  # k surrogate steps since the last call
REASON_BACKOFF = "backoff"  # the halved segment after one that led the parent uphill
REASON_UNCERTAINTY = QUERY_UNCERTAINTY  # ensemble force spread above the threshold
REASON_BUDGET = "budget"  # the surrogate-step budget is spent
REASON_TRUST = "trust"  # near convergence, the next step would leave the newest parent point's trust radius
REASON_ANOMALY = "anomaly"  # the next step would give the structure an OC20 anomaly the newest parent point lacks
REASON_LEASH = "leash"  # the next step would take an adsorbate atom beyond adsorbate_leash of the newest parent point
#: Every reason the learner gives, in the order bench's breakdown shows them.
REASONS = (REASON_INITIAL, REASON_K_STEPS, REASON_RELAXED, REASON_UNCERTAINTY, REASON_BACKOFF, REASON_TRUST,
           REASON_ANOMALY, REASON_LEASH, REASON_STALLED, REASON_BUDGET)

#: How a relaxation ended (the learner's and a reference optimizer's; the store keeps it as a system's "outcome").
OUTCOME_RUNNING = "running"  # not ended
OUTCOME_CONVERGED = "converged"  # a parent call confirmed fmax <= threshold
OUTCOME_PARENT_BUDGET = "parent_budget"  # parent-call budget spent before convergence
OUTCOME_SURROGATE_BUDGET = "surrogate_budget"  # surrogate-step budget spent before convergence
OUTCOME_GAVE_UP = "gave_up"  # a reference optimizer found no way forward (GPMin without a descent model)

#: Where a system stands in a campaign (the store's "status"; unrelated to how its relaxation ended).
STATUS_PENDING = "pending"
STATUS_RUNNING = "running"
STATUS_DONE = "done"  # ended with an outcome (converged or a budget)
STATUS_FAILED = "failed"  # the error says why; no outcome
STATUS_INTERRUPTED = "interrupted"  # stopped by a signal mid-relaxation; the next run resumes it

#: Who answered an evaluation.
SOURCE_PARENT = "parent"
SOURCE_SURROGATE = "surrogate"


def _optional_int(value: Any, system_id: str, key: str) -> int | None:
    """atoms.info's charge/spin as an int (None if absent); ValueError naming the system if not a whole number."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not float(value).is_integer():
        raise ValueError(f"system {system_id}: atoms.info[{key!r}] must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SystemSpec:
    """One structure to relax, as plain arrays (picklable, storable, no calculator attached).

    numbers (n,) atomic numbers; positions (n, 3) A; cell (3, 3) A; pbc (3,) bool; fixed (n,) bool, True
    where FixAtoms holds the atom; tags (n,) int (OC20: 0 subsurface, 1 surface, 2 adsorbate).
    """

    system_id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    fixed: np.ndarray
    tags: np.ndarray
    charge: int | None = None  # total charge (e), from atoms.info["charge"]; fairchem's omol task reads it
    spin: int | None = None  # spin multiplicity, from atoms.info["spin"]

    @classmethod
    def from_atoms(cls, system_id: str, atoms: Atoms) -> "SystemSpec":
        """The system of `atoms`. ValueError for a constraint other than FixAtoms, or a charge/spin that is
        not a whole number."""
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
class Evaluation:
    """One evaluation of a structure, by the parent or the surrogate: what a parent answers, what the learner
    keeps, what the store writes (one row of steps/).

    positions (n, 3) A; energy eV; forces (n, 3) eV/A, unconstrained (as the calculator returned them).
    uncertainty: the surrogate ensemble's force spread, eV/A (0 for parent rows and single heads).
    scf_cycles: the parent's SCF iterations for this call (0 where the parent has none, and for surrogate rows).
    wall_s: seconds the evaluation took where it ran. reason: why a parent call was made (REASON_*, or a
    reference method's name); "" for surrogate rows. fine_tune_s: seconds the learner spent fine-tuning
    before proposing this parent call (0 for surrogate rows and reference methods).
    """

    positions: np.ndarray
    energy: float
    forces: np.ndarray
    source: str = SOURCE_PARENT
    uncertainty: float = 0.0
    scf_cycles: int = 0
    wall_s: float = 0.0
    reason: str = ""
    fine_tune_s: float = 0.0

    @property
    def is_parent(self) -> bool:
        return self.source == SOURCE_PARENT


@dataclass(frozen=True)
class SurrogateStep:
    """What a query rule sees after one surrogate step: the step's number in its segment (1 = the first step after
    the parent call), the surrogate's fmax over the free atoms (eV/A) and its ensemble's force spread (eV/A; 0
    for a single head)."""

    steps_in_segment: int
    fmax: float
    uncertainty: float = 0.0


@dataclass(frozen=True)
class QueryRule:
    """A query rule: when the learner pays for a parent call besides "the surrogate says relaxed" (or stalled).

    fires(settings, step) -> bool: call the parent now (the call's reason is the rule's name).
    ceiling(settings) -> int | None: the longest surrogate segment the rule allows (backoff's ceiling); None: none.
    needs_ensemble: the rule reads SurrogateStep.uncertainty, so bench gives it several heads.
    Registered by name with learner.rules.query_rule; LearnerSettings.query names one.
    """

    name: str
    fires: Callable[["LearnerSettings", SurrogateStep], bool]
    ceiling: Callable[["LearnerSettings"], int | None] | None = None
    needs_ensemble: bool = False


#: Query rules by name, in registration order: the built-in ones (learner/rules/builtin.py), then each module of
#: learner/rules/. Filled when finetuna_parsl is imported (its __init__ imports learner.rules); add one with
#: learner.rules.query_rule, never by hand.
QUERY_RULES: dict[str, QueryRule] = {}


class SettingError(ValueError):
    """A settings record's field is out of range: `field` names it, `problem` says what it must be; str() is
    '<field> <problem>' (the run config reports '<file>: <section>.<field>: <problem>')."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class LearnerSettings:
    """Query rule and stopping settings of the online learner (the run config's `learner` section).

    Defaults are the measured recipe (learner/recipes.py's `measured`, with the measurements behind each value;
    fmax 0.03 eV/A, BFGS maxstep 0.2 A and alpha 70 eV/A^2 as ASE's BFGS and the FINETUNA paper); `recipe("paper")`
    gives the paper's k-steps setup (Musielewicz et al., 2022: k=3, fine-tuning on the newest point). A run config
    picks one by `learner.recipe`. SettingError (a ValueError, one line naming the field) for a value out of range.
    """

    query: str = "k-steps"  # QUERY_RULES
    k: int = 100  # k-steps: parent call at least every k surrogate steps
    uncertainty_threshold: float = 0.05  # uncertainty: eV/A of ensemble force std that triggers a call
    fmax: float = 0.03  # parent-confirmed convergence threshold, eV/A
    surrogate_fmax: float | None = 0.02  # surrogate "relaxed" threshold, eV/A; None means use fmax
    max_parent_calls: int = 300
    max_surrogate_steps: int = 3000
    maxstep: float = 0.2  # BFGS maximum atomic step, A
    alpha: float = 70.0  # BFGS initial Hessian, eV/A^2
    train_on: str = "all"  # TRAIN_ON: which parent points each fine-tune sees
    stall_steps: int = 10  # any rule: call the parent if the surrogate optimizer has stalled, i.e. no atom
    stall_distance: float = 0.02  # moved more than stall_distance (A) over the last stall_steps steps
    backoff: bool = True  # any rule: halve the surrogate segment after one that led the parent uphill, grow it
    # by one step after one that set a new low; a misleading surrogate then degrades to parent-only BFGS, no worse
    restart_from_lowest: bool = True  # any rule: after a segment that led the parent uphill (above the lowest
    # parent energy so far), start the next one from the lowest parent point, not the uphill one (a trust-region
    # method's rejected step; learner/online.py segment_origin)
    trust_radius: float | None = None  # A: once the newest parent point's fmax is below trust_fmax, a segment
    # ends (reason "trust") before a step that would move any atom farther than this from that point; None: off
    trust_fmax: float = 0.1  # eV/A: where trust_radius starts to apply
    # (benchmarks/history/2026-12-01-learner-trust.md)
    exact_at_newest: bool = False  # shift the surrogate so it reproduces the newest parent point's energy and
    # forces exactly (learner/residual.py); off in the measured recipe since 2026-12-06 (learner/recipes.py)
    exact_fade: float | None = 1.0  # that shift's fade length, A (learner/residual.py); None = the same force
    # shift everywhere, which under relaxed-only pushed adsorbates off their slabs
    # (benchmarks/history/2026-12-01-learner-shift.md)
    residual_points: int = 10  # fit a Gaussian process (GPMin's) to the parent - surrogate residual at the
    # newest residual_points parent points, so the surrogate reproduces all of them; 0: off (learner/residual.py)
    residual_scale: float = 0.4  # its length scale, A in free-coordinate space (GPMin's default)
    hessian_damping: float = 0.2  # Powell's damped BFGS update (learner/bfgs.py; 0 = ASE's update): keeps the
    # Hessian rebuilt from far-apart parent points from losing its curvature
    # (benchmarks/history/2026-11-30-learner-damped.md)
    anomaly_guard: bool = True  # end a segment (reason "anomaly") before a surrogate step that would give the
    # structure an OC20 anomaly (dissociated, desorbed, surface changed, intercalated: learner/anomaly.py) that the
    # newest parent point does not have: a chemistry change is the parent's decision. Needs OC20 tags; else off
    adsorbate_leash: float | None = 0.3  # A: end a segment (reason "leash") before a surrogate step that would
    # move any adsorbate atom (OC20 tag 2; every free atom without OC20 tags) farther than this from the newest
    # parent point, so the adsorbate follows its parent-confirmed path; None: off (learner/recipes.py: 0.3 measured)

    def __post_init__(self) -> None:
        """The one check of every field's range (the run config reports its SettingError under the key)."""
        if self.query not in QUERY_RULES:
            raise SettingError("query", f"must be one of {', '.join(QUERY_RULES)}, got {self.query!r}")
        if self.train_on not in TRAIN_ON:
            raise SettingError("train_on", f"must be one of {', '.join(TRAIN_ON)}, got {self.train_on!r}")
        if self.residual_points < 0:
            raise SettingError("residual_points", f"must be >= 0, got {self.residual_points}")
        if not 0.0 <= self.hessian_damping < 1.0:
            raise SettingError("hessian_damping", f"must be in [0, 1), got {self.hessian_damping}")
        for name in ("k", "max_parent_calls", "max_surrogate_steps", "stall_steps"):
            if getattr(self, name) < 1:
                raise SettingError(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("exact_fade", "trust_radius", "adsorbate_leash"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise SettingError(name, f"must be > 0 (A) or null, got {getattr(self, name)}")
        for name in ("fmax", "maxstep", "alpha", "uncertainty_threshold", "stall_distance", "residual_scale",
                     "trust_fmax"):
            if not getattr(self, name) > 0:
                raise SettingError(name, f"must be > 0, got {getattr(self, name)}")

    @property
    def relaxed_fmax(self) -> float:
        return self.fmax if self.surrogate_fmax is None else self.surrogate_fmax


@dataclass(frozen=True)
class SystemResult:
    """Where one system of a campaign stands and how its relaxation went: one row of the store's summary
    (store.read_system_row builds it), of the live summary (live.py), of the tables (report.py, bench.py),
    of `inspect` and of the metrics (learner/metrics.py); export labels its frames with it.

    Energies eV, fmax eV/A over free atoms, times s. final_energy / final_fmax are the last parent call's (NaN
    before any). parent_calls_by_reason: query reason (REASON_*, a reference method's name; "" = not recorded)
    -> calls, in first-call order. anomalies: the OC20 anomaly kinds of the last parent-confirmed structure
    (learner.anomaly; () for none), None when unknown, with anomalies_unknown saying why.

    The mapping view (row["parent_calls"], row.get("anomalies"), dict(row), as_dict()) gives the summary row's
    plain form, lists where the record holds tuples: what the live summary's JSON and `inspect --json` hold,
    and what scripts written against the dict rows of earlier versions read.
    """

    system_id: str
    status: str = ""  # STATUS_*
    outcome: str = ""  # OUTCOME_* once ended; "" before, and for a failed system
    formula: str = ""
    n_atoms: int = 0
    parent_calls: int = 0
    parent_calls_by_reason: dict[str, int] = field(default_factory=dict)
    surrogate_steps: int = 0
    final_energy: float = math.nan
    final_fmax: float = math.nan
    error: str = ""  # why it failed, in full (may be several lines)
    warnings: tuple[str, ...] = ()
    scf_cycles: int = 0
    parent_wall_s: float = 0.0
    fine_tune_s: float = 0.0  # the learner's fine-tuning before its parent calls
    anomalies: tuple[str, ...] | None = None
    anomalies_unknown: str = ""

    @property
    def converged(self) -> bool:
        """Parent-confirmed relaxed."""
        return self.outcome == OUTCOME_CONVERGED

    @property
    def ended(self) -> bool:
        """Done or failed: nothing left to run."""
        return self.status in (STATUS_DONE, STATUS_FAILED)

    @classmethod
    def of(cls, row: "SystemResult | Mapping[str, Any]") -> "SystemResult":
        """`row` as a SystemResult: itself, or a summary row's plain form (a dict; keys not given take the
        defaults above, keys it has beyond them are ignored)."""
        if isinstance(row, SystemResult):
            return row
        given = {f.name: row[f.name] for f in fields(cls) if f.name in row}
        for name in ("warnings", "anomalies"):
            if given.get(name) is not None:
                given[name] = tuple(str(v) for v in given[name])
        if given.get("parent_calls_by_reason") is None:
            given.pop("parent_calls_by_reason", None)
        else:
            given["parent_calls_by_reason"] = dict(given["parent_calls_by_reason"])
        for name in ("outcome", "error", "anomalies_unknown"):  # None in a hand-made row means not given
            if given.get(name, "") is None:
                given[name] = ""
        return cls(**given)

    # --- the mapping view: the summary row's plain form ---------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key not in _RESULT_KEYS:
            raise KeyError(key)
        value = getattr(self, key)
        if key == "parent_calls_by_reason":
            return dict(value)
        return list(value) if isinstance(value, tuple) else value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in _RESULT_KEYS else default

    def __contains__(self, key: object) -> bool:
        return key in _RESULT_KEYS

    def keys(self) -> tuple[str, ...]:
        return _RESULT_KEYS

    def as_dict(self) -> dict[str, Any]:
        """The summary row's plain form (JSON-ready but for NaN): every field, lists for tuples."""
        return {key: self[key] for key in _RESULT_KEYS}


#: A summary row as the readers (metrics, tables, inspect) take it: a SystemResult, or its plain form.
ResultRow = SystemResult | Mapping[str, Any]


def as_results(rows: Iterable[ResultRow]) -> list[SystemResult]:
    """SystemResult.of each row."""
    return [SystemResult.of(r) for r in rows]


_RESULT_KEYS = tuple(f.name for f in fields(SystemResult))
