"""Which universal ML potential stands in for DFT best on the paper's 30 OC20 systems? (issue 24)

    OMP_NUM_THREADS=1 python benchmarks/standins.py [--potentials sevennet-0,chgnet] \
        [--results runs/standins/standins.jsonl] [--output benchmarks/oc20-paper/standins.md] [--report-only]

For every system of the packaged source "oc20-ood30" (finetuna_parsl.systems.load_systems) and every potential,
the initial structure is relaxed with plain ASE BFGS (ase.optimize.BFGS, its defaults: maxstep 0.2 A, alpha
70 eV/A^2) to fmax 0.03 eV/A on the atoms FixAtoms leaves free (constraints as stored), at most 1000 steps, one
torch thread. The force calls are counted by wrapping the calculator's calculate(): one count per model
evaluation. For ASE BFGS that is steps + 1 (the start, then one per step), the same as the frames of the
paper's ASE BFGS trajectories, where every frame is one VASP single point; so "calls" here is compared directly
with the paper's vasp_bfgs_calls (finetuna_parsl.systems.paper_counts()).

Potentials, weights shipped inside their wheels (nothing is downloaded: every socket connect raises during the
run, so a download attempt would fail the system and show as an error row):
  sevennet-0  sevenn.calculator.SevenNetCalculator(model="7net-0", device="cpu") (SevenNet-0, 11 Jul 2024, MPtrj PBE)
  chgnet      chgnet.model.dynamics.CHGNetCalculator(use_device="cpu") (CHGNet 0.3.0 weights, MPtrj PBE)

Resumable: one JSON line per (potential, system) is appended to --results as soon as that relaxation ends and
those pairs are skipped on a rerun. --report-only writes --output from --results without relaxing anything.
Energies are the potentials' own (eV, PBE-like references), not comparable with the paper's VASP RPBE totals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

SOURCE = "oc20-ood30"
FMAX = 0.03  # eV/A, the paper's
MAX_STEPS = 1000
POTENTIALS = {
    "sevennet-0": "SevenNet-0 (sevenn, model 7net-0, 11 Jul 2024 checkpoint shipped in the wheel)",
    "chgnet": "CHGNet (chgnet 0.4.x, pretrained 0.3.0 weights shipped in the wheel)",
}


class NetworkUsed(RuntimeError):
    """A potential tried to open a network connection at run time."""


def _block_network() -> None:
    """Make every socket connect raise NetworkUsed: the run must be offline, and a download must show."""

    def refuse(self, address, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return _connect(self, address, *args, **kwargs)
        raise NetworkUsed(f"network connection attempted at run time to {address!r}")

    _connect = socket.socket.connect
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse


def make_calculator(name: str):
    """The ASE calculator of potential `name` on the CPU. KeyError for an unknown name."""
    if name == "sevennet-0":
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(model="7net-0", device="cpu")
    if name == "chgnet":
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(use_device="cpu")
    raise KeyError(name)


def _count_calls(calc) -> list[int]:
    """Wrap calc.calculate so every model evaluation adds one to the returned one-item list."""
    counter = [0]
    inner = calc.calculate

    def calculate(*args, **kwargs):
        counter[0] += 1
        return inner(*args, **kwargs)

    calc.calculate = calculate
    return counter


def relax(calc, spec, relaxed_positions: np.ndarray | None) -> dict:
    """Plain ASE BFGS from spec's start; the record of one (potential, system) run."""
    from ase.geometry import find_mic
    from ase.optimize import BFGS

    from finetuna_parsl.learner.bfgs import free_fmax

    atoms = spec.to_atoms()
    calc.reset()
    atoms.calc = calc
    counter = _count_calls(calc)
    opt = BFGS(atoms, logfile=None)  # defaults: maxstep 0.2 A, alpha 70 eV/A^2
    start = time.perf_counter()
    converged = bool(opt.run(fmax=FMAX, steps=MAX_STEPS))
    wall = time.perf_counter() - start
    forces = atoms.get_forces(apply_constraint=False)
    record = {
        "calls": counter[0],
        "steps": int(opt.nsteps),
        "converged": converged,
        "final_fmax": free_fmax(forces, spec.fixed),
        "energy": float(atoms.get_potential_energy()),
        "wall_s": wall,
        "s_per_call": wall / max(counter[0], 1),
    }
    if relaxed_positions is not None:
        free = ~spec.fixed
        diff, _ = find_mic(atoms.positions[free] - relaxed_positions[free], atoms.cell, atoms.pbc)
        record["max_dev_from_oc20_relaxed"] = float(np.linalg.norm(diff, axis=1).max())
    del calc.calculate  # back to the class's method
    return record


