"""Plain-text tables for the terminal: per-system summary and method comparison."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .learner.metrics import Comparison
from .records import OUTCOME_CONVERGED


#: What the table's columns are, printed under it.
COLUMNS = ("parent = parent calls; surr. = surrogate steps (optimizer steps on the surrogate, no parent call); "
           "E_parent/eV and fmax (eV/A, free atoms) = the last parent call's")


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def summary_table(rows: Sequence[dict]) -> str:
    """Per system: status, outcome, parent calls, surrogate steps, final parent energy and fmax."""
    header = f"{'system':<32} {'status':<7} {'outcome':<16} {'parent':>6} {'surr.':>6} {'E_parent/eV':>12} {'fmax':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['system_id'][:32]:<32} {r['status']:<7} {r.get('outcome', '') or '-':<16} {r['parent_calls']:>6} "
            f"{r['surrogate_steps']:>6} {_num(r['final_energy'], '12.4f'):>12} {_num(r['final_fmax'], '7.3f'):>7}"
        )
        if r.get("error"):
            lines.append(f"    error: {first_line(r['error'])}")
    total_parent = sum(r["parent_calls"] for r in rows)
    converged = sum(r.get("outcome") == OUTCOME_CONVERGED for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{plural(len(rows), 'system')}, {converged} parent-confirmed relaxed, "
                 f"{plural(total_parent, 'parent call')}")
    lines.append(COLUMNS)
    if any("\n" in (r.get("error") or "") for r in rows):
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


def comparison_table(comparisons: Sequence[Comparison]) -> str:
    """Totals and ratio of parent calls, and accuracy, of each comparison."""
    header = f"{'method':<14} {'reference':<11} {'systems':>7} {'parent calls':>12} {'reference':>9} {'ratio':>6} {'relaxed':>7} {'accurate':>8}"
    lines = [header, "-" * len(header)]
    for c in comparisons:
        lines.append(
            f"{c.method:<14} {c.reference:<11} {c.systems:>7} {c.method_parent_calls:>12} {c.reference_parent_calls:>9} "
            f"{_num(c.ratio, '6.3f'):>6} {c.method_converged:>7} {_num(100 * c.accuracy, '7.0f')}%"
        )
    lines.append("ratio = method parent calls / reference parent calls; accurate = parent-confirmed relaxed and "
                 "E <= E_reference + 0.02 eV")
    for c in comparisons:
        if c.missed:
            lines.append(f"{c.method}: not accurate on {len(c.missed)} of {c.systems}: {', '.join(c.missed)}")
    return "\n".join(lines)
