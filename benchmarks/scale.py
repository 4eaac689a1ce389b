#!/usr/bin/env python
"""Driver cost at scale -> benchmarks/scale.md: N concurrent EMT relaxations in one driver, N = 10, 100, 1000.

Usage: python benchmarks/scale.py [--sizes 10,100,1000] [--output benchmarks/scale.md]
The real campaign driver (finetuna_parsl.campaign.run_campaign) with the EMT parent and the toy surrogate
(tests/toy_surrogate.py: EMT plus a smooth error), so the numbers are the driver's and Parsl's, not a model's.
Parent sessions are threads of the driver process (benchmarks/scale_site.py), so the driver's RSS and CPU
include them (their EMT work is in the CPU figure: subtracting the stored per-call wall time does not work,
because with 1,000 threads that wall time is mostly waiting for the GIL).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import h5py

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "benchmarks" / "scale_site.py"


def one_size(n: int, workdir: Path) -> dict:
    """Run N relaxations at once in this (fresh) process and measure it."""
    from finetuna_parsl.campaign import run_campaign
    from finetuna_parsl.config import load_config, with_overrides
    from finetuna_parsl.systems import load_systems

    config = load_config(str(REPO / "configs" / "demo.yaml"))
    config = with_overrides(
        config,
        systems={"count": n},
        surrogate={"factory": "toy_surrogate:make"},
        learner={"query": "k-steps", "k": 3, "fmax": 0.05, "max_parent_calls": 60},
        campaign={"output": str(workdir / f"scale-{n}.h5"), "max_concurrent": n, "keep_surrogate_every": 0},
    )
    config = dataclasses.replace(config, site=str(SITE))
    systems, _ = load_systems("demo", n, 0)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    path, result = run_campaign(config, systems, restart=True)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with h5py.File(path, "r") as f:
        calls, parent_s = 0, 0.0
        for g in f["systems"].values():
            kind = g["steps/kind"][:]
            calls += int((kind == 1).sum())
            parent_s += float(g["steps/wall_s"][:][kind == 1].sum())
        done = sum(1 for g in f["systems"].values() if g.attrs.get("status") == "done")
    tasks = calls + n  # one learn task per parent call (the first proposal included) + one session app each
    return {"n": n, "done": done, "calls": calls, "wall": wall, "rss_mb": rss_mb, "cpu": cpu,
            "parent_s": parent_s, "cpu_per_call_ms": 1000 * cpu / max(calls, 1),
            "tasks_per_s": tasks / wall}


@click.command()
@click.option("--sizes", default="10,100,1000", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=Path(__file__).with_name("scale.md"))
@click.option("--one", type=int, hidden=True, help="internal: run one size and print its row")
def main(sizes: str, output: Path, one: int | None) -> None:
    if one is not None:
        workdir = Path(tempfile.mkdtemp(prefix="finetuna-scale-"))
        try:
            print("ROW", json.dumps(one_size(one, workdir)), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    rows = []
    for n in [int(s) for s in sizes.split(",")]:
        proc = subprocess.run([sys.executable, __file__, "--one", str(n)], env=env, capture_output=True, text=True)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("ROW ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit(f"size {n} failed (exit {proc.returncode})")
        row = json.loads(line[4:])
        print(row, flush=True)
        rows.append(row)
    render(rows, sizes, output)


def render(rows: list[dict], sizes: str, output: Path) -> None:
    """Write the Markdown table (and print it)."""
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip()
    lines = ["# Campaign driver at scale", "",
             f"Made by `python benchmarks/scale.py --sizes {sizes}` on {os.cpu_count()} cores ({cpu}).", "",
             "N concurrent EMT relaxations (demo systems, k-steps k=3, fmax 0.05, toy surrogate) in one driver; "
             "parent sessions are threads of the driver (benchmarks/scale_site.py), learn tasks run on 2 local "
             "worker processes. Driver CPU per parent call includes the in-thread sessions' EMT work.", "",
             "| N | done | parent calls | wall s | driver peak RSS MB | driver CPU ms / parent call | Parsl tasks / s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['done']} | {r['calls']} | {r['wall']:.1f} | {r['rss_mb']:.0f} | "
                     f"{r['cpu_per_call_ms']:.1f} | {r['tasks_per_s']:.1f} |")
    lines += ["", "Growth between consecutive sizes (ratio of the larger to the smaller):", "",
              "| from -> to | relaxations | peak RSS | CPU ms / call | tasks / s |", "|---|---:|---:|---:|---:|"]
    for a, b in zip(rows, rows[1:]):
        lines.append(f"| {a['n']} -> {b['n']} | {b['n'] / a['n']:.0f}x | {b['rss_mb'] / a['rss_mb']:.2f}x | "
                     f"{b['cpu_per_call_ms'] / a['cpu_per_call_ms']:.2f}x | {b['tasks_per_s'] / a['tasks_per_s']:.2f}x |")
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
