"""Speed and accuracy of a method against a reference (the paper's measures), from summary rows; and where
a method's parent calls went (by query reason, and after the parent fmax first fell below 0.1 eV/A)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..records import OUTCOME_CONVERGED

ENERGY_TOLERANCE = 0.02  # eV: no worse than the reference + 0.02 eV counts as accurate
SETTLED_FMAX = 0.1  # eV/A: parent calls after the parent fmax first fell below this are spent on the last stretch


@dataclass(frozen=True)
class Comparison:
    """Totals of a method against a reference on the systems both finished."""

    method: str
    reference: str
    systems: int
    method_parent_calls: int
    reference_parent_calls: int
    method_converged: int
    accurate: int  # converged and energy <= reference + 0.02 eV
    missed: tuple[str, ...] = ()  # "<system id> (why)" for each system that was not accurate

    @property
    def ratio(self) -> float:
        return self.method_parent_calls / self.reference_parent_calls if self.reference_parent_calls else math.nan

    @property
    def accuracy(self) -> float:
        return self.accurate / self.systems if self.systems else math.nan


def is_accurate(row: dict, reference_row: dict, tolerance: float = ENERGY_TOLERANCE) -> bool:
    """Parent-confirmed relaxed and parent energy <= reference energy + tolerance."""
    return row.get("outcome") == OUTCOME_CONVERGED and row["final_energy"] <= reference_row["final_energy"] + tolerance


def why_not_accurate(row: dict, reference_row: dict, tolerance: float = ENERGY_TOLERANCE) -> str:
    """'' when accurate; otherwise why: 'not relaxed: <outcome or status>' or 'dE +0.051 eV' (eV)."""
    if row.get("outcome") != OUTCOME_CONVERGED:
        return f"not relaxed: {row.get('outcome') or row.get('status') or 'unfinished'}"
    de = row["final_energy"] - reference_row["final_energy"]
    return f"dE {de:+.3f} eV" if not de <= tolerance else ""


def missed_systems(rows: Sequence[dict], reference_rows: Sequence[dict],
                   tolerance: float = ENERGY_TOLERANCE) -> tuple[str, ...]:
    """'<system id> (why)' for each system of `rows` (matched by id) that is not accurate against the reference."""
    ref = {r["system_id"]: r for r in reference_rows}
    out = []
    for r in rows:
        if r["system_id"] in ref:
            why = why_not_accurate(r, ref[r["system_id"]], tolerance)
            if why:
                out.append(f"{r['system_id']} ({why})")
    return tuple(out)


def compare(method: str, rows: Sequence[dict], reference: str, reference_rows: Sequence[dict]) -> Comparison:
    """Compare per-system summary rows (matched by system_id) of a method and a reference."""
    ref = {r["system_id"]: r for r in reference_rows}
    matched = [(r, ref[r["system_id"]]) for r in rows if r["system_id"] in ref]
    return Comparison(
        method=method,
        reference=reference,
        systems=len(matched),
        method_parent_calls=sum(r["parent_calls"] for r, _ in matched),
        reference_parent_calls=sum(q["parent_calls"] for _, q in matched),
        method_converged=sum(r.get("outcome") == OUTCOME_CONVERGED for r, _ in matched),
        accurate=sum(is_accurate(r, q) for r, q in matched),
        missed=missed_systems(rows, reference_rows),
    )


@dataclass(frozen=True)
class MethodRow:
    """One line of the paper's Table 1 for a method, measured against the reference on the same systems."""

    method: str
    systems: int
    parent_calls: int
    percent_of_reference_mean: float  # per-system parent calls as % of the reference's, averaged
    percent_of_reference_sem: float
    lower: float  # fraction of systems with dE <= -0.02 eV (found a lower minimum than the reference)
    same: float  # fraction with -0.02 < dE < 0.02
    accurate: float  # fraction parent-confirmed relaxed with dE <= 0.02 (the paper's accuracy)
    relaxed: float  # fraction parent-confirmed relaxed
    scf_cycles: int
    parent_wall_s: float


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def table_row(method: str, rows: Sequence[dict], reference_rows: Sequence[dict],
              tolerance: float = ENERGY_TOLERANCE) -> MethodRow:
    """Table 1 figures of `method`; rows carry parent_calls, final_energy, outcome, scf_cycles, parent_wall_s."""
    ref = {r["system_id"]: r for r in reference_rows}
    matched = [(r, ref[r["system_id"]]) for r in rows if r["system_id"] in ref and ref[r["system_id"]]["parent_calls"]]
    n = len(matched)
    percents = [100.0 * r["parent_calls"] / q["parent_calls"] for r, q in matched]
    mean, sem = _mean_sem(percents)
    de = [r["final_energy"] - q["final_energy"] for r, q in matched]
    relaxed = [r.get("outcome") == OUTCOME_CONVERGED for r, _ in matched]
    frac = (lambda k: k / n if n else math.nan)
    return MethodRow(
        method=method,
        systems=n,
        parent_calls=sum(r["parent_calls"] for r, _ in matched),
        percent_of_reference_mean=mean,
        percent_of_reference_sem=sem,
        lower=frac(sum(d <= -tolerance for d in de)),
        same=frac(sum(-tolerance < d < tolerance for d in de)),
        accurate=frac(sum(ok and d <= tolerance for ok, d in zip(relaxed, de))),
        relaxed=frac(sum(relaxed)),
        scf_cycles=sum(int(r.get("scf_cycles", 0)) for r, _ in matched),
        parent_wall_s=sum(float(r.get("parent_wall_s", 0.0)) for r, _ in matched),
    )


@dataclass(frozen=True)
class CallBreakdown:
    """Where one method's parent calls went, summed over systems."""

    method: str
    systems: int
    parent_calls: int
    by_reason: dict[str, int]  # query reason (a reference method's name for its calls; "" unrecorded) -> calls
    after_settled: int  # calls made after the parent fmax first fell below the threshold (SETTLED_FMAX)
    threshold: float = SETTLED_FMAX


def calls_after_settled(fmax: Sequence[float], threshold: float = SETTLED_FMAX) -> int:
    """Parent calls made after the first one whose fmax was below `threshold` (0 if none was)."""
    for i, value in enumerate(fmax):
        if value < threshold:
            return len(fmax) - i - 1
    return 0


def call_breakdown(method: str, calls: Mapping[str, tuple[Sequence[str], Sequence[float]]],
                   threshold: float = SETTLED_FMAX) -> CallBreakdown:
    """Breakdown of `calls`: per system, (reason, parent fmax) of every parent call in call order."""
    by_reason: Counter[str] = Counter()
    total = after = 0
    for reasons, fmax in calls.values():
        by_reason.update(reasons)
        total += len(reasons)
        after += calls_after_settled(fmax, threshold)
    return CallBreakdown(method=method, systems=len(calls), parent_calls=total, by_reason=dict(by_reason),
                         after_settled=after, threshold=threshold)
