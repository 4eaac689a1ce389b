"""Per-system table of the paper's 30 OC20 systems in the stand-in's world, beside the paper's VASP counts.

    python benchmarks/oc20_paper.py [--config configs/oc20-paper.yaml] [--stores runs/oc20-paper]
        [--standins benchmarks/oc20-paper/standins.jsonl] [--out benchmarks/oc20-paper/per_system.md]

Reads the stores that `finetuna-parsl bench configs/oc20-paper.yaml --methods ...` wrote (`<stores>.<method>.h5`,
every method found), the paper's per-system DFT calls (`finetuna_parsl.systems.paper_counts()`: ASE BFGS and GPMin
on VASP, FINETUNA k-steps with GemNet-T) and, where present, the stand-ins' plain ASE BFGS runs
(benchmarks/standins.py). Writes one row per system: parent calls of each method (with its outcome where it did
not converge), the paper's counts, and the elements the config's prior (`surrogate.checkpoint`) never saw in
pretraining (its model card).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from finetuna_parsl.bench import ALL_METHODS
from finetuna_parsl.store import load_summary
from finetuna_parsl.config import load_config
from finetuna_parsl.surrogate.checkpoint import resolve_checkpoint
from finetuna_parsl.surrogate.model import read_card, unseen_elements
from finetuna_parsl.systems import load_systems, paper_counts


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = v.argsort()
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties share their mean rank
            r[v == value] = r[v == value].mean()
        return r
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "done":
        return f"{row['parent_calls']} ({row['status']})"
    if row["outcome"] != "converged":
        return f"{row['parent_calls']} ({row['outcome']})"
    return str(row["parent_calls"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/oc20-paper.yaml", help="the bench's config: its prior is named")
    parser.add_argument("--stores", default="runs/oc20-paper", help="store stem the bench wrote (<stem>.<method>.h5)")
    parser.add_argument("--standins", default="benchmarks/oc20-paper/standins.jsonl")
    parser.add_argument("--out", default="benchmarks/oc20-paper/per_system.md")
    args = parser.parse_args(argv)
    stem = Path(args.stores)
    rows: dict[str, dict[str, dict]] = {}
    for method in ALL_METHODS:
        path = stem.with_name(f"{stem.name}.{method}.h5")
        if path.exists():
            rows[method] = {r["system_id"]: r for r in load_summary(path)}
    standins: dict[str, dict[str, dict]] = {}
    if Path(args.standins).exists():
        for line in Path(args.standins).read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if record.get("kind") == "timing":  # benchmarks/standins.py's alternating timing rows
                    continue
                standins.setdefault(record["potential"], {})[str(record["system_id"])] = record
    paper = paper_counts()
    systems, _ = load_systems("oc20-ood30")
    checkpoint = load_config(args.config).surrogate.checkpoint
    card = read_card(resolve_checkpoint(checkpoint))
    methods = list(rows)
    head = ["system", "atoms", "VASP BFGS (paper)", "VASP GPMin (paper)", "k-steps GemNet-T (paper)",
            *[f"{m} (stand-in)" for m in methods], *[f"ASE BFGS {p}" for p in standins], "prior never saw"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pairs: dict[str, tuple[list[float], list[float]]] = {}
    for system in systems:
        sid = system.system_id
        counts = paper.get(sid, {})
        unseen = unseen_elements(system.numbers, card) if card is not None else []
        out = [sid, str(system.n_atoms), _num(counts.get("vasp_bfgs_calls")), _num(counts.get("vasp_gpmin_calls")),
               _num(counts.get("ksteps_parent_calls"))]
        out += [cell(rows[m].get(sid)) for m in methods]
        for potential, records in standins.items():
            record = records.get(sid)
            out.append("-" if record is None else f"{record['calls']}" + ("" if record["converged"] else " (not conv.)"))
        out.append(" ".join(unseen) if unseen else "")
        lines.append("| " + " | ".join(out) + " |")
        ref = rows.get("bfgs", {}).get(sid)
        if ref is not None and counts.get("vasp_bfgs_calls"):
            pairs.setdefault("bfgs", ([], []))
            pairs["bfgs"][0].append(float(counts["vasp_bfgs_calls"]))
            pairs["bfgs"][1].append(float(ref["parent_calls"]))
    notes = []
    if "bfgs" in pairs:
        vasp, ours = pairs["bfgs"]
        notes.append(f"BFGS through the product on the stand-in vs the paper's VASP BFGS, {len(vasp)} systems: totals "
                     f"{int(sum(ours))} vs {int(sum(vasp))}, Spearman {spearman(vasp, ours):.2f}, mean |gap| "
                     f"{np.mean(np.abs(np.subtract(ours, vasp))):.1f} calls.")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# The paper's 30 OC20 systems: parent calls per system on the stand-in, beside the paper's VASP counts", "",
        f"Made by `{' '.join(['python benchmarks/oc20_paper.py', *(argv if argv is not None else sys.argv[1:])])}` "
        f"at commit `{commit}` from the stores of `finetuna-parsl bench configs/oc20-paper.yaml` "
        "(`benchmarks/oc20-paper/paper_table.md`). World: parent SevenNet-0 (`sevenn`'s 7net-0 through `parent.kind: "
        f"ase`), the learner's and warm start's prior `{checkpoint}` (`surrogate.checkpoint` of `{args.config}`); the "
        "paper's columns are its VASP counts (`paper_counts()`).",
        "",
        "A number alone: converged (parent-confirmed fmax <= 0.03 eV/A); otherwise the outcome or status follows it. "
        "\"prior never saw\": elements of the system absent from the prior's pretraining (its model card), "
        "where it predicts from an untrained embedding.", "", *lines, "", *notes, ""])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


def _num(value) -> str:
    return "-" if value in (None, "") or (isinstance(value, float) and np.isnan(value)) else str(int(value))


if __name__ == "__main__":
    sys.exit(main())
