"""Plain-text tables for the terminal: per-system summary and method comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .learner.anomaly import describe
from .learner.metrics import MINIMA, SAME_MINIMUM_DISTANCE, UNKNOWN, Comparison
from .records import ResultRow, SystemResult, as_results


#: What the table's columns are, printed under it.
COLUMNS = ("parent = parent calls; surr. = surrogate steps (optimizer steps on the surrogate, no parent call); "
           "E_parent/eV and fmax (eV/A, free atoms) = the last parent call's")


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def anomaly_cell(row: ResultRow) -> str:
    """The row's anomalies for a table: "none", "unknown" or the kinds joined by "," (learner.anomaly)."""
    return describe(SystemResult.of(row).anomalies)


def anomaly_totals(rows: Sequence[ResultRow]) -> str:
    """One line: how many systems have anomalies (named, with their kinds) and how many are unknown."""
    rows = as_results(rows)
    flagged = [f"{r.system_id} ({','.join(r.anomalies)})" for r in rows if r.anomalies]
    unknown = sum(r.anomalies is None for r in rows)
    text = f"anomalies (OC20 flags of the last parent-confirmed structure): {len(flagged)} of {plural(len(rows), 'system')}"
    text += f": {', '.join(flagged)}" if flagged else ""
    return text + (f"; unknown for {unknown}" if unknown else "")


def summary_table(rows: Sequence[ResultRow]) -> str:
    """Per system: status, outcome, parent calls, surrogate steps, final parent energy and fmax, anomalies."""
    rows = as_results(rows)
    header = (f"{'system':<32} {'status':<7} {'outcome':<16} {'parent':>6} {'surr.':>6} {'E_parent/eV':>12} "
              f"{'fmax':>7}  anomalies")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.system_id[:32]:<32} {r.status:<7} {r.outcome or '-':<16} {r.parent_calls:>6} "
            f"{r.surrogate_steps:>6} {_num(r.final_energy, '12.4f'):>12} {_num(r.final_fmax, '7.3f'):>7}  "
            f"{anomaly_cell(r)}"
        )
        if r.error:
            lines.append(f"    error: {first_line(r.error)}")
    total_parent = sum(r.parent_calls for r in rows)
    converged = sum(r.converged for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{plural(len(rows), 'system')}, {converged} parent-confirmed relaxed, "
                 f"{plural(total_parent, 'parent call')}")
    lines.append(anomaly_totals(rows))
    lines.append(COLUMNS)
    if any("\n" in r.error for r in rows):
        lines.append("full reasons (exit code, output tails, command, folder): the 'error' attribute of "
                     "/systems/<id> in the store")
    return "\n".join(lines)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 system', '2 systems' (`many` for an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def first_line(text: str) -> str:
    """The first non-empty line of a (possibly multi-line) reason."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def _minima_cells(c: Comparison) -> list[str]:
    return [str(c.minima.get(kind, 0)) if c.minima is not None else "-" for kind in MINIMA]


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """Totals and ratio of parent calls, accuracy, same minimum as the reference, and anomalies, of each comparison."""
    header = (f"{'method':<14} {'reference':<11} {'systems':>7} {'parent calls':>12} {'reference':>9} {'ratio':>6} "
              f"{'relaxed':>7} {'accurate':>8} {'same':>5} {'lower':>5} {'higher':>6} {'anomalies':>9} "
              f"{'ref. anom.':>10}")
    lines = [header, "-" * len(header)]
    for c in comparisons:
        same, lower, higher = _minima_cells(c)
        lines.append(
            f"{c.method:<14} {c.reference:<11} {c.systems:>7} {c.method_parent_calls:>12} {c.reference_parent_calls:>9} "
            f"{_num(c.ratio, '6.3f'):>6} {c.method_converged:>7} {_num(100 * c.accuracy, '7.0f')}% {same:>5} "
            f"{lower:>5} {higher:>6} {len(c.anomalies):>9} {len(c.reference_anomalies):>10}"
        )
    lines.append("ratio = method parent calls / reference parent calls; accurate = parent-confirmed relaxed and "
                 "E <= E_reference + 0.02 eV")
    lines.append(f"same = final structure within {SAME_MINIMUM_DISTANCE} A of the reference's on every free atom "
                 "(periodic images); lower / higher = another minimum, lower / not lower in parent energy; "
                 "anomalies = systems whose final structure OC20 flags (dissociated, desorbed, surface_changed, "
                 "intercalated), the method's and the reference's")
    for c in comparisons:
        if c.missed:
            lines.append(f"{c.method}: not accurate on {len(c.missed)} of {c.systems}: {', '.join(c.missed)}")
        if c.other_minima:
            lines.append(f"{c.method}: another minimum than {c.reference} on {len(c.other_minima)} of {c.systems}: "
                         f"{', '.join(c.other_minima)}")
        if c.minima and c.minima.get(UNKNOWN):
            lines.append(f"{c.method}: minimum not compared on {c.minima[UNKNOWN]} systems (no final structure)")
        for who, flagged in ((c.method, c.anomalies), (c.reference, c.reference_anomalies)):
            if flagged:
                lines.append(f"{who}: anomalies on {len(flagged)} of {c.systems}: {', '.join(flagged)}")
        if c.anomalies_unknown:
            lines.append(f"{c.method}: anomalies unknown on {c.anomalies_unknown} systems (no OC20 tags, or not "
                         "recorded: inspect says why)")
    return "\n".join(lines)
