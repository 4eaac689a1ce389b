#!/usr/bin/env python
"""Where the pretrained prior's force error lives, per element, in and out of domain -> benchmarks/prior-errors.md.

Usage: python benchmarks/prior_errors.py [--checkpoint shipped] [--data runs/pretrain] [--output ...]

Reads the pretraining frames of `--data` (scripts/pretrain_surrogate.py's work folder: its held-out in-domain
frames, every second one, and its out-of-domain frames) and reports the prior's mean absolute force-component
error (eV/A) on free atoms, split by element and by metal vs adsorbate atom. Issue 12 asks for out-of-domain
at most 2x in-domain; this says which atoms carry the gap. A second table scans the lattice strain of rattled
unary fcc111 slabs (an alloy squeezes its larger atom and stretches its smaller one), against the strain range
the checkpoint trained on (its model card's recipe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np

METALS = {"Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au"}
STRAINS = (-0.10, -0.06, -0.03, 0.0, 0.03, 0.06, 0.10)


def strain_scan(surrogate, head, metals=("Al", "Au", "Ni", "Pd"), repeats: int = 3) -> dict[str, list[float]]:
    """Force MAE (eV/A, free atoms) per metal and strain of 3x3x3 fcc111 slabs, top two layers rattled by
    0.08 A (seeded), EMT labels."""
    from ase.build import fcc111
    from ase.constraints import FixAtoms
    from ase.data import atomic_numbers, reference_states

    from finetuna_parsl.surrogate.pretrain import labelled

    rng = np.random.default_rng(0)
    out = {}
    for metal in metals:
        a0 = reference_states[atomic_numbers[metal]]["a"]
        out[metal] = []
        for strain in STRAINS:
            errors = []
            for _ in range(repeats):
                slab = fcc111(metal, (3, 3, 3), a=a0 * (1 + strain), vacuum=7.0)
                slab.set_constraint(FixAtoms(indices=range(9)))
                slab.positions[9:] += rng.normal(0, 0.08, (18, 3))
                frame = labelled(slab)
                _, forces, _ = surrogate.predict(frame, head)
                errors.append(np.abs(forces[9:] - frame.get_forces(apply_constraint=False)[9:]).mean())
            out[metal].append(float(np.mean(errors)))
    return out


@click.command()
@click.option("--checkpoint", default="shipped", show_default=True)
@click.option("--data", type=click.Path(path_type=Path), default=Path("runs/pretrain"), show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=Path(__file__).with_name("prior-errors.md"))
def main(checkpoint: str, data: Path, output: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from finetuna_parsl.surrogate import load_surrogate
    from finetuna_parsl.surrogate.pretrain import DataRecipe, generate_frames

    torch.set_num_threads(1)
    surrogate = load_surrogate(checkpoint, device="cpu")
    head = surrogate.initial_head()
    recipe = DataRecipe(**json.loads((data / "recipe.json").read_text()))
    frames = generate_frames(recipe, data, workers=1, log=lambda _m: None)
    table: dict[str, dict[str, list[float]]] = {}
    for split, chosen in (("in domain", frames.valid_in[::2]), ("out of domain", frames.valid_out)):
        errors: dict[str, list[float]] = {}
        for frame in chosen:
            _, forces, _ = surrogate.predict(frame, head)
            error = np.abs(forces - frame.get_forces(apply_constraint=False))
            for i, symbol in enumerate(frame.get_chemical_symbols()):
                if frame.arrays["free"][i]:
                    kind = "metal" if symbol in METALS else "adsorbate"
                    for key in ("all free atoms", f"{kind} atoms", f"{kind} {symbol}"):
                        errors.setdefault(key, []).extend(error[i])
        table[split] = errors
    keys = sorted(set(table["in domain"]) | set(table["out of domain"]),
                  key=lambda k: (not k.startswith("all"), not k.endswith("atoms"), k))

    def cell(split: str, key: str) -> str:
        values = table[split].get(key)
        return f"{np.mean(values):.4f} ({len(values) // 3})" if values else "-"

    def ratio(key: str) -> str:
        a, b = table["in domain"].get(key), table["out of domain"].get(key)
        return f"{np.mean(b) / np.mean(a):.1f}x" if a and b else "-"

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = ("python benchmarks/prior_errors.py " + " ".join(sys.argv[1:])).strip()
    lines = ["# Where the prior's force error lives", "",
             f"Made by `{command}` at commit `{commit}`, "
             f"checkpoint `{checkpoint}`, frames from `{data}` (held-out in-domain frames, every second one; all "
             "out-of-domain frames). Mean absolute force-component error, eV/A, over free atoms (atom count).", "",
             "| atoms | in domain | out of domain | out / in |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {cell('in domain', k)} | {cell('out of domain', k)} | {ratio(k)} |" for k in keys]
    scan = strain_scan(surrogate, head)
    trained = surrogate.card.recipe.get("strain")  # the checkpoint's own recipe, not the --data frames'
    trained = (f"the checkpoint trained on strains up to {trained:.0%} either way" if trained is not None
               else "the checkpoint's card does not record the strain range it trained on")
    lines += ["", f"Rattled unary fcc111 slabs (3x3x3, top two layers free, 0.08 A rattle, 3 per cell) under lattice "
              f"strain; {trained}. Force MAE, eV/A.", "",
              "| metal | " + " | ".join(f"{s:+.0%}" for s in STRAINS) + " |", "|---|" + "---:|" * len(STRAINS)]
    lines += [f"| {m} | " + " | ".join(f"{v:.3f}" for v in values) + " |" for m, values in scan.items()]
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
