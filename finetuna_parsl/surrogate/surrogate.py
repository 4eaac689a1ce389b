"""The surrogate the learner uses: a frozen fairchem model, fine-tunable residual heads, an ASE calculator."""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms
from ase.data import chemical_symbols

from .head import (Features, HeadState, fine_tune, initial_state, member_heads, residual_forces,
                   state_from_heads)
from .model import FORCE_HEAD, ModelCard, SurrogateError, load_model, to_batch, unseen_elements


def _pick(outputs: dict, name: str) -> torch.Tensor:
    """The `name` ('energy' or 'forces') tensor among a HydraModel's head outputs (plain or task-prefixed)."""
    found = []
    for head_name, value in outputs.items():
        items = value.items() if isinstance(value, dict) else [(head_name, value)]
        for key, tensor in items:
            if key == name or key.endswith(f"_{name}"):
                found.append((key != name, tensor))
    if not found:
        raise SurrogateError(f"the surrogate model has no {name!r} output (heads: {', '.join(outputs)})")
    return sorted(found, key=lambda item: item[0])[0][1]


def free_mask(atoms: Atoms) -> np.ndarray:
    """True for atoms not held by a FixAtoms constraint."""
    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.get_indices()] = False
    return free


class Surrogate:
    """Implements the learner's SurrogateModel protocol on a fairchem checkpoint (backbone loaded once)."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, checkpoint: str, device: str = "cpu",
                 ensemble_size: int = 1, epochs: int = 400, lr: float = 3e-4, scheduler_factor: float = 0.9,
                 scheduler_patience: int = 3, seed: int = 0, ensemble_spread: float = 0.05,
                 feature_cache: int = 64) -> None:
        self.model, self.card, self.checkpoint, self.device = model, card, checkpoint, device
        self.ensemble_size, self.epochs, self.lr = ensemble_size, epochs, lr
        self.scheduler_factor, self.scheduler_patience, self.seed = scheduler_factor, scheduler_patience, seed
        self.ensemble_spread = ensemble_spread
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.direct = bool(getattr(model.backbone, "regress_config", None) is None
                           or model.backbone.regress_config.direct_forces)
        self.cutoff = float(getattr(model.backbone, "cutoff", 6.0))
        self.max_z = int(getattr(model.backbone, "max_num_elements", 100)) - 1
        self._template = self._residual_template()
        self._cache: OrderedDict[bytes, Features] = OrderedDict()
        self._cache_size = feature_cache
        self._warned: set[str] = set()

    def _residual_template(self) -> torch.nn.Module:
        import hydra

        head = hydra.utils.get_class(FORCE_HEAD)(self.model.backbone)
        for p in head.parameters():
            torch.nn.init.zeros_(p)
        return head.to(self.device)

    # ------------------------------------------------------------------ the frozen model
    def check_elements(self, numbers: np.ndarray) -> None:
        """Clear error for elements the network cannot embed; a one-time warning for ones pretraining never saw."""
        too_heavy = sorted({chemical_symbols[z] for z in np.unique(numbers) if z > self.max_z})
        if too_heavy:
            raise SurrogateError(f"surrogate {self.checkpoint}: element(s) {', '.join(too_heavy)} beyond the "
                                 f"model's {self.max_z} embedded elements")
        unseen = [e for e in unseen_elements(numbers, self.card) if e not in self._warned]
        if unseen:
            self._warned.update(unseen)
            warnings.warn(f"surrogate {self.checkpoint}: pretraining never saw {', '.join(unseen)}; its prior "
                          "there is uninformed and the online learner leans on parent calls", stacklevel=3)

    def features(self, atoms: Atoms) -> Features:
        """Node embeddings and the pretrained energy/forces: one backbone pass, cached per structure."""
        key = atoms.numbers.tobytes() + np.ascontiguousarray(atoms.positions).tobytes() + atoms.cell.array.tobytes()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self.check_elements(atoms.numbers)
        batch = to_batch([atoms], self.device, self.cutoff)
        with torch.set_grad_enabled(not self.direct):
            emb = self.model.backbone(batch)
            outputs = {name: head(batch, emb) for name, head in self.model.output_heads.items()}
        feats = Features(emb["node_embedding"].detach(), float(_pick(outputs, "energy").detach().reshape(-1)[0]),
                         _pick(outputs, "forces").detach().reshape(-1, 3))
        self._cache[key] = feats
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return feats

    # ------------------------------------------------------------------ the learner's protocol
    def initial_head(self) -> bytes:
        return initial_state(self._template, self.ensemble_size, self.seed, self.ensemble_spread).to_bytes()

    def fine_tune(self, head: bytes, points: list[Atoms]) -> tuple[bytes, dict]:
        """Train the residual heads on `points` (parent-labelled Atoms; the learner passes the newest one)."""
        t0 = time.perf_counter()
        state = HeadState.from_bytes(head)
        heads = member_heads(self._template, state, self.device)
        data = []
        for atoms in points:
            feats = self.features(atoms)
            target = torch.as_tensor(atoms.get_forces(apply_constraint=False), dtype=feats.forces.dtype,
                                     device=self.device)
            data.append((feats, target, torch.as_tensor(free_mask(atoms), device=self.device)))
        bootstrap = None if self.ensemble_size == 1 else self.seed * 100003 + state.trained_points
        info = fine_tune(heads, data, self.epochs, self.lr, self.scheduler_factor, self.scheduler_patience, bootstrap)
        newest = points[-1]
        offset = float(newest.get_potential_energy()) - self.features(newest).energy
        info["seconds"] = time.perf_counter() - t0
        return state_from_heads(heads, state, offset, state.trained_points + len(points), info).to_bytes(), info

    def predict(self, atoms: Atoms, head: bytes | HeadState) -> tuple[float, np.ndarray, float]:
        """Energy, ensemble-mean forces and uncertainty (max over free atoms of the force std's norm, eV/A)."""
        state = HeadState.from_bytes(head) if isinstance(head, bytes) else head
        return self._predict(atoms, state, member_heads(self._template, state, self.device))

    def _predict(self, atoms: Atoms, state: HeadState, heads: list[torch.nn.Module]) -> tuple[float, np.ndarray, float]:
        feats = self.features(atoms)
        with torch.no_grad():
            members = feats.forces.unsqueeze(0) + residual_forces(heads, feats.embedding)
        forces = members.mean(0).double().cpu().numpy()
        uncertainty = 0.0
        if len(heads) > 1:
            spread = members.std(0, unbiased=False).norm(dim=-1).double().cpu().numpy()
            free = free_mask(atoms)
            uncertainty = float(spread[free].max()) if free.any() else float(spread.max())
        return feats.energy + state.energy_offset, forces, uncertainty

    def calculator(self, head: bytes) -> "SurrogateCalculator":
        return SurrogateCalculator(self, head)


class SurrogateCalculator(Calculator):
    """ASE calculator: the surrogate with one head state; results include 'uncertainty' (eV/A)."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, surrogate: Surrogate, head: bytes) -> None:
        super().__init__()
        self.surrogate = surrogate
        self.state = HeadState.from_bytes(head)
        self.heads = member_heads(surrogate._template, self.state, surrogate.device)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces, uncertainty = self.surrogate._predict(self.atoms, self.state, self.heads)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "uncertainty": uncertainty}


def resolve_device(device: str) -> str:
    """'auto' -> cuda when available, else cpu; an explicit 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SurrogateError(f"surrogate.device {device!r}: no CUDA device visible here (use 'auto' or 'cpu')")
    return device


def load_surrogate(checkpoint: str = "shipped", device: str = "auto", ensemble_size: int = 1, epochs: int = 400,
                   lr: float = 3e-4, scheduler_factor: float = 0.9, scheduler_patience: int = 3,
                   seed: int = 0) -> Surrogate:
    """The surrogate from a fairchem checkpoint ('shipped' = the package's pretrained model); nothing downloaded."""
    device = resolve_device(device)
    torch.manual_seed(seed)
    model, card, path = load_model(checkpoint, device)
    return Surrogate(model, card, str(path), device, ensemble_size, epochs, lr, scheduler_factor, scheduler_patience,
                     seed)
