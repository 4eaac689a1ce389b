"""The shipped model's definition and file format, for pretraining it: config, save, atoms -> batch.

The network is fairchem's own (eSCN-MD backbone from the UMA family, Linear_Energy_Head and the
direct Linear_Force_Head), built with hydra from a config and saved as fairchem's
MLIPInferenceCheckpoint, so that fairchem's predict unit loads it like any other checkpoint
(see prior.py; nothing here is used to predict with a checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from .checkpoint import SurrogateError

BACKBONE = "fairchem.core.models.uma.escn_md.eSCNMDBackbone"  # full dotted path: registry short names fail in fresh processes
ENERGY_HEAD = "fairchem.core.models.uma.escn_md.Linear_Energy_Head"
FORCE_HEAD = "fairchem.core.models.uma.escn_md.Linear_Force_Head"
TASK_NAME = "oc20"


def small_model_config(sphere_channels: int = 32, num_layers: int = 2, lmax: int = 2, cutoff: float = 5.0,
                       max_neighbors: int = 30) -> dict[str, Any]:
    """Hydra config of the shipped model: a small direct-force eSCN-MD with linear energy and force heads."""
    return {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": {
            "model": BACKBONE, "max_num_elements": 100, "sphere_channels": sphere_channels, "lmax": lmax,
            "mmax": min(lmax, 2), "otf_graph": True, "max_neighbors": max_neighbors, "cutoff": cutoff,
            "edge_channels": sphere_channels, "num_distance_basis": 64, "num_layers": num_layers,
            "hidden_channels": sphere_channels, "direct_forces": True, "regress_forces": True,
            "use_dataset_embedding": False, "always_use_pbc": False,
        },
        # Heads named after the tasks they serve: fairchem's predict unit reads output[task name][property].
        "heads": {f"{TASK_NAME}_energy": {"module": ENERGY_HEAD}, f"{TASK_NAME}_forces": {"module": FORCE_HEAD}},
    }


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """A fresh (untrained) HydraModel from a hydra config."""
    import hydra

    return hydra.utils.instantiate(config)


def _tasks_config() -> list[dict[str, Any]]:
    """fairchem Task configs for the shipped model's two outputs (what a fairchem tool expects to find)."""
    def task(prop: str, level: str, dim: list[int]) -> dict[str, Any]:
        return {
            "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": f"{TASK_NAME}_{prop}", "level": level,
            "property": prop, "datasets": [TASK_NAME],
            "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim, "dtype": "float32"},
            "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer", "mean": 0.0, "rmsd": 1.0},
        }
    return [task("energy", "system", [1]), task("forces", "atom", [3])]


@dataclass
class ModelCard:
    """What the shipped checkpoint was trained on (the JSON file next to it)."""

    elements: list[str] = field(default_factory=list)
    description: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    #: The frames' recipe (surrogate.pretrain.DataRecipe's fields: n_systems, n_out_of_domain, seed,
    #: valid_every, strain as a fraction of the lattice constant); empty where the card predates it.
    recipe: dict[str, float] = field(default_factory=dict)


def card_path(checkpoint: Path) -> Path:
    return checkpoint.with_suffix(".json")


def read_card(checkpoint: Path) -> ModelCard:
    """The model card next to `checkpoint` (an empty card where there is none).

    The card only informs (unseen-element warnings, reports), so fields this version does not know (a card
    written by another version of finetuna-parsl) are left out rather than stopping the surrogate. Raises
    SurrogateError (one line, naming the file) when it is not a JSON object.
    """
    path = card_path(Path(checkpoint))
    if not path.is_file():
        return ModelCard()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SurrogateError(f"model card {path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise SurrogateError(f"model card {path}: expected a JSON object, got {type(data).__name__}")
    known = ModelCard.__dataclass_fields__
    return ModelCard(**{k: v for k, v in data.items() if k in known})


def save_inference_checkpoint(model: torch.nn.Module, config: dict[str, Any], tasks_config: list[dict[str, Any]],
                              path: Path) -> None:
    """Write `model` as fairchem saves inference checkpoints: an MLIPInferenceCheckpoint with the model and
    EMA state dicts (fairchem's predict unit loads the EMA one: an AveragedModel state, "module." keys +
    n_averaged), as in fairchem's convert_train_checkpoint_to_inference_checkpoint."""
    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    ema = torch.optim.swa_utils.AveragedModel(model.cpu()).state_dict()
    ckpt = MLIPInferenceCheckpoint(model_config=config, model_state_dict=state, ema_state_dict=ema,
                                   tasks_config=tasks_config)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


def save_checkpoint(model: torch.nn.Module, config: dict[str, Any], path: Path, card: ModelCard) -> None:
    """Write the shipped model's checkpoint (its two oc20 tasks) and its model card JSON."""
    save_inference_checkpoint(model, config, _tasks_config(), path)
    card_path(path).write_text(json.dumps(card.__dict__, indent=1) + "\n")


def atomic_data(atoms: Atoms, cutoff: float = 6.0):
    """One frame as fairchem's AtomicData (no edges: the backbone builds its graph on the fly)."""
    from fairchem.core.datasets.atomic_data import AtomicData

    plain = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    return AtomicData.from_ase(plain, task_name=TASK_NAME, r_edges=False, radius=cutoff)


def collate(data: list, device: str = "cpu"):
    """A batch of AtomicData frames (made by `atomic_data`), on `device`."""
    from fairchem.core.datasets.atomic_data import atomicdata_list_to_batch

    return atomicdata_list_to_batch(data).to(device)


def to_batch(atoms_list: list[Atoms], device: str = "cpu", cutoff: float = 6.0):
    """A fairchem AtomicData batch (graph built on the fly by the backbone)."""
    return collate([atomic_data(atoms, cutoff) for atoms in atoms_list], device)


def unseen_elements(numbers: np.ndarray, card: ModelCard) -> list[str]:
    """Elements of a system that the model card says pretraining never saw (empty if the card is silent)."""
    if not card.elements:
        return []
    return sorted({chemical_symbols[z] for z in np.unique(numbers)} - set(card.elements))
