#!/usr/bin/env python
"""Surrogate benchmark -> benchmarks/surrogate.md: pretrained force MAE, the fine-tuning effect, fine-tune cost.

Usage: python benchmarks/surrogate.py [--checkpoint shipped] [--systems 6] [--data runs/pretrain]
                                     [--output benchmarks/surrogate.md]

1. Pretrained force MAE on held-out in-domain frames and on out-of-domain frames (the pretraining script's split
   and frames: --data is its work folder; frames not there are labelled again, which takes a while).
2. The paper's Fig. S1 effect: for out-of-domain systems (the "ood" source: unseen adsorbates on unseen alloys),
   force MAE on the frames of the system's own EMT relaxation path before and after head-only fine-tuning on 1,
   3 and 5 parent points taken from that path, one at a time as the online learner does (newest point only).
3. Seconds per fine-tune (400 epochs) on a 62-atom system: first call (backbone features computed) and cached.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc211, molecule
from ase.constraints import FixAtoms

from finetuna_parsl.surrogate import load_surrogate
from finetuna_parsl.surrogate.pretrain import DataRecipe, generate_frames, labelled, system_frames
from finetuna_parsl.surrogate.surrogate import free_mask
from finetuna_parsl.systems import ood_systems

POINTS = (1, 3, 5)


def force_mae(surrogate, head, frames: list[Atoms]) -> float:
    """Mean absolute force-component error (eV/A) over the free atoms of `frames`."""
    errors = []
    for frame in frames:
        _, forces, _ = surrogate.predict(frame, head)
        free = free_mask(frame)
        errors.append(np.abs(forces[free] - frame.get_forces(apply_constraint=False)[free]).ravel())
    return float(np.concatenate(errors).mean())


def fine_tune_effect(surrogate, n_systems: int) -> list[dict]:
    """Per OOD system: MAE on held-out path frames before and after 1, 3, 5 sequential newest-point fine-tunes."""
    rows, rng = [], np.random.default_rng(7)
    for spec in ood_systems(n_systems, seed=7):
        path = system_frames(spec.to_atoms(), rng, n_path=10_000, n_rattle=0, n_md=0)  # every EMT path frame
        picks = np.unique(np.linspace(0, len(path) // 2, max(POINTS)).round().astype(int))
        train = [path[i] for i in picks]
        held_out = [f for i, f in enumerate(path) if i not in set(picks)]
        head = surrogate.initial_head()
        row = {"system": spec.system_id, "atoms": len(path[0]), "frames": len(held_out),
               "before": force_mae(surrogate, head, held_out)}
        for n, point in enumerate(train, start=1):
            head, _ = surrogate.fine_tune(head, [point])
            if n in POINTS:
                row[n] = force_mae(surrogate, head, held_out)
        rows.append(row)
    return rows


def sixty_atoms() -> Atoms:
    """A 60-atom stepped Cu(211) slab with CO on top (62 atoms): the size the issue asks the cost for."""
    slab = fcc211("Cu", size=(3, 4, 5), vacuum=8.0)
    add_adsorbate(slab, molecule("CO"), 1.8, position=(slab.cell[0, 0] / 2, slab.cell[1, 1] / 2))
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.position[2] < slab.positions[:, 2].min() + 2.0]))
    return labelled(slab)


def fine_tune_cost(surrogate, atoms: Atoms, repeats: int = 5) -> dict[str, float]:
    """Seconds for one fine-tune call: cold (features computed) and warm (cached features, heads only)."""
    surrogate._cache.clear()
    head = surrogate.initial_head()
    t0 = time.perf_counter()
    head, _ = surrogate.fine_tune(head, [atoms])
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        head, _ = surrogate.fine_tune(head, [atoms])
        warm.append(time.perf_counter() - t0)
    return {"cold": cold, "warm": statistics.median(warm)}


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), GPU: {gpu}"


@click.command()
@click.option("--checkpoint", default="shipped", show_default=True)
@click.option("--systems", "n_systems", default=6, show_default=True, help="out-of-domain systems for the fine-tune table")
@click.option("--threads", default=1, show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=Path("runs/pretrain"), show_default=True,
              help="the pretraining work folder (its recipe.json and frames)")
@click.option("--output", type=click.Path(path_type=Path), default=Path(__file__).with_name("surrogate.md"))
def main(checkpoint: str, n_systems: int, threads: int, data: Path, output: Path) -> None:
    torch.set_num_threads(threads)
    command = "python benchmarks/surrogate.py " + " ".join(sys.argv[1:])
    lines = ["# Surrogate benchmark", "", f"Made by `{command.strip()}` on {machine()}.",
             f"Commit: `{subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}`.", ""]

    cpu = load_surrogate(checkpoint, device="cpu", threads=threads)
    card = cpu.card
    path = Path(cpu.checkpoint).resolve()
    repo = Path(__file__).resolve().parent.parent
    shown = path.relative_to(repo) if path.is_relative_to(repo) else path  # not the checkout it ran in
    lines += [f"Checkpoint: `{checkpoint}` ({shown}); {card.description}", ""]

    recipe = DataRecipe(**json.loads((data / "recipe.json").read_text())) if (data / "recipe.json").exists() \
        else DataRecipe()
    frames = generate_frames(recipe, data)
    prior = cpu.initial_head()
    lines += ["## Pretrained force MAE (free atoms, eV/A)", "",
              "| frames | count | force MAE |", "|---|---:|---:|",
              f"| in-domain held-out systems (unary and Ni/Cu/Pd/Ag/Pt alloys, seen adsorbates) | "
              f"{len(frames.valid_in)} | {(mae_in := force_mae(cpu, prior, frames.valid_in)):.4f} |",
              f"| out-of-domain (Al or Au alloys; CH2 NH2 HCO COH NO H2O) | {len(frames.valid_out)} | "
              f"{(mae_out := force_mae(cpu, prior, frames.valid_out)):.4f} |", "",
              f"Out of domain / in domain: {mae_out / mae_in:.1f}x (target: at most 2x and at most 0.08 eV/A).", ""]
    print("\n".join(lines))

    rows = fine_tune_effect(cpu, n_systems)
    table = ["## Fine-tuning on the system's own parent points (paper Fig. S1)", "",
             "Force MAE (eV/A, free atoms) on the held-out frames of each out-of-domain system's EMT relaxation "
             "path, before and after head-only fine-tuning (400 epochs per point, newest point only, as the "
             "online learner does) on 1, 3 and 5 parent points from the first half of that path.", "",
             "| system | atoms | held-out frames | pretrained | 1 point | 3 points | 5 points |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        table.append(f"| {r['system']} | {r['atoms']} | {r['frames']} | {r['before']:.4f} | "
                     + " | ".join(f"{r[n]:.4f}" for n in POINTS) + " |")
    means = {k: statistics.mean(r[k] for r in rows) for k in ("before", *POINTS)}
    table.append(f"| **mean** | | | **{means['before']:.4f}** | "
                 + " | ".join(f"**{means[n]:.4f}**" for n in POINTS) + " |")
    table.append("")
    table.append(f"Mean MAE after 5 points is {means[5] / means['before']:.0%} of the pretrained MAE.")
    table.append("")
    print("\n".join(table))
    lines += table

    atoms = sixty_atoms()
    cost = ["## Fine-tune cost per parent call (400 epochs, 62-atom Cu(211)+CO)", "",
            "Cold: the backbone pass for the new point's features plus 400 head epochs; cached: heads only "
            "(the features of a parent point never change, because the backbone is frozen).", "",
            "| device | ensemble | cold s | cached s |", "|---|---:|---:|---:|"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for members in (1, 5):
            model = load_surrogate(checkpoint, device=device, ensemble_size=members, threads=threads)
            c = fine_tune_cost(model, atoms)
            cost.append(f"| {device} | {members} | {c['cold']:.3f} | {c['warm']:.3f} |")
    if not torch.cuda.is_available():
        cost += ["", "No GPU was available to this run; the CUDA rows appear when one is."]
    cost.append("")
    print("\n".join(cost))
    lines += cost
    output.write_text("\n".join(lines) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
