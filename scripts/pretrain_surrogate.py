#!/usr/bin/env python
"""Pretrain the shipped surrogate (finetuna_parsl/surrogate/data/finetuna-small.pt) on EMT labels.

Usage: python scripts/pretrain_surrogate.py [--minutes 20] [--output PATH] [--seed 0]
Only unary fcc111/fcc100 slabs and bulk of Al Ni Cu Pd Ag Pt Au with H O C N OH CO are used;
bimetallic fcc211 slabs with CH2 NH2 HCO are the out-of-domain validation set.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from finetuna_parsl.surrogate.model import SHIPPED, ModelCard, build_model, save_checkpoint, small_model_config
from finetuna_parsl.surrogate.pretrain import IN_DOMAIN_ADSORBATES, METALS, make_dataset, train


@click.command()
@click.option("--minutes", default=20.0, show_default=True, help="wall-clock training budget")
@click.option("--output", type=click.Path(path_type=Path), default=SHIPPED, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True)
def main(minutes: float, output: Path, seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = make_dataset(seed)
    print(f"frames: train {len(data.train)}, valid in-domain {len(data.valid_in)}, "
          f"valid out-of-domain {len(data.valid_out)} ({time.perf_counter() - t0:.0f} s to label with EMT)")
    config = small_model_config()
    model = build_model(config)
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    metrics = train(model, data, minutes=minutes, seed=seed)
    print(f"force MAE in-domain {metrics['valid_in_force_mae']:.4f} eV/A, "
          f"out-of-domain {metrics['valid_out_force_mae']:.4f} eV/A after {metrics['epochs']} epochs")
    card = ModelCard(
        elements=sorted(set(METALS) | {"H", "C", "N", "O"}),
        description=("eSCN-MD (fairchem-core) small direct-force model pretrained on EMT labels of unary fcc111/fcc100 "
                     f"slabs and bulk of {', '.join(METALS)} with {', '.join(IN_DOMAIN_ADSORBATES)}; "
                     f"made by scripts/pretrain_surrogate.py --minutes {minutes} --seed {seed}"),
        metrics={k: float(v) for k, v in metrics.items()},
    )
    save_checkpoint(model, config, output, card)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
