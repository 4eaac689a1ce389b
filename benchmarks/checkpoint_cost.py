#!/usr/bin/env python
"""Prior cost for a checkpoint with UMA-S's real widths -> benchmarks/checkpoint_cost.md.

Usage: python benchmarks/checkpoint_cost.py [--repeats 5] [--output benchmarks/checkpoint_cost.md]

A random-weight checkpoint shaped like UMA-S 1.1 (tests/checkpoint_families.py with UMA_S widths:
eSCN-MD MoLE backbone, 128 channels, lmax 2, 4 layers, 32 experts, max_neighbors 300, cutoff 6 A;
weights do not change the cost) and the shipped model, on two slabs. Measured in one run, side by side:

- seconds per surrogate step: one prior prediction on new positions (fairchem forward + autograd
  forces) plus the residual heads, as BFGS on the surrogate does it; MoLE merged per composition (what
  the prior does) vs unmerged (fairchem's general path, what a changing composition falls back to);
- seconds per fine-tune (400 epochs, AdamW 3e-4): cold (the new parent point's forward pass for its
  embeddings, then the epochs) and cached (epochs only).

Each number is the median of --repeats. On a GPU (when torch sees one) the same rows are added.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import click
import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111
from ase.constraints import FixAtoms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from checkpoint_families import UMA_S, build  # noqa: E402

from finetuna_parsl.surrogate import load_surrogate  # noqa: E402
from finetuna_parsl.surrogate.pretrain import labelled  # noqa: E402
from finetuna_parsl.surrogate.prior import Prior  # noqa: E402


def slab(size: tuple[int, int, int]) -> Atoms:
    """Cu(111) with CO on top, bottom layer fixed."""
    atoms = fcc111("Cu", size, vacuum=7.0)
    add_adsorbate(atoms, Atoms("CO", positions=[(0, 0, 0), (0, 0, 1.15)]), 1.9, "ontop")
    atoms.set_constraint(FixAtoms(indices=[a.index for a in atoms if a.tag == size[2]]))
    return atoms


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_cost(surrogate, atoms: Atoms, repeats: int) -> float:
    """Seconds per surrogate step: a prediction at positions never seen before (no feature-cache hit)."""
    head = surrogate.initial_head()
    rng = np.random.default_rng(0)
    surrogate.predict(atoms, head)  # one-time preparation (and MoLE merge) outside the timing

    def one():
        moved = atoms.copy()
        moved.positions += rng.normal(0, 0.01, moved.positions.shape)
        surrogate.predict(moved, head)

    return median_seconds(one, repeats)


def fine_tune_cost(surrogate, atoms: Atoms, repeats: int) -> tuple[float, float]:
    rng = np.random.default_rng(1)
    surrogate.predict(atoms, surrogate.initial_head())
    colds, warms = [], []
    for _ in range(repeats):
        moved = atoms.copy()
        moved.positions += rng.normal(0, 0.02, moved.positions.shape)
        point = labelled(moved)
        t0 = time.perf_counter()
        surrogate.fine_tune(surrogate.initial_head(), [point])
        colds.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        surrogate.fine_tune(surrogate.initial_head(), [point])
        warms.append(time.perf_counter() - t0)
    return statistics.median(colds), statistics.median(warms)


@click.command()
@click.option("--repeats", default=5, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch threads")
@click.option("--output", default=str(REPO / "benchmarks" / "checkpoint_cost.md"), show_default=True)
def main(repeats: int, threads: int, output: str) -> None:
    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="uma-s-widths-"))
    t0 = time.perf_counter()
    path, task = build("uma-s-1.1", folder, widths=UMA_S)
    build_s = time.perf_counter() - t0
    params = sum(v.numel() for v in torch.load(path, map_location="cpu", weights_only=False).model_state_dict.values())
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    systems = {"Cu(111) 3x3x4 + CO (38 atoms)": slab((3, 3, 4)), "Cu(111) 4x4x4 + CO (66 atoms)": slab((4, 4, 4))}
    rows, memory = [], {}
    for device in devices:
        for label, checkpoint, task_name in (("UMA-S widths, MoLE merged per composition", path, task),
                                             ("UMA-S widths, MoLE unmerged", path, task),
                                             ("shipped (32 ch, 2 layers, direct)", "shipped", "oc20")):
            surrogate = load_surrogate(str(checkpoint), task=task_name, device=device, threads=threads)
            if "unmerged" in label:  # fairchem's general path: the predict unit a changing composition falls back to
                surrogate.prior = Prior(checkpoint, task_name, device, merge_mole=False, threads=threads)
            for name, atoms in systems.items():
                step = step_cost(surrogate, atoms, repeats)
                if device == "cpu" and "UMA" in label:  # parameters of the model the steps ran on
                    used = surrogate.prior.models_in_use()[-1]
                    memory[label] = sum(p.numel() for p in used.parameters())
                cold, warm = fine_tune_cost(surrogate, atoms, max(2, repeats // 2))
                rows.append((device, label, name, step, cold, warm))
                print(rows[-1], flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    lines = [
        "# Prior cost with UMA-S's widths", "",
        f"Made by `python benchmarks/checkpoint_cost.py --repeats {repeats} --threads {threads}` on "
        f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{threads} torch threads, GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}. "
        f"Commit: `{commit}`.", "",
        f"Checkpoint: random weights in UMA-S 1.1's shape (eSCN-MD MoLE backbone, 128 channels, lmax 2, 4 layers, "
        f"32 experts, max_neighbors 300, cutoff 6 A; {params / 1e6:.1f} M parameters in the file, built in "
        f"{build_s:.0f} s by tests/checkpoint_families.py), task `{task}`. Predictions run through fairchem's "
        "predict unit and FAIRChemCalculator (FP32, uncompiled); forces by autograd. Medians of "
        f"{repeats} repeats.", "",
        "| device | prior | system | s / surrogate step | s / fine-tune, cold | s / fine-tune, cached |",
        "|---|---|---|---:|---:|---:|",
    ]
    for device, label, name, step, cold, warm in rows:
        lines.append(f"| {device} | {label} | {name} | {step:.3f} | {cold:.3f} | {warm:.3f} |")
    merged = {name: step for device, label, name, step, *_ in rows if device == "cpu" and "merged per" in label}
    unmerged = {name: step for device, label, name, step, *_ in rows if device == "cpu" and "unmerged" in label}
    lines += ["", "Merging the MoLE experts once per system (fixed composition, as fairchem's merge_mole does) costs "
              "one merge per composition and then saves, per surrogate step: "
              + "; ".join(f"{name}: {unmerged[name]:.3f} -> {merged[name]:.3f} s ({merged[name] / unmerged[name]:.2f}x)"
                          for name in merged) + ".",
              f"Parameters held per model: {memory.get('UMA-S widths, MoLE unmerged', 0) / 1e6:.1f} M unmerged, "
              f"{memory.get('UMA-S widths, MoLE merged per composition', 0) / 1e6:.1f} M merged (one merged copy per "
              "composition in a learn worker, beside the one unmerged model it is copied from).",
              "Cold fine-tune = one forward pass for the new parent point's embeddings + 400 epochs of the residual "
              "heads; cached = the epochs alone (a parent point's embeddings never change: the backbone is frozen)."]
    if not torch.cuda.is_available():
        lines += ["", "No GPU was lent to this run, so there are no CUDA rows and no fine-tune share of a relaxation's "
                  "wall time (paper Fig. S4); the same command adds them where torch sees a GPU."]
    Path(output).write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
