"""The paper's speed/accuracy benchmark: the same systems relaxed by several methods, one table.

Methods: parent-only references (bfgs, cg), warm-start, ASE's GPMin (gpmin: the no-prior machine-learning
baseline), and the online learner with each query rule (relaxed-only, k-steps, uncertainty). Each method
writes its own store '<output stem>.<method>.h5', so a bench can be resumed and every number in the table
traced to stored parent calls. A second table says where each method's parent calls went: by the reason
stored with each call, and how many came after the parent fmax first fell below 0.1 eV/A.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .campaign import run_campaign
from .campaign.driver import Progress
from .config import RunConfig, with_overrides
from .learner.metrics import (SAME_MINIMUM_DISTANCE, SETTLED_FMAX, CallBreakdown, MethodRow, anomalous_systems,
                              call_breakdown, minimum_matches, missed_systems, other_minima, table_row)
from .learner.reference import REFERENCE_METHODS
from .records import QUERY_RULES, REASONS, ResultRow, SystemSpec, as_results
from .reproducible import HOW, environment
from .store import load_final_positions, load_parent_calls

QUERY_METHODS = QUERY_RULES
ALL_METHODS = (*REFERENCE_METHODS, *QUERY_METHODS)
#: Column order of the breakdown: the query rule's reasons (Proposal.reason), then reference method names.
REASON_ORDER = (*REASONS, *REFERENCE_METHODS)


@dataclass
class BenchResult:
    """Per-method summary rows and stores, and the Table 1 rows against the reference."""

    reference: str
    rows: dict[str, list[ResultRow]] = field(default_factory=dict)  # records.SystemResult, as stored
    stores: dict[str, Path] = field(default_factory=dict)
    table: list[MethodRow] = field(default_factory=list)
    breakdown: list[CallBreakdown] = field(default_factory=list)
    repeats: dict[str, list[int]] = field(default_factory=dict)  # method -> parent-call total of each repeat
    # method -> system id -> (metrics.SAME / OTHER_LOWER / OTHER_HIGHER / UNKNOWN, largest free-atom distance in A)
    matches: dict[str, dict[str, tuple[str, float]]] = field(default_factory=dict)
    environment: str = ""  # reproducible.environment() of the process that ran the bench


def method_config(config: RunConfig, method: str) -> tuple[RunConfig, str]:
    """The run config and campaign method for one bench method, with its own store."""
    out = Path(config.campaign.output)
    store = str(out.with_name(f"{out.stem}.{method}{out.suffix or '.h5'}"))
    if method in QUERY_METHODS:
        ensemble = QUERY_RULES[method].needs_ensemble
        surrogate = {"ensemble_size": max(config.surrogate.ensemble_size, 3)} if ensemble else {}
        return with_overrides(config, learner={"query": method}, campaign={"output": store}, surrogate=surrogate), "online"
    if method in REFERENCE_METHODS:
        return with_overrides(config, campaign={"output": str(out)}), method
    raise ValueError(f"unknown bench method {method!r}; known: {', '.join(ALL_METHODS)}")


def run_bench(
    config: RunConfig,
    systems: Sequence[SystemSpec],
    methods: Sequence[str],
    reference: str = "bfgs",
    progress: Callable[[str], Callable[[Progress], None]] | None = None,
    restart: bool = False,
    repeats: int = 1,
    accept_parent_change: bool = False,
) -> BenchResult:
    """Run every method (the reference first) on `systems` and build the table.

    repeats > 1 runs every method that many times in all, repeat k into stores '<stem>.repeat<k>.<method>.h5',
    and records each repeat's parent-call total (BenchResult.repeats); the table is the first repeat's.
    accept_parent_change: resume stores run with other parent settings (runner.parent_change) instead of refusing.
    Raises ValueError for repeats < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    order = [reference] + [m for m in methods if m != reference]
    result = BenchResult(reference=reference, environment=environment(config.parent.calculator))
    for k in range(1, repeats + 1):
        base = config
        if k > 1:
            out = Path(config.campaign.output)
            repeat_store = out.with_name(f"{out.stem}.repeat{k}{out.suffix or '.h5'}")
            base = with_overrides(config, campaign={"output": str(repeat_store)})
        for method in order:
            cfg, campaign_method = method_config(base, method)
            label = method if k == 1 else f"{method} (repeat {k})"
            path, run = run_campaign(cfg, list(systems), campaign_method, progress(label) if progress else None,
                                     restart=restart, accept_parent_change=accept_parent_change)
            result.repeats.setdefault(method, []).append(sum(r.parent_calls for r in run.rows))
            if k == 1:
                result.stores[method] = path
                result.rows[method] = run.rows
    by_id = {s.system_id: s for s in systems}
    reference_finals = load_final_positions(result.stores[reference])
    for m in order:
        result.matches[m] = minimum_matches(by_id, result.rows[m], load_final_positions(result.stores[m]),
                                            result.rows[reference], reference_finals)
    result.table = [table_row(m, result.rows[m], result.rows[reference], matches=result.matches[m]) for m in order]
    result.breakdown = [breakdown(m, result.stores[m], result.rows[m]) for m in order]
    return result


