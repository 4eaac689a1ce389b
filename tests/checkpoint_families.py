"""Small random-weight fairchem checkpoints of every model family a user may bring as the prior.

Each family is built from fairchem's own classes with hydra, shaped after fairchem's release training
configs (`configs/uma/training_release/*.yaml` in the fairchem repository: backbone/K4L2.yaml,
uma_sm_conserve_finetune.yaml, uma_sm_direct_pretrain.yaml, tasks/uma_conserving_stress.yaml,
tasks/uma_direct.yaml), with only the widths shrunk, and saved the way fairchem saves inference
checkpoints: `MLIPInferenceCheckpoint(model_config, model_state_dict, ema_state_dict, tasks_config)`
(`fairchem.core.units.mlip_unit.mlip_unit.convert_train_checkpoint_to_inference_checkpoint`), the EMA
state being an `AveragedModel` state dict (`module.` prefix + `n_averaged`).

Random weights make the numbers meaningless as physics but exact as a test of the prediction path:
normaliser rmsd != 1, random element references and MoLE experts all change the answer, so a prior
that skips any of them differs from fairchem's calculator by eV, not by 1e-4.

Families: `uma-s-1.1`, `uma-s-1.2`, `esen-omol`, `esen-plain`, `energy-only`, `direct-dataset` and
`shipped` (the package's own model, copied). `build(family, folder)` returns (path, task).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

DATASETS = ["oc20", "omol", "omat", "odac", "omc"]
RMSD = 1.423  # normalizer_rmsd of the UMA release configs
ESCN_MD = "fairchem.core.models.uma.escn_md"
ESCN_MOE = "fairchem.core.models.uma.escn_moe"

TINY = {"sphere_channels": 16, "hidden_channels": 16, "edge_channels": 16, "num_layers": 2, "num_experts": 4,
        "num_distance_basis": 16, "max_neighbors": 30}
# UMA-S's real widths (backbone/K4L2.yaml: 128 channels, lmax 2, 4 layers; 32 MoLE experts in UMA-S).
UMA_S = {"sphere_channels": 128, "hidden_channels": 128, "edge_channels": 128, "num_layers": 4, "num_experts": 32,
         "num_distance_basis": 64, "max_neighbors": 300}

FAMILIES = ("uma-s-1.1", "uma-s-1.2", "esen-omol", "esen-plain", "energy-only", "direct-dataset", "shipped")
TASK_OF = {"uma-s-1.1": "oc20", "uma-s-1.2": "oc20", "esen-omol": "omol", "esen-plain": "omat",
           "energy-only": "oc20", "direct-dataset": "oc20", "shipped": "oc20"}


def _task(name: str, level: str, prop: str, datasets: list[str], refs: list[float] | None = None) -> dict:
    dim = {"energy": [1], "forces": [3], "stress": [1, 9]}[prop]
    task = {
        "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": name, "level": level, "property": prop,
        "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim, "dtype": "float32"},
        "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer", "mean": 0.0,
                       "rmsd": RMSD},
        "datasets": datasets,
    }
    if prop == "forces":
        task.update(train_on_free_atoms=True, eval_on_free_atoms=True)
    if refs is not None:
        task["element_references"] = {
            "_target_": "fairchem.core.modules.normalization.element_references.ElementReferences",
            "element_references": {"_target_": "torch.DoubleTensor", "_args_": [refs]},
        }
    return task


def _refs(seed: int) -> list[float]:
    """Random per-element reference energies (eV), index = atomic number, as the release element_refs files."""
    g = torch.Generator().manual_seed(seed)
    return [0.0] + (-1.0 - 4.0 * torch.rand(99, generator=g, dtype=torch.float64)).tolist()


def _conserving_tasks(datasets: list[str], prefixed: bool = True, stress: tuple[str, ...] = ("omat", "omc")) -> list:
    """tasks/uma_conserving_stress.yaml: per-dataset energy (element refs), forces, and stress for bulk datasets."""
    tasks = []
    for i, ds in enumerate(datasets):
        p = f"{ds}_" if prefixed else ""
        tasks.append(_task(f"{p}energy", "system", "energy", [ds], _refs(i)))
        tasks.append(_task(f"{p}forces", "atom", "forces", [ds]))
        if ds in stress:
            tasks.append(_task(f"{p}stress", "system", "stress", [ds]))
    return tasks


def _backbone(widths: dict, *, moe: bool, direct: bool, datasets: list[str], mapping: bool = False,
              regress_forces: bool = True, regress_stress: bool = False, dataset_embedding: bool = True) -> dict:
    """backbone/K4L2.yaml with the widths given."""
    backbone = {
        "model": f"{ESCN_MOE}.eSCNMDMoeBackbone" if moe else f"{ESCN_MD}.eSCNMDBackbone",
        "max_num_elements": 100, "sphere_channels": widths["sphere_channels"], "lmax": 2, "mmax": 2,
        "otf_graph": True, "max_neighbors": widths["max_neighbors"], "use_pbc": True, "use_pbc_single": True,
        "cutoff": 6.0, "edge_channels": widths["edge_channels"], "distance_function": "gaussian",
        "num_distance_basis": widths["num_distance_basis"], "regress_forces": regress_forces,
        "regress_stress": regress_stress, "direct_forces": direct, "num_layers": widths["num_layers"],
        "hidden_channels": widths["hidden_channels"], "norm_type": "rms_norm_sh", "act_type": "gate",
        "ff_type": "spectral", "chg_spin_emb_type": "rand_emb", "cs_emb_grad": True,
        "use_dataset_embedding": dataset_embedding,
    }
    if dataset_embedding:
        if mapping:
            backbone["dataset_mapping"] = {ds: ds for ds in datasets}
        else:
            backbone["dataset_list"] = list(datasets)
    if moe:
        backbone.update(num_experts=widths["num_experts"], moe_dropout=0.05, moe_layer_type="pytorch",
                        use_composition_embedding=True, use_global_embedding=False)
    return backbone


def family_config(family: str, widths: dict = TINY) -> tuple[dict, list[dict]]:
    """(model_config, tasks_config) of one family."""
    hydra_model = "fairchem.core.models.base.HydraModel"
    if family != "direct-dataset":  # conserving models use max_neighbors 300 (uma_sm_conserve_finetune.yaml): a
        widths = {**widths, "max_neighbors": 300}  # truncated neighbour list makes the energy jump, not smooth
    if family == "uma-s-1.1":  # uma_sm_conserve_finetune.yaml: MoLE backbone, one EFS head wrapped per dataset
        backbone = _backbone(widths, moe=True, direct=False, datasets=DATASETS, regress_stress=True)
        backbone["model_version"] = 1.1
        heads = {"energyandforcehead": {
            "module": f"{ESCN_MOE}.DatasetSpecificSingleHeadWrapper", "head_cls": f"{ESCN_MD}.MLP_EFS_Head",
            "head_kwargs": {"wrap_property": False}, "dataset_names": list(DATASETS)}}
        config = {"_target_": hydra_model, "backbone": backbone, "heads": heads, "pass_through_head_outputs": True}
        return config, _conserving_tasks(DATASETS)
    if family == "uma-s-1.2":  # dataset_mapping, per-dataset MoE head experts, tagged model_id
        backbone = _backbone(widths, moe=True, direct=False, datasets=DATASETS, mapping=True, regress_stress=True)
        heads = {"energyandforcehead": {
            "module": f"{ESCN_MOE}.DatasetSpecificMoEWrapper", "head_cls": f"{ESCN_MD}.MLP_EFS_Head",
            "head_kwargs": {"wrap_property": False}, "dataset_mapping": {ds: ds for ds in DATASETS}}}
        config = {"_target_": hydra_model, "backbone": backbone, "heads": heads, "pass_through_head_outputs": True,
                  "model_id": "UMA-S-1.2"}
        return config, _conserving_tasks(DATASETS)
    if family == "esen-omol":  # eSEN conservative trained on one dataset: prefixed EFS head, omol tasks only
        backbone = _backbone(widths, moe=False, direct=False, datasets=["omol"])
        heads = {"efs": {"module": f"{ESCN_MD}.MLP_EFS_Head", "prefix": "omol", "wrap_property": True}}
        config = {"_target_": hydra_model, "backbone": backbone, "heads": heads, "pass_through_head_outputs": True}
        return config, _conserving_tasks(["omol"], stress=())
    if family == "esen-plain":  # eSEN conservative (e.g. eSEN-OMat): bare EFS head, un-prefixed tasks
        backbone = _backbone(widths, moe=False, direct=False, datasets=["omat"], dataset_embedding=False)
        heads = {"efs": {"module": f"{ESCN_MD}.MLP_EFS_Head", "wrap_property": True}}
        config = {"_target_": hydra_model, "backbone": backbone, "heads": heads, "pass_through_head_outputs": True}
        return config, _conserving_tasks(["omat"], prefixed=False, stress=())
    if family == "energy-only":  # an energy head only; forces exist only as the energy's gradient
        backbone = _backbone(widths, moe=False, direct=False, datasets=["oc20"], regress_forces=False)
        # Prefixed outputs, so the forces fairchem derives for an untrained "oc20_forces" task land under that name.
        heads = {"energy": {"module": f"{ESCN_MD}.MLP_Energy_Head", "prefix": "oc20", "wrap_property": True}}
        config = {"_target_": hydra_model, "backbone": backbone, "heads": heads, "pass_through_head_outputs": True}
        return config, [_task("oc20_energy", "system", "energy", ["oc20"], _refs(0))]
    if family == "direct-dataset":  # uma_sm_direct_pretrain.yaml: dataset embedding, energy head per dataset
        backbone = _backbone(widths, moe=False, direct=True, datasets=DATASETS)
        heads = {f"{ds}_energy": {"module": f"{ESCN_MD}.MLP_Energy_Head"} for ds in DATASETS}
        heads["forces"] = {"module": f"{ESCN_MD}.Linear_Force_Head"}
        config = {"_target_": hydra_model, "backbone": backbone, "heads": heads}
        tasks = [_task(f"{ds}_energy", "system", "energy", [ds], _refs(i)) for i, ds in enumerate(DATASETS)]
        tasks.append(_task("forces", "atom", "forces", list(DATASETS)))
        return config, tasks
    raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")


def build(family: str, folder: Path, widths: dict = TINY, seed: int = 0) -> tuple[Path, str]:
    """Write the family's checkpoint into `folder`; returns (path, the task to predict with)."""
    folder = Path(folder)
    path = folder / f"{family}.pt"
    if family == "shipped":
        from finetuna_parsl.surrogate import SHIPPED

        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED, path)
        return path, TASK_OF[family]
    import copy

    import hydra

    from finetuna_parsl.surrogate.model import save_inference_checkpoint

    config, tasks = family_config(family, widths)
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(copy.deepcopy(config))
    with torch.no_grad():  # break the zero-initialised parts so every weight matters
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.05)
    save_inference_checkpoint(model, config, tasks, path)
    return path, TASK_OF[family]
