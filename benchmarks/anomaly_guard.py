#!/usr/bin/env python
"""The learner's anomaly guard and adsorbate leash, before and after -> benchmarks/anomaly-guard.md.

Usage: python benchmarks/anomaly_guard.py [--config configs/demo.yaml] [--runs runs/anomaly-guard]
                                          [--out benchmarks/anomaly-guard.md] [--systems N] [--leash 0.3]

Runs the bench (finetuna_parsl.bench.run_bench: the reference BFGS, then k-steps, each into its own store,
resumable) once per variant of the config's learner: the guard off (what the learner did before issue 26), the
guard on, both without the leash, and the guard on with adsorbate_leash (the measured recipe since 2026-12-06 has
both, the leash at 0.3 A). Writes one table: parent calls and their ratio to
BFGS's, accuracy, systems with OC20 anomalies (k-steps' and BFGS's, named), and same / other-lower /
other-higher minimum against BFGS's final structure (learner.metrics.minimum_match, 0.3 A).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from finetuna_parsl.bench import run_bench
from finetuna_parsl.config import load_config, with_overrides
from finetuna_parsl.learner.metrics import SAME_MINIMUM_DISTANCE, anomalous_systems, other_minima
from finetuna_parsl.reproducible import HOW
from finetuna_parsl.systems import load_systems


def variants(leash: float) -> list[tuple[str, str, dict]]:
    """(label, folder, learner overrides)."""
    return [
        ("guard off, no leash", "guard-off", {"anomaly_guard": False, "adsorbate_leash": None}),
        ("guard on, no leash", "guard-on", {"anomaly_guard": True, "adsorbate_leash": None}),
        (f"guard on + adsorbate_leash {leash:g} A (the measured recipe at 0.3)", "leash",
         {"anomaly_guard": True, "adsorbate_leash": leash}),
    ]


@click.command()
@click.option("--config", "config_path", default="configs/demo.yaml", show_default=True)
@click.option("--runs", default="runs/anomaly-guard", show_default=True, help="Folder for the stores.")
@click.option("--out", default="benchmarks/anomaly-guard.md", show_default=True)
@click.option("--systems", "count", type=int, default=None, help="Only the first N systems.")
@click.option("--leash", default=0.3, show_default=True, help="adsorbate_leash of the third variant, A.")
@click.option("--only", default=None, help="Comma-separated folders of the variants to run (default: all).")
def main(config_path: str, runs: str, out: str, count: int | None, leash: float, only: str | None) -> None:
    base = load_config(config_path)
    systems, _ = load_systems(base.systems.source, count or base.systems.count, base.systems.seed)
    chosen = variants(leash) if only is None else [v for v in variants(leash) if v[1] in only.split(",")]
    lines = [
        "| learner | parent calls (k-steps / bfgs) | ratio | accurate | k-steps anomalies | bfgs anomalies | "
        "same minimum | other, lower | other, higher | anomaly calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    for label, folder, learner in chosen:
        store = f"{runs}/{folder}/{Path(base.campaign.output).name}"
        config = with_overrides(base, learner=learner, campaign={"output": store})
        result = run_bench(config, systems, ["bfgs", "k-steps"], "bfgs")
        ref, row = result.table
        rows, ref_rows = result.rows["k-steps"], result.rows["bfgs"]
        calls = sum((r.get("parent_calls_by_reason") or {}).get("anomaly", 0) for r in rows)
        lines.append(
            f"| {label} | {row.parent_calls} / {ref.parent_calls} | {row.parent_calls / ref.parent_calls:.3f} | "
            f"{round(row.accurate * row.systems)}/{row.systems} | {row.anomalous} | {ref.anomalous} | "
            f"{row.same_minimum} | {row.other_lower} | {row.other_higher} | {calls} |")
        flagged, ref_flagged = anomalous_systems(rows), anomalous_systems(ref_rows)
        details += [f"- {label}: k-steps anomalies: {', '.join(flagged) or 'none'}; bfgs anomalies: "
                    f"{', '.join(ref_flagged) or 'none'}; other minimum: "
                    f"{', '.join(other_minima(result.matches['k-steps'])) or 'none'}"]
        print(lines[-1], flush=True)
    command = " ".join(["python", "benchmarks/anomaly_guard.py", *sys.argv[1:]])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    Path(out).write_text(
        f"# Anomaly guard and adsorbate leash: {len(systems)} systems from `{base.systems.source}`\n\n"
        f"Made by: `{command}` at commit `{commit}` ({config_path}, k-steps k={base.learner.k}); {HOW}.\n\n"
        f"World: parent `{base.parent.kind}`, prior `{base.surrogate.checkpoint}`.\n\n"
        + "\n".join(lines) + "\n\n"
        "accurate: parent-confirmed relaxed and E <= E_bfgs + 0.02 eV; anomalies: systems whose last parent-confirmed "
        "structure fairchem-data-oc's DetectTrajAnomaly flags against the initial one; same minimum: every free atom "
        f"within {SAME_MINIMUM_DISTANCE} A of BFGS's final structure (periodic images), other = lower / higher in "
        "parent energy; anomaly calls: parent calls the guard asked for (reason `anomaly`).\n\n" + "\n".join(details) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
