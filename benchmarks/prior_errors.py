#!/usr/bin/env python
"""Where the pretrained prior's force error lives, per element, in and out of domain -> benchmarks/prior-errors.md.

Usage: python benchmarks/prior_errors.py [--checkpoint shipped] [--data runs/pretrain] [--output ...]

Reads the pretraining frames of `--data` (scripts/pretrain_surrogate.py's work folder: its held-out in-domain
frames, every second one, and its out-of-domain frames) and reports the prior's mean absolute force-component
error (eV/A) on free atoms, split by element and by metal vs adsorbate atom. Issue 12 asks for out-of-domain
at most 2x in-domain; this says which atoms carry the gap.
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
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
