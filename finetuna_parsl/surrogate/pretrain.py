"""Pretraining the shipped surrogate on EMT labels, and the in-domain / out-of-domain frames it is judged on.

In domain: unary fcc111 and fcc100 slabs and bulk of the EMT metals with H, O, C, N, OH, CO.
Out of domain (never in pretraining): bimetallic (mostly stepped fcc211) slabs with CH2, NH2, HCO.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from ..systems import DEMO_METALS, _adsorbate, _fix_lower_slab, ood_systems
from .model import to_batch

METALS = DEMO_METALS
IN_DOMAIN_ADSORBATES = ("H", "O", "C", "N", "OH", "CO")
_SITES = {"fcc111": ("ontop", "bridge", "fcc", "hcp"), "fcc100": ("ontop", "bridge", "hollow")}


def slab_with_adsorbate(metal: str, facet: str, ads: str, site: str, height: float, size=(3, 3, 3)) -> Atoms:
    """A unary in-domain system: slab (lower half fixed) with the adsorbate at a named site."""
    slab = {"fcc111": fcc111, "fcc100": fcc100}[facet](metal, size=size, vacuum=7.0)
    _fix_lower_slab(slab, 0.5)
    mol, index = _adsorbate(ads)
    add_adsorbate(slab, mol, height, site, mol_index=index)
    return slab


def labelled(atoms: Atoms) -> Atoms:
    """A copy carrying EMT energy and forces as a SinglePointCalculator."""
    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.set_constraint(atoms.constraints)
    calc = EMT()
    frame.calc = calc
    energy, forces = frame.get_potential_energy(), frame.get_forces(apply_constraint=False)
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    return frame


def path_and_rattles(system: Atoms, rng: np.random.Generator, n_path: int = 6, n_rattle: int = 3,
                     rattle: float = 0.08) -> list[Atoms]:
    """Frames along an EMT BFGS relaxation of `system`, plus rattled copies of its start."""
    work = system.copy()
    work.calc = EMT()
    frames: list[Atoms] = []
    opt = BFGS(work, logfile=None)
    for _ in opt.irun(fmax=0.03, steps=80):
        frames.append(work.copy())
    picks = np.unique(np.linspace(0, len(frames) - 1, n_path).round().astype(int))
    out = [labelled(frames[i]) for i in picks]
    free = ~np.isin(np.arange(len(system)), system.constraints[0].index if system.constraints else [])
    for _ in range(n_rattle):
        shaken = system.copy()
        shaken.positions[free] += rng.normal(0.0, rattle, (int(free.sum()), 3))
        out.append(labelled(shaken))
    return out


def in_domain_systems(seed: int = 0) -> list[tuple[str, Atoms]]:
    """(id, system) pairs of the pretraining domain: every metal x facet x adsorbate (+ clean slabs)."""
    rng = np.random.default_rng(seed)
    systems = []
    for metal in METALS:
        for facet in ("fcc111", "fcc100"):
            size = (3, 3, 3) if rng.random() < 0.5 else (2, 2, 4)
            for ads in IN_DOMAIN_ADSORBATES:
                site = str(rng.choice(_SITES[facet]))
                height = float(rng.uniform(1.0, 2.0))
                systems.append((f"{metal}-{facet}-{ads}-{site}",
                                slab_with_adsorbate(metal, facet, ads, site, height, size=size)))
    return systems


def out_of_domain_systems(seed: int = 1, count: int = 9) -> list[tuple[str, Atoms]]:
    """Bimetallic slabs (mostly stepped fcc211) with adsorbates pretraining never saw (systems.ood_systems)."""
    return [(spec.system_id, spec.to_atoms()) for spec in ood_systems(count, seed)]


def bulk_frames(rng: np.random.Generator, per_metal: int = 10) -> list[Atoms]:
    """Strained and rattled 32-atom fcc bulk cells."""
    frames = []
    for metal in METALS:
        for _ in range(per_metal):
            cell = bulk(metal, cubic=True).repeat((2, 2, 2))
            cell.set_cell(cell.cell * rng.uniform(0.97, 1.03), scale_atoms=True)
            cell.positions += rng.normal(0.0, 0.1, cell.positions.shape)
            frames.append(labelled(cell))
    return frames


@dataclass
class Dataset:
    train: list[Atoms]
    valid_in: list[Atoms]
    valid_out: list[Atoms]


def _near_equilibrium(frame: Atoms, max_force: float = 8.0) -> bool:
    """Frames whose largest force is below `max_force` eV/A (a squeezed start would dominate the loss)."""
    return float((frame.get_forces(apply_constraint=False) ** 2).sum(axis=1).max()) <= max_force ** 2


def make_dataset(seed: int = 0, valid_fraction: float = 0.12) -> Dataset:
    """EMT-labelled frames; validation in-domain holds out whole systems."""
    rng = np.random.default_rng(seed)
    systems = in_domain_systems(seed)
    order = rng.permutation(len(systems))
    n_valid = max(1, int(valid_fraction * len(systems)))
    train, valid = [], []
    for rank, i in enumerate(order):
        (valid if rank < n_valid else train).extend(path_and_rattles(systems[i][1], rng))
    train.extend(bulk_frames(rng))
    valid_out = [f for _, s in out_of_domain_systems(seed + 1) for f in path_and_rattles(s, rng, n_rattle=2)]
    keep = [[f for f in frames if _near_equilibrium(f)] for frames in (train, valid, valid_out)]
    return Dataset(*keep)


def _targets(frames: list[Atoms], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    energy = torch.tensor([f.get_potential_energy() for f in frames], dtype=torch.float32, device=device)
    forces = torch.tensor(np.concatenate([f.get_forces(apply_constraint=False) for f in frames]),
                          dtype=torch.float32, device=device)
    return energy, forces


def predict(model: torch.nn.Module, frames: list[Atoms], device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Energies (n_frames,) and forces (n_atoms_total, 3) of the model's own heads."""
    out = model(to_batch(frames, device))
    return out["energy"]["energy"].reshape(-1), out["forces"]["forces"]


