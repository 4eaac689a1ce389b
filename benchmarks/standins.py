"""Which universal ML potential stands in for DFT best on the paper's 30 OC20 systems? (issue 24)

    OMP_NUM_THREADS=1 python benchmarks/standins.py [--potentials sevennet-0,chgnet] \
        [--results runs/standins/standins.jsonl] [--output benchmarks/oc20-paper/standins.md] [--report-only]

For every system of the packaged source "oc20-ood30" (finetuna_parsl.systems.load_systems) and every potential,
the initial structure is relaxed with plain ASE BFGS (ase.optimize.BFGS, its defaults: maxstep 0.2 A, alpha
70 eV/A^2) to fmax 0.03 eV/A on the atoms FixAtoms leaves free (constraints as stored), at most 1000 steps, one
torch thread. The force calls are counted by wrapping the calculator's calculate(): one count per model
evaluation. For ASE BFGS that is steps + 1 (the start, then one per step), the same as the frames of the
paper's ASE BFGS trajectories (finetuna_manuscript data/results/ASE_BFGS: frame counts equal vasp_bfgs_calls on
all 30, first frame = the packaged start, last = first with fmax < 0.03); so "calls" here is compared directly
with the paper's vasp_bfgs_calls (finetuna_parsl.systems.paper_counts()). --timing-rounds adds an interleaved
seconds-per-call measurement (the potentials taking turns on three systems) that machine load cannot bias.

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


def read_results(path: Path, kind: str = "relax") -> list[dict]:
    """The rows of --results of one kind: "relax" (one per potential and system) or "timing"."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("kind", "relax") == kind:
                rows.append(row)
    return rows


