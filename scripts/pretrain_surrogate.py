#!/usr/bin/env python
"""Pretrain the shipped surrogate (finetuna_parsl/surrogate/data/finetuna-small.pt) on EMT labels.

Usage: python scripts/pretrain_surrogate.py [--minutes 95] [--systems 1700] [--workdir runs/pretrain]
                                            [--output PATH] [--seed 0] [--threads 2] [--workers 2] [--strain 0.12]
                                            [--batch 16]

Trains on the GPU when torch sees one, else on the CPU. scripts/device_pretrain.sh is how it ran on a lent GPU
machine (benchmarks/prior-gpu.md); the shipped checkpoint was trained on the CPU.

The split and the frames are described in finetuna_parsl/surrogate/pretrain.py (issue 12): in domain, unary
and Ni/Cu/Pd/Ag/Pt-alloy slabs (fcc111/100/110/211) and bulk with 16 C/H/N/O adsorbates; out of domain,
alloys holding Al or Au with CH2, NH2, HCO, COH, NO, H2O. Resumable: frames are cached in chunks under
--workdir and training state is saved there every epoch, so rerunning the same command continues a killed
run. Progress goes to stdout and to WORKDIR/pretrain.log. The recipe, frame counts, device and the in- and
out-of-domain force MAE (free atoms) are written into the model card (the .json next to the checkpoint).
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import click
import torch

from finetuna_parsl.surrogate.checkpoint import SHIPPED
from finetuna_parsl.surrogate.model import ModelCard, build_model, save_checkpoint, small_model_config
from finetuna_parsl.surrogate.pretrain import METALS, STRAIN, DataRecipe, generate_frames, train
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
def main(minutes: float, n_systems: int, workdir: Path, output: Path, seed: int, threads: int, workers: int,
         strain: float, batch: int) -> None:
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
    recipe = DataRecipe(n_systems=n_systems, seed=seed, strain=strain)
    data = generate_frames(recipe, workdir, workers=workers, log=log)
    counts = {"train": len(data.train), "valid_in": len(data.valid_in), "valid_out": len(data.valid_out)}
    log(f"frames: {counts} ({time.perf_counter() - t0:.0f} s)")
    config = small_model_config()
    model = build_model(config)
    log(f"parameters: {sum(p.numel() for p in model.parameters())}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    metrics = train(model, data, minutes=minutes, batch=batch, seed=seed, device=device,
                    state_file=workdir / "train_state.pt",
                    log=log)
    log(f"free-atom force MAE in-domain {metrics['valid_in_force_mae']:.4f} eV/A, "
        f"out-of-domain {metrics['valid_out_force_mae']:.4f} eV/A after {metrics['epochs']} epochs")
    where = (torch.cuda.get_device_name() if device == "cuda"
             else f"CPU ({platform.processor() or platform.machine()}, {threads} torch threads)")
    card = ModelCard(
        elements=sorted(set(METALS) | {"H", "C", "N", "O"}),
        description=(
            "eSCN-MD (fairchem-core) small direct-force model pretrained on EMT labels with an OC20-style split. "
            f"In domain: unary slabs (fcc111/100/110/211) and bulk of {', '.join(METALS)}; random and ordered "
            f"alloys of {', '.join(ALLOY_METALS)}; adsorbates {', '.join(TRAIN_ADSORBATES)}. Held out: every "
            f"alloy with Al or Au, adsorbates {', '.join(OOD_ADSORBATES)}. Frames from EMT BFGS paths, rattles "
            f"and short Langevin MD: {counts['train']} train, {counts['valid_in']} held-out in-domain, "
            f"{counts['valid_out']} out-of-domain. Trained on {where} for {minutes:g} min; made by {command.strip()}"),
        metrics={k: float(v) for k, v in metrics.items()},
        recipe=dict(recipe.__dict__),
    )
    save_checkpoint(model, config, output, card)
    log(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