def relaxed_frames() -> dict[str, np.ndarray]:
    """OC20's own relaxed positions (A) per sid, from the packaged database's frame='relaxed' rows."""
    from ase.db import connect

    from finetuna_parsl.systems import PACKAGED_SOURCES

    db = connect(str(PACKAGED_SOURCES[SOURCE]))
    return {str(row.sid): row.positions.copy() for row in db.select(frame="relaxed")}


def read_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def run(potentials: list[str], results: Path, only: set[str] | None) -> None:
    import torch

    from finetuna_parsl.systems import load_systems

    torch.set_num_threads(1)
    _block_network()
    systems, skipped = load_systems(SOURCE)
    if skipped:
        raise SystemExit(f"{SOURCE}: systems skipped: {skipped}")
    if only:
        systems = [s for s in systems if s.system_id in only]
    relaxed = relaxed_frames()
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {(r["potential"], r["system_id"]) for r in read_results(results)}
    for name in potentials:
        todo = [s for s in systems if (name, s.system_id) not in done]
        print(f"{name}: {len(systems) - len(todo)} of {len(systems)} already in {results}", flush=True)
        if not todo:
            continue
        t0 = time.perf_counter()
        calc = make_calculator(name)
        load_s = time.perf_counter() - t0
        print(f"{name}: model loaded in {load_s:.1f} s", flush=True)
        for i, spec in enumerate(todo, 1):
            row = {"potential": name, "system_id": spec.system_id, "formula": spec.formula,
                   "natoms": len(spec.numbers), "nfree": int((~spec.fixed).sum()), "fmax": FMAX,
                   "max_steps": MAX_STEPS, "torch_threads": torch.get_num_threads(),
                   "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            try:
                row.update(relax(calc, spec, relaxed.get(spec.system_id)))
            except Exception as exc:  # recorded, so a rerun does not repeat a system that cannot run
                row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                if hasattr(calc, "calculate") and "calculate" in vars(calc):
                    del calc.calculate
            with open(results, "a") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            if "error" in row:
                print(f"{name} [{i}/{len(todo)}] {spec.system_id}: ERROR {row['error']}", flush=True)
            else:
                print(f"{name} [{i}/{len(todo)}] {spec.system_id} {spec.formula}: {row['calls']} calls, "
                      f"converged={row['converged']}, fmax {row['final_fmax']:.3f}, {row['wall_s']:.1f} s "
                      f"({row['s_per_call']:.3f} s/call)", flush=True)


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def report(potentials: list[str], results: Path, output: Path, command: str) -> str:
    """The markdown table of --results against the paper's counts."""
    from finetuna_parsl.systems import load_systems, paper_counts

    paper = paper_counts()
    systems, _ = load_systems(SOURCE)
    rows = {(r["potential"], r["system_id"]): r for r in read_results(results)}
    names = [n for n in potentials if any(k[0] == n for k in rows)]
    lines = [
        "# Stand-ins for DFT: SevenNet-0 and CHGNet against the paper's VASP counts (issue 24)",
        "",
        f"Made by: `{command}`",
        f"({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {platform.node()}, "
        f"{os.cpu_count()} CPUs shared with other jobs, one torch thread, one process.)",
        "",
        f"Each of the paper's 30 OC20 systems (`{SOURCE}`) relaxed from its initial structure with plain ASE BFGS "
        f"(defaults: maxstep 0.2 A, alpha 70 eV/A^2), fmax {FMAX} eV/A on the atoms FixAtoms leaves free, at most "
        f"{MAX_STEPS} steps. Calls = model evaluations counted at the calculator = BFGS steps + 1, the way the "
        "paper's ASE BFGS trajectories count VASP single points (one frame per call, start included). Paper = "
        "`vasp_bfgs_calls` of `finetuna_parsl.systems.paper_counts()`. Every socket connect raised during the run "
        "(no downloads; weights from the wheels). Raw rows: `benchmarks/oc20-paper/standins.jsonl`.",
        "",
    ]
    label = {"sevennet-0": "SevenNet-0", "chgnet": "CHGNet"}
    head = "| system | formula | paper BFGS |"
    rule = "|---|---|---:|"
    for n in names:
        head += f" {label.get(n, n)} calls | conv | max dev A |"
        rule += "---:|:-:|---:|"
    lines += [head, rule]
    per = {n: {"calls": [], "paper": [], "s_per_call": [], "wall": [], "conv": 0, "err": 0, "dev": []}
           for n in names}
    for spec in systems:
        sid = spec.system_id
        p = paper.get(sid, {}).get("vasp_bfgs_calls")
        line = f"| {sid} | {spec.formula} | {'' if p is None else int(p)} |"
        for n in names:
            r = rows.get((n, sid))
            if r is None:
                line += " — | | |"
            elif "error" in r:
                line += f" error | | |"
                per[n]["err"] += 1
            else:
                dev = r.get("max_dev_from_oc20_relaxed")
                line += (f" {r['calls']} | {'yes' if r['converged'] else 'NO'} | "
                         f"{'' if dev is None else f'{dev:.2f}'} |")
                per[n]["conv"] += r["converged"]
                per[n]["wall"].append(r["wall_s"])
                if dev is not None:
                    per[n]["dev"].append(dev)
                if p is not None:
                    per[n]["calls"].append(r["calls"])
                    per[n]["paper"].append(p)
        lines.append(line)
    lines += ["", "Max dev: largest distance (A, minimum image) of a free atom from OC20's own VASP relaxed frame "
              "(a different optimizer, CG, so a guide to whether the same minimum was reached, not a count).", ""]
    lines += ["| | " + " | ".join(label.get(n, n) for n in names) + " |",
              "|---|" + "---:|" * len(names)]

    def stat(f):
        return " | ".join(f(per[n]) for n in names)

    paper_total = sum(v["vasp_bfgs_calls"] for v in paper.values() if "vasp_bfgs_calls" in v)
    lines += [
        "| systems measured (errors) | " + stat(lambda d: f"{len(d['wall'])} ({d['err']})") + " |",
        "| converged | " + stat(lambda d: f"{d['conv']}/{len(d['wall'])}") + " |",
        "| total calls (paper's VASP BFGS: " + f"{int(paper_total)})" + " | "
        + stat(lambda d: f"{sum(d['calls'])} (paper on the same: {int(sum(d['paper']))})") + " |",
        "| total / paper's total | " + stat(lambda d: f"{sum(d['calls']) / max(sum(d['paper']), 1):.2f}") + " |",
        "| Spearman rank corr. vs paper | "
        + stat(lambda d: f"{_spearman(d['calls'], d['paper']):.2f}" if len(d["calls"]) > 2 else "") + " |",
        "| mean abs gap vs paper (calls) | "
        + stat(lambda d: f"{np.mean(np.abs(np.subtract(d['calls'], d['paper']))):.1f}" if d["calls"] else "")
        + " |",
        "| median calls / paper's | "
        + stat(lambda d: f"{np.median(np.divide(d['calls'], d['paper'])):.2f}" if d["calls"] else "") + " |",
        "| median max dev from OC20 relaxed (A) | "
        + stat(lambda d: f"{np.median(d['dev']):.2f}" if d["dev"] else "") + " |",
        "| seconds per call (all calls / all wall) | "
        + stat(lambda d: f"{sum(d['wall']) / max(sum(d['calls']), 1):.3f}" if d["wall"] else "") + " |",
        "| wall, all systems (s) | " + stat(lambda d: f"{sum(d['wall']):.0f}") + " |",
        "",
    ]
    text = "\n".join(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--potentials", default="sevennet-0,chgnet",
                        help=f"comma-separated, run in this order; of {', '.join(POTENTIALS)}")
    parser.add_argument("--results", type=Path, default=Path("runs/standins/standins.jsonl"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/oc20-paper/standins.md"))
    parser.add_argument("--systems", default="", help="comma-separated system ids (default: all 30)")
    parser.add_argument("--report-only", action="store_true", help="write --output from --results, relax nothing")
    args = parser.parse_args(argv)
    potentials = [p.strip() for p in args.potentials.split(",") if p.strip()]
    unknown = [p for p in potentials if p not in POTENTIALS]
    if unknown:
        print(f"error: unknown potential(s) {', '.join(unknown)}; known: {', '.join(POTENTIALS)}", file=sys.stderr)
        return 2
    only = {s.strip() for s in args.systems.split(",") if s.strip()} or None
    if not args.report_only:
        run(potentials, args.results, only)
    made_by = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "OMP_NUM_THREADS=1 python benchmarks/standins.py " + shlex.join(made_by)
    print(report(potentials, args.results, args.output, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
