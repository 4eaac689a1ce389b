"""Open a fairchem checkpoint once and say, in one line, why it cannot serve as the prior.

`inspect_checkpoint(path, task)` reads only the checkpoint's configuration (the weights are memory-mapped,
not read), so the driver can check `surrogate.checkpoint` and `surrogate.task` before any worker starts.
What it knows about fairchem's formats comes from fairchem-core's source:
`units/mlip_unit/api/inference.py` (MLIPInferenceCheckpoint), `units/mlip_unit/mlip_unit.py`
(training checkpoints are DCP folders with `inference_ckpt.pt` beside them, and
`convert_train_checkpoint_to_inference_checkpoint`), `models/uma/compat.py` (UMA 1.0 rejection) and
`calculate/pretrained_models.json` (hub model names).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

SHIPPED = Path(__file__).parent / "data" / "finetuna-small.pt"
#: Packaged priors by name: "shipped" (EMT world, 7 metals and C/H/N/O) and "oc20-standin" (the stand-in world:
#: SevenNet-0 labels of OC20-style systems held out from oc20-ood30's adsorbates and bulks; its model card beside it).
PACKAGED = {"shipped": SHIPPED, "oc20-standin": Path(__file__).parent / "data" / "oc20-standin.pt"}


class SurrogateError(RuntimeError):
    """The surrogate cannot be loaded or used; the message is one line naming the file or element and why."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the prior needs to know about a checkpoint before building it.

    tasks: dataset/task name -> properties the checkpoint predicts for it (e.g. {"oc20": ("energy", "forces")});
    forces_by_autograd: the chosen task has no trained forces, fairchem derives them from the energy;
    mole: a UMA mixture-of-linear-experts backbone (experts merged per composition at inference).
    """

    path: Path
    task: str
    tasks: dict
    forces_by_autograd: bool
    mole: bool
    max_elements: int
    model_id: str | None


_CUDA_DRIVER_NOTICE = "Could not find or load the NVIDIA CUDA driver"


def import_fairchem_quietly() -> None:
    """Import fairchem's graph code (which starts NVIDIA Warp) with Warp's C-level notice on CPU-only machines
    ("Warp CUDA warning: Could not find or load the NVIDIA CUDA driver") removed; any other output is kept."""
    import os
    import sys
    import tempfile

    if "fairchem.core.graph.radius_graph_pbc" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import fairchem.core.graph.radius_graph_pbc  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors="replace")
    for line in text.splitlines():
        if _CUDA_DRIVER_NOTICE not in line:
            print(line, file=sys.stderr)


def _hub_names() -> dict:
    """fairchem's registered model names -> their Hugging Face file (fairchem/core/calculate/pretrained_models.json)."""
    try:
        from importlib import resources

        from fairchem.core import calculate

        with (resources.files(calculate) / "pretrained_models.json").open("rb") as f:
            return json.load(f)
    except Exception:  # noqa: BLE001 - a missing or changed file only loses the hint
        return {}


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A packaged prior's name (PACKAGED) -> its file; otherwise a local file (nothing is downloaded).
    SurrogateError if absent."""
    if str(checkpoint) in PACKAGED:
        return PACKAGED[str(checkpoint)]
    text = str(checkpoint)
    path = Path(text).expanduser()
    if path.exists():
        return path
    hub = _hub_names()
    if text in hub or (not path.suffix and "/" not in text):
        entry = hub.get(text, {})
        where = "/".join(p for p in (entry.get("subfolder"), entry.get("filename")) if p)
        how = (f"`hf download {entry.get('repo_id', 'facebook/UMA')} {where}` with your own Hugging Face access"
               if where else "fairchem's instructions for that model")
        raise SurrogateError(f"surrogate checkpoint {text!r}: model names are not downloaded at run time; download "
                             f"the checkpoint once ({how}) and give the .pt file's path as surrogate.checkpoint")
    raise SurrogateError(f"surrogate checkpoint {path}: no such file")


def _training_checkpoint(path: Path) -> SurrogateError:
    inner = path / "inference_ckpt.pt" if path.is_dir() else path.parent / "inference_ckpt.pt"
    hint = (f"use {inner}, which fairchem writes beside it" if inner.is_file() and inner != path else
            "convert it with fairchem.core.units.mlip_unit.mlip_unit.convert_train_checkpoint_to_inference_checkpoint"
            f"('{path}', 'inference_ckpt.pt') and give that file")
    return SurrogateError(f"surrogate checkpoint {path}: a fairchem training checkpoint, not an inference "
                          f"checkpoint; {hint}")


def _load(path: Path):
    if path.is_dir():
        raise _training_checkpoint(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # only zip-format files can be memory-mapped; others are read whole
                raise
            return torch.load(path, map_location="cpu", weights_only=False)


def inspect_checkpoint(checkpoint: str | Path, task: str = "oc20") -> CheckpointInfo:
    """Check that `checkpoint` is a fairchem inference checkpoint with `task`; SurrogateError (one line) if not."""
    import_fairchem_quietly()
    path = resolve_checkpoint(checkpoint)
    try:
        raw = _load(path)
    except SurrogateError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise SurrogateError(f"surrogate checkpoint {path}: not a readable torch checkpoint ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None
    if isinstance(raw, dict) and {"unit_state", "config"} <= set(raw):
        raise _training_checkpoint(path)
    if not all(hasattr(raw, key) for key in ("model_config", "model_state_dict", "ema_state_dict", "tasks_config")):
        raise SurrogateError(f"surrogate checkpoint {path}: not a fairchem inference checkpoint "
                             f"(MLIPInferenceCheckpoint); got {type(raw).__name__}")
    from fairchem.core.models.uma.compat import apply_uma_compat_fixups, get_uma_version

    config = dict(raw.model_config)
    try:
        apply_uma_compat_fixups(raw, checkpoint_location=str(path))
    except RuntimeError as exc:  # fairchem's own words, e.g. a UMA 1.0 checkpoint without model_id
        raise SurrogateError(f"surrogate checkpoint {path}: {_first_line(exc)}") from None
    tasks: dict[str, list[str]] = {}
    for entry in raw.tasks_config:
        for dataset in entry.get("datasets", []):
            tasks.setdefault(str(dataset), []).append(str(entry.get("property")))
    if task not in tasks:
        raise SurrogateError(f"surrogate.task {task!r}: checkpoint {path} has no such task "
                             f"(its tasks: {', '.join(sorted(tasks)) or 'none'})")
    backbone = config.get("backbone", {}) or {}
    direct = bool(backbone.get("direct_forces", True))
    props = tasks[task]
    if "energy" not in props:
        raise SurrogateError(f"surrogate.task {task!r}: checkpoint {path} predicts no energy for it")
    if "forces" not in props and direct:
        raise SurrogateError(f"surrogate.task {task!r}: checkpoint {path} has no forces for it and, being a "
                             "direct-force model, cannot derive them from the energy")
    return CheckpointInfo(
        path=path.resolve(), task=task, tasks={k: tuple(v) for k, v in tasks.items()},
        forces_by_autograd="forces" not in props, mole=get_uma_version(config) != "not_uma",
        max_elements=int(backbone.get("max_num_elements", 100)), model_id=raw.model_config.get("model_id"),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