def force_mae(model: torch.nn.Module, frames: list[Atoms], device: str = "cpu", batch: int = 16) -> float:
    """Mean absolute force-component error (eV/A) over all atoms of `frames`."""
    errors = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            chunk = frames[i:i + batch]
            _, forces = predict(model, chunk, device)
            errors.append((forces - _targets(chunk, device)[1]).abs().reshape(-1))
    return float(torch.cat(errors).mean())


def train(model: torch.nn.Module, data: Dataset, minutes: float, batch: int = 8, lr: float = 2e-3,
          energy_weight: float = 1.0, seed: int = 0, device: str = "cpu",
          log: Callable[[str], None] = print) -> dict[str, float]:
    """AdamW on force MSE + energy-per-atom MSE, cosine-decayed over a wall-clock budget; keeps the best epoch."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60.0
    t0 = time.perf_counter()
    best = (math.inf, None)
    epoch = 0
    while time.perf_counter() - t0 < budget:
        order = rng.permutation(len(data.train))
        total = 0.0
        for i in range(0, len(order), batch):
            frac = min(1.0, (time.perf_counter() - t0) / budget)
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * frac))
            chunk = [data.train[j] for j in order[i:i + batch]]
            energy, forces = predict(model, chunk, device)
            target_e, target_f = _targets(chunk, device)
            natoms = torch.tensor([len(f) for f in chunk], dtype=torch.float32, device=device)
            loss = ((forces - target_f) ** 2).mean() + energy_weight * (((energy - target_e) / natoms) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(chunk)
        epoch += 1
        model.eval()
        mae = force_mae(model, data.valid_in, device)
        model.train()
        if mae < best[0]:
            best = (mae, {k: v.detach().clone() for k, v in model.state_dict().items()})
        log(f"epoch {epoch:3d}  train loss {total / len(order):.4f}  valid in-domain force MAE {mae:.4f} eV/A  "
            f"{time.perf_counter() - t0:.0f} s")
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    return {"epochs": epoch, "valid_in_force_mae": force_mae(model, data.valid_in, device),
            "valid_out_force_mae": force_mae(model, data.valid_out, device)}
