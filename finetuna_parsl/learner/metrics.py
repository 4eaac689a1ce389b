"""Speed and accuracy of a method against a reference (the paper's measures), from summary rows; whether it
ended in the reference's minimum and with which anomalies; and where a method's parent calls went (by query
reason, and after the parent fmax first fell below 0.1 eV/A).

Rows are records.SystemResult (the store's summary); a plain dict of the same keys is taken too
(SystemResult.of), keys it lacks taking the record's defaults."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ase.geometry import find_mic

from ..records import ResultRow, SystemResult, SystemSpec, as_results

ENERGY_TOLERANCE = 0.02  # eV: no worse than the reference + 0.02 eV counts as accurate
SETTLED_FMAX = 0.1  # eV/A: parent calls after the parent fmax first fell below this are spent on the last stretch
#: A: two final structures are the same minimum when no free atom is farther apart than this, under periodic
#: images. BFGS's own adsorbates move 0.3-0.6 A from a demo start while other minima lie 1.2-3.0 A away (issue 26);
#: 0.3 A is below a site-to-site hop on any fcc facet (a third of a 2.5-2.9 A nearest-neighbour distance and more).
SAME_MINIMUM_DISTANCE = 0.3
SAME = "same"
OTHER_LOWER = "other-lower"  # another minimum, lower in parent energy than the reference's
OTHER_HIGHER = "other-higher"  # another minimum, not lower
UNKNOWN = "unknown"  # a final structure is missing (no parent call)
MINIMA = (SAME, OTHER_LOWER, OTHER_HIGHER)
def _by_id(rows: Sequence[ResultRow]) -> dict[str, SystemResult]:
    return {r.system_id: r for r in as_results(rows)}


def largest_free_displacement(system: SystemSpec, positions: np.ndarray, reference_positions: np.ndarray) -> float:
    """Largest distance (A) between the free atoms of two structures of `system`, each atom's nearest periodic
    image (ASE's find_mic), 0 without free atoms."""
    free = ~np.asarray(system.fixed, dtype=bool)
    if not free.any():
        return 0.0
    delta = np.asarray(positions, dtype=float)[free] - np.asarray(reference_positions, dtype=float)[free]
    _, lengths = find_mic(delta, system.cell, system.pbc)
    return float(np.max(lengths))


def minimum_match(system: SystemSpec, positions: np.ndarray, energy: float, reference_positions: np.ndarray,
                  reference_energy: float, distance: float = SAME_MINIMUM_DISTANCE) -> tuple[str, float]:
    """(SAME, OTHER_LOWER or OTHER_HIGHER; the largest free-atom displacement in A): SAME within `distance` (A)
    of the reference's final structure, else another minimum, lower when its energy (eV) is below the reference's."""
    moved = largest_free_displacement(system, positions, reference_positions)
    if moved <= distance:
        return SAME, moved
    return (OTHER_LOWER if energy < reference_energy else OTHER_HIGHER), moved


def minimum_matches(systems: Mapping[str, SystemSpec], rows: Sequence[ResultRow], finals: Mapping[str, np.ndarray],
                    reference_rows: Sequence[ResultRow], reference_finals: Mapping[str, np.ndarray]
                    ) -> dict[str, tuple[str, float]]:
    """minimum_match of each system of `rows` against the reference's (matched by id, final parent energies in
    eV); (UNKNOWN, nan) where either has no final structure or the system is not in `systems`."""
    ref = _by_id(reference_rows)
    out = {}
    for r in as_results(rows):
        sid = r.system_id
        if sid not in ref:
            continue
        if sid in systems and sid in finals and sid in reference_finals:
            out[sid] = minimum_match(systems[sid], finals[sid], r.final_energy, reference_finals[sid],
                                     ref[sid].final_energy)
        else:
            out[sid] = (UNKNOWN, math.nan)
    return out


def other_minima(matches: Mapping[str, tuple[str, float]]) -> tuple[str, ...]:
    """'<system id> (lower|higher, 1.84 A)' for each system in another minimum than the reference's."""
    return tuple(f"{sid} ({kind.removeprefix('other-')}, {moved:.2f} A)" for sid, (kind, moved) in matches.items()
                 if kind in (OTHER_LOWER, OTHER_HIGHER))


def anomalous_systems(rows: Sequence[ResultRow]) -> tuple[str, ...]:
    """'<system id> (desorbed,dissociated)' for each row whose final structure has anomalies (its .anomalies)."""
    return tuple(f"{r.system_id} ({','.join(r.anomalies)})" for r in as_results(rows) if r.anomalies)


def unknown_anomalies(rows: Sequence[ResultRow]) -> int:
    """Rows whose anomalies are unknown (no OC20 tags, no final structure, or not recorded)."""
    return sum(r.anomalies is None for r in as_results(rows))


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
    minima: dict[str, int] | None = None  # SAME / OTHER_LOWER / OTHER_HIGHER / UNKNOWN -> systems; None: not compared
    other_minima: tuple[str, ...] = ()  # other_minima(): the systems in another minimum than the reference's
    anomalies: tuple[str, ...] = ()  # anomalous_systems() of the method
    reference_anomalies: tuple[str, ...] = ()  # ... and of the reference, on the same systems
    anomalies_unknown: int = 0  # systems whose anomalies are unknown for the method

    @property
    def ratio(self) -> float:
        return self.method_parent_calls / self.reference_parent_calls if self.reference_parent_calls else math.nan

    @property
    def accuracy(self) -> float:
        return self.accurate / self.systems if self.systems else math.nan


def is_accurate(row: ResultRow, reference_row: ResultRow, tolerance: float = ENERGY_TOLERANCE) -> bool:
    """Parent-confirmed relaxed and parent energy <= reference energy + tolerance."""
    row, reference_row = SystemResult.of(row), SystemResult.of(reference_row)
    return row.converged and row.final_energy <= reference_row.final_energy + tolerance


def why_not_accurate(row: ResultRow, reference_row: ResultRow, tolerance: float = ENERGY_TOLERANCE) -> str:
    """'' when accurate; otherwise why: 'not relaxed: <outcome or status>' or 'dE +0.051 eV' (eV)."""
    row, reference_row = SystemResult.of(row), SystemResult.of(reference_row)
    if not row.converged:
        return f"not relaxed: {row.outcome or row.status or 'unfinished'}"
    de = row.final_energy - reference_row.final_energy
    return f"dE {de:+.3f} eV" if not de <= tolerance else ""


def missed_systems(rows: Sequence[ResultRow], reference_rows: Sequence[ResultRow],
                   tolerance: float = ENERGY_TOLERANCE) -> tuple[str, ...]:
    """'<system id> (why)' for each system of `rows` (matched by id) that is not accurate against the reference."""
    ref = _by_id(reference_rows)
    out = []
    for r in as_results(rows):
        if r.system_id in ref:
            why = why_not_accurate(r, ref[r.system_id], tolerance)
            if why:
                out.append(f"{r.system_id} ({why})")
    return tuple(out)


def compare(method: str, rows: Sequence[ResultRow], reference: str, reference_rows: Sequence[ResultRow],
            matches: Mapping[str, tuple[str, float]] | None = None) -> Comparison:
    """Compare per-system summary rows (matched by system_id) of a method and a reference; `matches`: the
    minimum_matches of the two (None: minima not compared)."""
    rows, reference_rows = as_results(rows), as_results(reference_rows)
    ref = _by_id(reference_rows)
    matched = [(r, ref[r.system_id]) for r in rows if r.system_id in ref]
    minima = dict(Counter(kind for kind, _ in matches.values())) if matches is not None else None
    return Comparison(
        method=method,
        reference=reference,
        systems=len(matched),
        method_parent_calls=sum(r.parent_calls for r, _ in matched),
        reference_parent_calls=sum(q.parent_calls for _, q in matched),
        method_converged=sum(r.converged for r, _ in matched),
        accurate=sum(is_accurate(r, q) for r, q in matched),
        missed=missed_systems(rows, reference_rows),
        minima=minima,
        other_minima=other_minima(matches or {}),
        anomalies=anomalous_systems([r for r, _ in matched]),
        reference_anomalies=anomalous_systems([q for _, q in matched]),
        anomalies_unknown=unknown_anomalies([r for r, _ in matched]),
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
    anomalous: int = 0  # systems whose final structure has an OC20 anomaly (learner/anomaly.py)
    anomalies_unknown: int = 0  # systems whose anomalies are unknown
    same_minimum: int = -1  # systems in the reference's minimum (minimum_match); -1: not compared
    other_lower: int = -1  # in another minimum, lower than the reference's
    other_higher: int = -1  # in another minimum, not lower
    # Systems whose reference ended with no OC20 anomaly (known and none), and how many of them this method was
    # accurate on: a reference that dissociated or rebuilt its surface sets an energy an intact adsorbate cannot reach.
    reference_clean: int = 0
    accurate_where_reference_clean: int = 0


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def table_row(method: str, rows: Sequence[ResultRow], reference_rows: Sequence[ResultRow],
              tolerance: float = ENERGY_TOLERANCE, matches: Mapping[str, tuple[str, float]] | None = None) -> MethodRow:
    """Table 1 figures of `method` from its rows' parent_calls, final_energy, outcome, scf_cycles, parent_wall_s
    and anomalies; `matches`: minimum_matches against the reference (None: minima not compared)."""
    ref = _by_id(reference_rows)
    matched = [(r, ref[r.system_id]) for r in as_results(rows) if r.system_id in ref and ref[r.system_id].parent_calls]
    n = len(matched)
    percents = [100.0 * r.parent_calls / q.parent_calls for r, q in matched]
    mean, sem = _mean_sem(percents)
    de = [r.final_energy - q.final_energy for r, q in matched]
    relaxed = [r.converged for r, _ in matched]
    frac = (lambda k: k / n if n else math.nan)
    return MethodRow(
        method=method,
        systems=n,
        parent_calls=sum(r.parent_calls for r, _ in matched),
        percent_of_reference_mean=mean,
        percent_of_reference_sem=sem,
        lower=frac(sum(d <= -tolerance for d in de)),
        same=frac(sum(-tolerance < d < tolerance for d in de)),
        accurate=frac(sum(ok and d <= tolerance for ok, d in zip(relaxed, de))),
        relaxed=frac(sum(relaxed)),
        scf_cycles=sum(int(r.scf_cycles) for r, _ in matched),
        parent_wall_s=sum(float(r.parent_wall_s) for r, _ in matched),
        anomalous=sum(bool(r.anomalies) for r, _ in matched),
        anomalies_unknown=unknown_anomalies([r for r, _ in matched]),
        reference_clean=sum(q.anomalies == () for _, q in matched),
        accurate_where_reference_clean=sum(r.converged and d <= tolerance and q.anomalies == ()
                                           for (r, q), d in zip(matched, de)),
        **({} if matches is None else {
            "same_minimum": sum(matches.get(r.system_id, (UNKNOWN,))[0] == SAME for r, _ in matched),
            "other_lower": sum(matches.get(r.system_id, (UNKNOWN,))[0] == OTHER_LOWER for r, _ in matched),
            "other_higher": sum(matches.get(r.system_id, (UNKNOWN,))[0] == OTHER_HIGHER for r, _ in matched)}),
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