def _append(results: Path, row: dict) -> None:
    with open(results, "a") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def timing(potentials: list[str], results: Path, rounds: int, calls: int) -> None:
    """Seconds per call measured fairly: the potentials take turns (order alternating by round) on the smallest,
    the median and the largest system, `calls` single points each with the free atoms moved 0.01 A at random
    between calls, so both see the same machine load. Skipped when --results already holds timing rows."""
    import torch

    from finetuna_parsl.systems import load_systems

    if read_results(results, "timing"):
        print(f"timing: already in {results}", flush=True)
        return
    torch.set_num_threads(1)
    systems = sorted(load_systems(SOURCE)[0], key=lambda s: len(s.numbers))
    picks = [systems[0], systems[len(systems) // 2], systems[-1]]
    calcs = {name: make_calculator(name) for name in potentials}
    rng = np.random.default_rng(0)
    for r in range(rounds):
        order = potentials if r % 2 == 0 else potentials[::-1]
        for name in order:
            for spec in picks:
                atoms = spec.to_atoms()
                calc = calcs[name]
                calc.reset()
                atoms.calc = calc
                atoms.get_forces()  # first call of a system (graph set-up) not timed
                start = time.perf_counter()
                for _ in range(calls):
                    atoms.positions[~spec.fixed] += rng.normal(0.0, 0.01, size=((~spec.fixed).sum(), 3))
                    atoms.get_forces()
                wall = time.perf_counter() - start
                _append(results, {"kind": "timing", "potential": name, "system_id": spec.system_id,
                                  "natoms": len(spec.numbers), "round": r, "calls": calls, "wall_s": wall})
                print(f"timing round {r} {name} {spec.system_id} ({len(spec.numbers)} atoms): "
                      f"{wall / calls:.3f} s/call", flush=True)


def run(potentials: list[str], results: Path, only: set[str] | None) -> None:
    import torch

    from finetuna_parsl.systems import load_systems

    torch.set_num_threads(1)
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
            _append(results, row)
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
        "paper's ASE BFGS trajectories count VASP single points: `vasp_bfgs_calls` "
        "(`finetuna_parsl.systems.paper_counts()`) equals the frame count of finetuna_manuscript's "
        "data/results/ASE_BFGS/*.traj on all 30, each starting at the packaged initial structure and ending at its "
        "first frame with free-atom fmax < 0.03 eV/A (checked 2026-12-04). Every socket connect raised during the "
        "run (no downloads; weights from the wheels). Raw rows: --results (runs/standins/standins.jsonl), "
        "committed as `benchmarks/oc20-paper/standins.jsonl`.",
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
    ]
    timed = read_results(results, "timing")
    if timed:
        sizes = sorted({(t["natoms"], t["system_id"]) for t in timed})
        for natoms, sid in sizes:
            lines.append(f"| s/call, interleaved, {sid} ({natoms} atoms) | " + " | ".join(
                f"{np.median([t['wall_s'] / t['calls'] for t in timed if t['potential'] == n and t['system_id'] == sid]):.3f}"
                if any(t["potential"] == n and t["system_id"] == sid for t in timed) else "" for n in names) + " |")
    lines.append("")
    lines += ["Seconds per call from the relaxations ran at different times on a machine shared with other jobs "
              "(load average 7 to 17 on 2 cores), so they are not comparable between the potentials; the "
              "interleaved rows (median over rounds in which the potentials took turns on the same three "
              "systems, one torch thread) are.", ""]
    lines += _reading(names, label, paper, rows, systems, per)
    text = "\n".join(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text + "\n")
    return text


def _reading(names, label, paper, rows, systems, per) -> list[str]:
    """Paired bootstrap of the gap between the potentials, their agreement with each other, and the reading."""
    if len(names) != 2:
        return []
    a, b = names
    sids = [s.system_id for s in systems
            if all("calls" in rows.get((n, s.system_id), {}) for n in names)
            and "vasp_bfgs_calls" in paper.get(s.system_id, {})]
    if len(sids) < 3:
        return []
    ref = np.array([paper[sid]["vasp_bfgs_calls"] for sid in sids])
    ca = np.array([rows[(a, sid)]["calls"] for sid in sids])
    cb = np.array([rows[(b, sid)]["calls"] for sid in sids])
    rng = np.random.default_rng(0)
    draws = 2000
    d_mae, d_rho = [], []
    for _ in range(draws):
        i = rng.integers(len(sids), size=len(sids))
        d_mae.append(np.mean(np.abs(ca[i] - ref[i])) - np.mean(np.abs(cb[i] - ref[i])))
        d_rho.append(_spearman(ca[i], ref[i]) - _spearman(cb[i], ref[i]))
    d_mae, d_rho = np.array(d_mae), np.nan_to_num(np.array(d_rho))
    la, lb = label.get(a, a), label.get(b, b)
    measures = {
        "total calls / paper's total, distance from 1": (abs(ca.sum() / ref.sum() - 1), abs(cb.sum() / ref.sum() - 1)),
        "Spearman rank correlation (higher is closer)": (-_spearman(ca, ref), -_spearman(cb, ref)),
        "mean absolute gap (calls)": (np.mean(np.abs(ca - ref)), np.mean(np.abs(cb - ref))),
        "median calls / paper's, distance from 1": (abs(np.median(ca / ref) - 1), abs(np.median(cb / ref) - 1)),
    }
    wins = {la: [k for k, (x, y) in measures.items() if x < y], lb: [k for k, (x, y) in measures.items() if y < x]}
    closer = la if len(wins[la]) > len(wins[lb]) else lb if len(wins[lb]) > len(wins[la]) else None
    lower = [sid for sid in sids if paper[sid].get("e_bfgs_minus_oc20", 0.0) < -0.1]
    out = [
        "## Reading",
        "",
        f"Paired bootstrap over the {len(sids)} systems ({draws} draws, seed 0), {la} minus {lb}: mean absolute gap "
        f"{np.mean(np.abs(ca - ref)) - np.mean(np.abs(cb - ref)):+.1f} calls, 95% interval "
        f"[{np.percentile(d_mae, 2.5):+.1f}, {np.percentile(d_mae, 97.5):+.1f}]; Spearman "
        f"{_spearman(ca, ref) - _spearman(cb, ref):+.2f}, 95% interval [{np.percentile(d_rho, 2.5):+.2f}, "
        f"{np.percentile(d_rho, 97.5):+.2f}]. The two potentials' counts rank-correlate with each other at "
        f"{_spearman(ca, cb):.2f}, with the paper at {_spearman(ca, ref):.2f} ({la}) and {_spearman(cb, ref):.2f} ({lb}).",
        "",
        f"Closer on: {la}: {', '.join(wins[la]) or 'none'}; {lb}: {', '.join(wins[lb]) or 'none'}.",
        "",
    ]
    if closer:
        out.append(f"By these measures the closer stand-in is **{closer}**, "
                   + ("but the bootstrap intervals of both differences include 0: the margin is within what the "
                      "choice of systems alone moves, so the choice rests on the totals and the median ratio more "
                      "than on the per-system fit." if np.percentile(d_mae, 2.5) < 0 < np.percentile(d_mae, 97.5)
                      and np.percentile(d_rho, 2.5) < 0 < np.percentile(d_rho, 97.5) else
                      "and the bootstrap says the per-system difference is larger than the choice of systems moves."))
    else:
        out.append("Neither potential is closer on more of these measures than the other.")
    if lower:
        out += ["", f"Systems where the paper's own BFGS ended more than 0.1 eV below OC20's relaxed energy "
                f"(e_bfgs_minus_oc20; a different, longer path): {', '.join(lower)}. Neither potential can be "
                "expected to follow such a path call for call."]
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--potentials", default="sevennet-0,chgnet",
                        help=f"comma-separated, run in this order; of {', '.join(POTENTIALS)}")
    parser.add_argument("--results", type=Path, default=Path("runs/standins/standins.jsonl"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/oc20-paper/standins.md"))
    parser.add_argument("--systems", default="", help="comma-separated system ids (default: all 30)")
    parser.add_argument("--timing-rounds", type=int, default=3,
                        help="rounds of the interleaved seconds-per-call measurement (0: none)")
    parser.add_argument("--timing-calls", type=int, default=5, help="single points per system per round")
    parser.add_argument("--report-only", action="store_true", help="write --output from --results, relax nothing")
    args = parser.parse_args(argv)
    potentials = [p.strip() for p in args.potentials.split(",") if p.strip()]
    unknown = [p for p in potentials if p not in POTENTIALS]
    if unknown:
        print(f"error: unknown potential(s) {', '.join(unknown)}; known: {', '.join(POTENTIALS)}", file=sys.stderr)
        return 2
    only = {s.strip() for s in args.systems.split(",") if s.strip()} or None
    if not args.report_only:
        _block_network()
        run(potentials, args.results, only)
        if args.timing_rounds:
            timing(potentials, args.results, args.timing_rounds, args.timing_calls)
    made_by = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "OMP_NUM_THREADS=1 python benchmarks/standins.py " + shlex.join(made_by)
    print(report(potentials, args.results, args.output, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
