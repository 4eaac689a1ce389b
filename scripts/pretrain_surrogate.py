#!/usr/bin/env python
"""Pretrain the shipped surrogate (finetuna_parsl/surrogate/data/finetuna-small.pt) on EMT labels.

Usage: python scripts/pretrain_surrogate.py [--minutes 95] [--systems 1700] [--workdir runs/pretrain]
                                            [--output PATH] [--seed 0] [--threads 2] [--workers 2] [--strain 0.12]
                                            [--batch 16] [--frames DIR] [--energy-weight 1.0]
                                            [--channels 32] [--layers 2] [--lmax 2]

Trains on the GPU when torch sees one, else on the CPU. scripts/device_pretrain.sh is how it ran on a lent GPU
machine (benchmarks/history/2026-12-01-prior-gpu.md); the shipped checkpoint was trained on the CPU.

The split and the frames are described in finetuna_parsl/surrogate/pretrain.py (issue 12): in domain, unary
and Ni/Cu/Pd/Ag/Pt-alloy slabs (fcc111/100/110/211) and bulk with 16 C/H/N/O adsorbates; out of domain,
alloys holding Al or Au with CH2, NH2, HCO, COH, NO, H2O. Resumable: frames are cached in chunks under
--workdir and training state is saved there every epoch, so rerunning the same command continues a killed
run. Progress goes to stdout and to WORKDIR/pretrain.log. The recipe, frame counts, device and the in- and
out-of-domain force MAE (free atoms) are written into the model card (the .json next to the checkpoint).

With --frames DIR, no EMT labelling: training takes the frames another parent labelled into DIR
(scripts/standin_label.py, the stand-in world of issue 25; read by pretrain.read_split_frames), and the card
records DIR/recipe.json and the frames' elements. Give --output then (the default is the shipped prior).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import click
import torch

from finetuna_parsl.surrogate.checkpoint import SHIPPED
from finetuna_parsl.surrogate.model import ModelCard, build_model, save_checkpoint, small_model_config
from finetuna_parsl.surrogate.pretrain import METALS, STRAIN, DataRecipe, generate_frames, read_split_frames, train
from finetuna_parsl.systems import ALLOY_METALS, OOD_ADSORBATES, TRAIN_ADSORBATES


@click.command()
@click.option("--minutes", default=95.0, show_default=True, help="wall-clock training budget (after labelling)")
@click.option("--systems", "n_systems", default=1700, show_default=True, help="in-domain systems to label")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("runs/pretrain"), show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=SHIPPED, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True, help="torch threads for training")
@click.option("--workers", default=2, show_default=True, help="processes labelling frames with EMT")
@click.option("--strain", default=STRAIN, show_default=True,
              help="largest fractional strain of in-domain lattice constants (a new value needs a new --workdir)")
@click.option("--batch", default=16, type=click.IntRange(min=1), show_default=True, help="frames per optimizer step")
@click.option("--frames", "frames_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="train on frames labelled into this folder (scripts/standin_label.py), not on EMT labels")
@click.option("--energy-weight", default=1.0, show_default=True,
              help="weight of the energy-per-atom MSE (eV^2) against the force MSE ((eV/A)^2) in the loss")
@click.option("--channels", default=32, show_default=True, type=click.IntRange(min=8),
              help="eSCN-MD sphere (and edge, hidden) channels of the model (surrogate/model.py small_model_config)")
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1), help="eSCN-MD message-passing layers")
@click.option("--lmax", default=2, show_default=True, type=click.IntRange(min=1, max=6), help="eSCN-MD lmax")
def main(minutes: float, n_systems: int, workdir: Path, output: Path, seed: int, threads: int, workers: int,
         strain: float, batch: int, frames_dir: Path | None, energy_weight: float, channels: int, layers: int,
         lmax: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = (workdir / "pretrain.log").open("a")

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    command = "python scripts/pretrain_surrogate.py " + " ".join(sys.argv[1:])
    log(f"start: {command}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if frames_dir is not None:
        data = read_split_frames(frames_dir)
        recipe_file = frames_dir / "recipe.json"
        recipe = json.loads(recipe_file.read_text()) if recipe_file.is_file() else {}
    else:
        recipe = DataRecipe(n_systems=n_systems, seed=seed, strain=strain)
        data = generate_frames(recipe, workdir, workers=workers, log=log)
    counts = {"train": len(data.train), "valid_in": len(data.valid_in), "valid_out": len(data.valid_out)}
    log(f"frames: {counts} ({time.perf_counter() - t0:.0f} s)")
    if not data.train or not data.valid_in:
        raise click.ClickException(f"no {'training' if not data.train else 'held-out in-domain'} frames ({counts}): "
                                   "label more before training")
    config = small_model_config(sphere_channels=channels, num_layers=layers, lmax=lmax)
    model = build_model(config)
    log(f"parameters: {sum(p.numel() for p in model.parameters())}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = train(model, data, minutes=minutes, batch=batch, seed=seed, device=device, energy_weight=energy_weight,
                    state_file=workdir / "train_state.pt",
                    log=log)
    log(f"free-atom force MAE in-domain {metrics['valid_in_force_mae']:.4f} eV/A, "
        f"out-of-domain {metrics['valid_out_force_mae']:.4f} eV/A after {metrics['epochs']} epochs")
    where = (torch.cuda.get_device_name() if device == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {threads} torch threads)")
    if frames_dir is not None:
        elements = sorted({sym for f in data.train for sym in f.get_chemical_symbols()})
        description = (
            "eSCN-MD (fairchem-core) small direct-force model pretrained on the stand-in world's labels "
            f"({recipe.get('standin', 'another parent')}; issue 25): OC20-style adsorbate+slab systems made by "
            "scripts/standin_structures.py, none with an adsorbate or a bulk composition of the 30 oc20-ood30 "
            f"systems. Frames from stand-in BFGS paths and rattles: {counts['train']} train, "
            f"{counts['valid_in']} held-out in-domain, {counts['valid_out']} out-of-domain (the 30 test systems' "
            f"BFGS paths). Trained on {where} for {minutes:g} min; made by {command.strip()}")
        recipe_fields = dict(recipe)
    else:
        elements = sorted(set(METALS) | {"H", "C", "N", "O"})
        description = (
            "eSCN-MD (fairchem-core) small direct-force model pretrained on EMT labels with an OC20-style split. "
            f"In domain: unary slabs (fcc111/100/110/211) and bulk of {', '.join(METALS)}; random and ordered "
            f"alloys of {', '.join(ALLOY_METALS)}; adsorbates {', '.join(TRAIN_ADSORBATES)}. Held out: every "
            f"alloy with Al or Au, adsorbates {', '.join(OOD_ADSORBATES)}. Frames from EMT BFGS paths, rattles "
            f"and short Langevin MD: {counts['train']} train, {counts['valid_in']} held-out in-domain, "
            f"{counts['valid_out']} out-of-domain. Trained on {where} for {minutes:g} min; made by {command.strip()}")
        recipe_fields = dict(recipe.__dict__)
    card = ModelCard(elements=elements, description=description,
                     metrics={k: float(v) for k, v in metrics.items()}, recipe=recipe_fields)
    save_checkpoint(model, config, output, card)
    log(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
