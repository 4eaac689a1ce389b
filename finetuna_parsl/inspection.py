"""`finetuna-parsl inspect STORE`: what a store holds, per system and in total, without re-running anything.

A store a running campaign holds cannot be opened (HDF5's lock); its live summary (live.py), which the
driver rewrites beside it, is read instead, and the report says which of the two it read. The store of a
campaign known to be running (a live process on this host, or a summary rewritten within live.STALE_S by a
driver on another host) is never opened at all, so a filesystem without locking is no risk either.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import live
from .records import (STATUS_DONE, STATUS_FAILED, STATUS_INTERRUPTED, STATUS_PENDING, STATUS_RUNNING, ResultRow,
                      SystemResult, as_results)
from .report import COLUMNS, anomaly_cell, anomaly_totals, first_line, plural
from .store import StoreError, open_h5, read_summary


@dataclass
class Inspection:
    """What was read and from where: source 'store' (the HDF5 file) or 'live summary' (the JSON beside it)."""

    store: Path
    source: str
    method: str
    rows: list[SystemResult] = field(default_factory=list)
    note: str = ""  # one line on where the numbers come from


def inspect_store(path: str | Path) -> Inspection:
    """Per-system rows (records.SystemResult) of the store at `path`, or of its live summary.

    Raises StoreError (one line) when neither the store nor a live summary beside it can be read.
    """
    path = Path(path)
    summary = live.read(path)
    if summary is not None and live.writer_alive(summary):
        return _from_summary(path, summary, "a campaign is writing the store")
    try:
        with open_h5(path, "r") as f:
            rows, method = read_summary(f), str(f.attrs.get("method", "online"))
    except Exception as exc:  # noqa: BLE001 - without file locking a store mid-write can fail in many ways
        if summary is None:
            raise StoreError(str(exc).splitlines()[0] if str(exc) else f"cannot read {path}") from exc
        why = "the store is held by another process" if "held by another process" in str(exc) else \
            f"the store could not be read ({first_line(str(exc))})"
        return _from_summary(path, summary, why)
    return Inspection(store=path, source="store", method=method, rows=rows, note=f"read from the store {path}")


def _from_summary(path: Path, summary: dict, why: str) -> Inspection:
    note = (f"read from the live summary {live.summary_path(path)} ({why}): written {summary.get('written')} by "
            f"pid {summary.get('pid')} on {summary.get('host')}, campaign {summary.get('state')}")
    return Inspection(store=path, source="live summary", method=str(summary.get("method", "online")),
                      rows=as_results(summary.get("systems", [])), note=note)


def _num(value, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _reasons(by_reason: dict) -> str:
    return " ".join(f"{reason or 'unrecorded'}:{n}" for reason, n in by_reason.items()) or "-"


def totals(rows: Sequence[ResultRow]) -> dict:
    """Campaign totals: systems by status, how many are left to do (`left`: not done or failed) and by outcome,
    parent calls (total, by reason), surrogate steps, SCF cycles, parent wall time (s), and systems by anomaly
    kind ("none": checked and clean; "unknown")."""
    rows = as_results(rows)
    by_reason: Counter[str] = Counter()
    anomalies: Counter[str] = Counter()
    for r in rows:
        by_reason.update(r.parent_calls_by_reason)
        anomalies.update(["unknown"] if r.anomalies is None else (r.anomalies or ["none"]))
    status = Counter(r.status for r in rows)
    return {
        "systems": len(rows),
        "status": dict(status),
        "left": len(rows) - status[STATUS_DONE] - status[STATUS_FAILED],  # pending, running or interrupted
        "outcome": dict(Counter(r.outcome or "-" for r in rows if r.ended)),
        "parent_calls": sum(r.parent_calls for r in rows),
        "parent_calls_by_reason": dict(by_reason),
        "surrogate_steps": sum(r.surrogate_steps for r in rows),
        "scf_cycles": sum(int(r.scf_cycles) for r in rows),
        "parent_wall_s": sum(float(r.parent_wall_s) for r in rows),
        "anomalies": dict(anomalies),
    }


def report(ins: Inspection) -> str:
    """The inspection as text: where it was read, a row per system, errors and warnings in full, totals."""
    header = (f"{'system':<32} {'status':<11} {'outcome':<16} {'parent':>6} {'surr.':>6} {'E_parent/eV':>12} "
              f"{'fmax':>7}  {'anomalies':<16} parent calls by reason")
    lines = [f"store {ins.store} (method {ins.method}): {ins.note}", "", header, "-" * len(header)]
    rows = as_results(ins.rows)
    for r in rows:
        lines.append(
            f"{r.system_id[:32]:<32} {r.status:<11} {r.outcome or '-':<16} {r.parent_calls:>6} "
            f"{r.surrogate_steps:>6} {_num(r.final_energy, '12.4f'):>12} {_num(r.final_fmax, '7.3f'):>7}  "
            f"{anomaly_cell(r):<16} {_reasons(r.parent_calls_by_reason)}"
        )
    problems = [r for r in rows if r.error or r.warnings]
    if problems:
        lines += ["", "errors and warnings, in full:"]
        for r in problems:
            if r.error:
                lines.append(f"{r.system_id}: error:")
                lines += [f"    {line}" for line in str(r.error).splitlines()]
            for w in r.warnings:
                lines.append(f"{r.system_id}: warning: {w}")
    t = totals(rows)
    status = ", ".join(f"{n} {s}" for s, n in sorted(t["status"].items()))
    outcome = ", ".join(f"{n} {o}" for o, n in sorted(t["outcome"].items())) or "none finished"
    scf = f"{plural(t['scf_cycles'], 'SCF cycle')}, " if t["scf_cycles"] else ""  # none: a parent without SCF (EMT)
    lines += [
        "-" * len(header),
        f"{plural(t['systems'], 'system')}: {status}; {t['left']} left to do; outcomes: {outcome}",
        f"{plural(t['parent_calls'], 'parent call')} ({_reasons(t['parent_calls_by_reason'])}), "
        f"{plural(t['surrogate_steps'], 'surrogate step')}, {scf}{t['parent_wall_s']:.1f} s in the parent",
        anomaly_totals(rows),
    ]
    unknown = Counter(r.anomalies_unknown for r in rows if r.anomalies is None)
    lines += [f"anomalies unknown for {n}: {why}" for why, n in unknown.items()]
    stale = t["status"].get(STATUS_RUNNING, 0) + t["status"].get(STATUS_INTERRUPTED, 0)
    if ins.source == "store" and stale:
        lines.append(f"{plural(stale, 'system')} marked running or interrupted: their run stopped; the same run "
                     "command resumes them")
    if ins.source == "store" and t["status"].get(STATUS_PENDING, 0):
        lines.append(f"{plural(t['status'][STATUS_PENDING], 'system')} pending (not started): the same run command "
                     "runs them")
    lines.append(COLUMNS)
    lines.append("outcomes: converged = a parent call confirmed fmax <= learner.fmax; parent_budget / "
                 "surrogate_budget = that budget ran out first (not relaxed)")
    return "\n".join(lines)