def repeatability_text(result: BenchResult) -> str:
    """How the numbers were made repeatable, and with several repeats, each method's totals and their spread."""
    lines = [HOW + "."]
    if result.environment:
        lines.append(f"\nMade on: {result.environment}. Another CPU or other versions round differently and the "
                     "learner amplifies it: compare figures within one table, not across installs.")
    if not any(len(totals) > 1 for totals in result.repeats.values()):
        lines.append("\nOne run per method. `--repeats N` runs each method N times and reports the spread of the "
                     "parent-call totals: use it on GPUs, where some kernels are not deterministic.")
        return "\n".join(lines)
    lines += ["", "| method | parent calls in each repeat | spread (max - min) | spread, % of mean |",
              "|---|---|---:|---:|"]
    for method, totals in result.repeats.items():
        spread = max(totals) - min(totals)
        mean = sum(totals) / len(totals)
        percent = 100 * spread / mean if mean else 0.0
        lines.append(f"| {method} | {', '.join(map(str, totals))} | {spread} | {percent:.1f}% |")
    return "\n".join(lines)


def missed_text(result: BenchResult) -> str:
    """One line per method naming the systems that were not accurate against the reference, and why."""
    lines = []
    for method, rows in result.rows.items():
        if method == result.reference:
            continue
        missed = missed_systems(rows, result.rows[result.reference])
        lines.append(f"- {method}: " + (", ".join(missed) if missed else "accurate on every system"))
    return "\n".join(lines)


def minima_text(result: BenchResult) -> str:
    """One line per method naming the systems that ended in another minimum than the reference's."""
    lines = []
    for method, matches in result.matches.items():
        if method == result.reference:
            continue
        other = other_minima(matches)
        everywhere = f"the {result.reference} minimum on every system"
        lines.append(f"- {method}: " + (", ".join(other) if other else everywhere))
    return "\n".join(lines)


def anomalies_text(result: BenchResult) -> str:
    """One line per method (the reference too) naming the systems whose final structure has anomalies."""
    lines = []
    for method, rows in result.rows.items():
        flagged = anomalous_systems(rows)
        unknown = [r.system_id for r in as_results(rows) if r.anomalies is None]
        line = f"- {method}: " + (", ".join(flagged) if flagged else "none")
        lines.append(line + (f"; unknown on {len(unknown)}: {', '.join(unknown)}" if unknown else ""))
    return "\n".join(lines)


def breakdown(method: str, store: str | Path, rows: Sequence[ResultRow]) -> CallBreakdown:
    """Where `method`'s parent calls went, on the systems of `rows` (its store may hold others too)."""
    ids = {r.system_id for r in as_results(rows)}
    calls = {sid: c for sid, c in load_parent_calls(store).items() if sid in ids}
    return call_breakdown(method, calls)


def breakdown_table(result: BenchResult) -> str:
    """Parent calls per method by the reason each was made, and those after fmax first fell below 0.1 eV/A."""
    seen = {reason for b in result.breakdown for reason in b.by_reason}
    reasons = [r for r in REASON_ORDER if r in seen] + sorted(seen - set(REASON_ORDER) - {""})
    reasons += [""] if "" in seen else []
    names = [r or "unrecorded" for r in reasons]
    threshold = result.breakdown[0].threshold if result.breakdown else SETTLED_FMAX
    columns = ["method", "systems", "parent calls", *names, f"after fmax < {threshold:g} eV/A"]
    lines = [
        f"| {' | '.join(columns)} |",
        "|---|" + "---:|" * (3 + len(names)),
    ]
    for b in result.breakdown:
        cells = [b.method, b.systems, b.parent_calls, *(b.by_reason.get(r, 0) for r in reasons), b.after_settled]
        lines.append(f"| {' | '.join(map(str, cells))} |")
    return "\n".join(lines)


def _pm(mean: float, sem: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.1f} ± {sem:.1f}" if not math.isnan(sem) else f"{mean:.1f}"


#: What the minimum and anomaly columns of markdown_table mean.
MINIMA_NOTE = (f"same minimum = final structure within {SAME_MINIMUM_DISTANCE} A of the reference's on every free "
               "atom (nearest periodic images); other, lower / higher = another minimum, lower / not lower in parent "
               "energy than the reference's; anomalies = systems whose final structure OC20 flags against its initial "
               "one (dissociated, desorbed, surface_changed, intercalated: fairchem-data-oc's DetectTrajAnomaly); "
               "unknown without OC20 tags; accurate where the reference ended without anomaly = accurate systems "
               "among those whose reference's final structure OC20 would keep (its anomalies known and none).")


def markdown_table(result: BenchResult) -> str:
    """Table 1 of the paper, for this bench: speed relative to the reference, accuracy, same minimum as the
    reference, and anomalies (counts of systems)."""
    lines = [
        f"| method | systems | parent calls | % of {result.reference} calls (mean ± SEM) | dE <= -0.02 | "
        "-0.02 < dE < 0.02 | accurate (relaxed, dE <= 0.02) | parent-confirmed relaxed | SCF cycles | parent wall s | "
        f"same minimum | other, lower | other, higher | anomalies | anomalies unknown "
        f"| accurate where {result.reference} ended without anomaly |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    count = (lambda n: "-" if n < 0 else str(n))
    clean = (lambda r: f"{r.accurate_where_reference_clean}/{r.reference_clean}" if r.reference_clean else "-")
    for r in result.table:
        lines.append(
            f"| {r.method} | {r.systems} | {r.parent_calls} | {_pm(r.percent_of_reference_mean, r.percent_of_reference_sem)} "
            f"| {100 * r.lower:.0f}% | {100 * r.same:.0f}% | {100 * r.accurate:.0f}% | {100 * r.relaxed:.0f}% "
            f"| {r.scf_cycles} | {r.parent_wall_s:.2f} | {count(r.same_minimum)} | {count(r.other_lower)} "
            f"| {count(r.other_higher)} | {r.anomalous} | {r.anomalies_unknown} | {clean(r)} |"
        )
    return "\n".join(lines)


def write_csv(result: BenchResult, path: str | Path) -> None:
    rows = [asdict(r) for r in result.table]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
