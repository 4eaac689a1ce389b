#!/usr/bin/env python
"""The paper's Fig. S1 in the stand-in world -> benchmarks/oc20-paper/fig_s1.md (and fig_s1.png).

Usage: python benchmarks/fig_s1.py [--store runs/oc20-paper.bfgs.h5] [--checkpoints oc20-standin,shipped]
                                  [--systems 30] [--held-out 40] [--output benchmarks/oc20-paper/fig_s1.md]

For each of the paper's 30 OC20 systems, the frames of its BFGS relaxation on the stand-in parent (the parent
calls in the bench's bfgs store, `finetuna-parsl bench configs/oc20-paper.yaml`), and for each prior: the force
MAE (eV/A, free atoms) on held-out frames of that path before head-only fine-tuning and after 1, 3 and 5 parent
points from the first half of the path, one at a time, newest point only (400 epochs each, the surrogate's
settings), as `benchmarks/surrogate.py` measures it in the EMT world. Held-out frames: every path frame not used
for training, thinned evenly to at most --held-out.

The paper (Musielewicz et al. 2022, Fig. S1): fine-tuning on a system's own first points brings GemNet-T's error
at the next points down; this says whether the stand-in world's priors do the same.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import click
import numpy as np
import torch
from surrogate import force_mae  # benchmarks/surrogate.py: this folder is on sys.path when run as a script

from finetuna_parsl.store import iter_frames
from finetuna_parsl.surrogate import load_surrogate

POINTS = (1, 3, 5)


def split_path(path: list, held_out: int) -> tuple[list, list]:
    """(training points: max(POINTS) frames evenly from the first half, held-out frames: the rest, thinned)."""
    picks = sorted(set(np.linspace(0, len(path) // 2, max(POINTS)).round().astype(int).tolist()))
    rest = [f for i, f in enumerate(path) if i not in set(picks)]
    if len(rest) > held_out:
        rest = [rest[i] for i in np.linspace(0, len(rest) - 1, held_out).round().astype(int)]
    return [path[i] for i in picks], rest


def effect(surrogate, train: list, held: list) -> dict:
    """MAE before and after 1, 3, 5 sequential newest-point fine-tunes."""
    head = surrogate.initial_head()
    row = {"before": force_mae(surrogate, head, held)}
    for n, point in enumerate(train, start=1):
        head, _ = surrogate.fine_tune(head, [point])
        if n in POINTS:
            row[n] = force_mae(surrogate, head, held)
    return row


def plot(means: dict[str, dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [0, *POINTS]
    for name, m in means.items():
        ax.plot(xs, [m["before"], *(m[n] for n in POINTS)], marker="o", label=f"prior {name}")
    ax.set_xticks(xs)
    ax.set_xlabel("parent points fine-tuned on (newest only, head only)")
    ax.set_ylabel("force MAE at the path's other points (eV/A)")
    ax.set_title("Fig. S1 on the paper's 30 systems, SevenNet-0 parent")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=150)


@click.command()
@click.option("--store", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("runs/oc20-paper.bfgs.h5"), show_default=True, help="the bench's bfgs store")
@click.option("--checkpoints", default="oc20-standin,shipped", show_default=True)
@click.option("--systems", "n_systems", default=30, show_default=True)
@click.option("--held-out", default=40, show_default=True, help="at most this many held-out frames per system")
@click.option("--threads", default=1, show_default=True)
@click.option("--output", type=click.Path(path_type=Path),
              default=Path(__file__).with_name("oc20-paper") / "fig_s1.md", show_default=True)
def main(store: Path, checkpoints: str, n_systems: int, held_out: int, threads: int, output: Path) -> None:
    torch.set_num_threads(threads)
    paths: dict[str, list] = defaultdict(list)
    for frame in iter_frames(store, parent_only=True):
        paths[frame.info["system_id"]].append(frame)
    ids = sorted(paths)[:n_systems]
    names = [c.strip() for c in checkpoints.split(",") if c.strip()]
    models = {name: load_surrogate(name, device="cpu", threads=threads) for name in names}
    rows: dict[str, list[dict]] = {name: [] for name in names}
    for k, system_id in enumerate(ids, start=1):
        train, held = split_path(paths[system_id], held_out)
        if len(train) < max(POINTS) or not held:
            print(f"{system_id}: path of {len(paths[system_id])} frames is too short; skipped", flush=True)
            continue
        for name, model in models.items():
            row = {"system": system_id, "atoms": len(held[0]), "frames": len(held), **effect(model, train, held)}
            rows[name].append(row)
            print(f"[{k}/{len(ids)}] {system_id} {name}: " + " ".join(f"{key}={row[key]:.4f}" for key in
                  ("before", *POINTS)), flush=True)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Fig. S1 in the stand-in world: fine-tuning on a system's own parent points", "",
             f"Made by `{' '.join(['python benchmarks/fig_s1.py', *sys.argv[1:]])}` at commit `{commit}`. World: "
             "parent SevenNet-0 (the stand-in for DFT), priors " + ", ".join(f"`{n}`" for n in names)
             + " (`oc20-standin`: distilled from SevenNet-0; `shipped`: from EMT).",
             "", f"Frames: the parent calls of each system's BFGS relaxation in `{store}` (SevenNet-0 parent, "
             "`configs/oc20-paper.yaml`). Force MAE (eV/A, free atoms) on held-out frames of the path (at most "
             f"{held_out}, evenly spaced), before head-only fine-tuning and after 1, 3 and 5 parent points from the "
             "first half of the path, newest point only (400 epochs each), as `benchmarks/surrogate.py` does in the "
             "EMT world.", ""]
    means = {}
    for name in names:
        if not rows[name]:
            continue
        m = {key: statistics.mean(r[key] for r in rows[name]) for key in ("before", *POINTS)}
        means[name] = m
        better = sum(r[5] < r["before"] for r in rows[name])
        lines += [f"## Prior `{name}`", "",
                  "| system | atoms | held-out frames | pretrained | 1 point | 3 points | 5 points |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['system']} | {r['atoms']} | {r['frames']} | {r['before']:.4f} | "
                  + " | ".join(f"{r[n]:.4f}" for n in POINTS) + " |" for r in rows[name]]
        lines += [f"| **mean** | | | **{m['before']:.4f}** | " + " | ".join(f"**{m[n]:.4f}**" for n in POINTS) + " |",
                  "", f"After 5 points the mean MAE is {m[5] / m['before']:.0%} of the pretrained one; lower than "
                  f"pretrained on {better} of {len(rows[name])} systems.", ""]
    output.parent.mkdir(parents=True, exist_ok=True)
    if means:
        plot(means, output.with_suffix(".png"))
        lines += [f"![Fig. S1]({output.with_suffix('.png').name})", ""]
    output.write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
