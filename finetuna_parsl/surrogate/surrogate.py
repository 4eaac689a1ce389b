"""The surrogate the learner uses: fairchem's prior, fine-tunable residual heads, an ASE calculator.

The prior's energy and forces are fairchem's own (prior.Prior: FAIRChemCalculator on an
MLIPPredictUnit); the residual heads read the node embeddings of that same forward pass.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms

from .checkpoint import SurrogateError
from .head import (Features, ElementForceResidual, HeadState, fine_tune, initial_state, member_heads, residual_forces,
                   state_from_heads)
from .model import ModelCard, read_card, unseen_elements
from .prior import GLOBAL_GENERATOR, Prior, torch_threads
from .settings import SurrogateSettings


def _nbytes(feats: Features) -> int:
    """Memory a cached forward pass holds (its tensors), bytes."""
    return sum(t.numel() * t.element_size() for t in (feats.embedding, feats.forces, feats.numbers))


def free_mask(atoms: Atoms) -> np.ndarray:
    """True for atoms not held by a FixAtoms constraint."""
    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.get_indices()] = False
    return free


class Surrogate:
    """Implements the learner's SurrogateModel protocol on a fairchem checkpoint (the prior loaded once).

    settings: the whole SurrogateSettings (its device already resolved: the prior's). Energies in eV, forces
    and uncertainty in eV/A.
    """

    def __init__(self, prior: Prior, card: ModelCard | None = None, settings: SurrogateSettings | None = None,
                 ensemble_spread: float = 0.05, feature_cache: int = 64, training_cache_mb: float = 512.0) -> None:
        self.settings = settings or SurrogateSettings(device=prior.device)
        self.prior, self.card, self.device = prior, card or ModelCard(), prior.device
        self.checkpoint = str(prior.info.path)
        self.ensemble_spread = ensemble_spread
        self._template = self._residual_template()
        # Two caches of the prior's forward passes (the backbone is frozen, so a structure's features never change):
        # the surrogate steps' (feature_cache entries, least recently used out), and the parent points the heads
        # are fine-tuned on (training_cache_mb in all). With train_on=all every learn step fine-tunes on every
        # parent point so far; in one cache, a segment's steps pushed them out and each learn step re-ran the
        # prior on all of them (tests/test_surrogate.py).
        self._cache: OrderedDict[bytes, Features] = OrderedDict()
        self._cache_size = feature_cache
        self._training: OrderedDict[bytes, Features] = OrderedDict()
        self._training_bytes = 0
        self._training_budget = int(training_cache_mb * 1e6)
        # One prediction at a time: the prior's forward hook and fairchem's calculator hold per-call state, and a
        # learn executor made of threads (tests/threads_site.py) shares this object between tasks.
        self._lock = threading.RLock()
        self._warned: set[str] = set()

    def _residual_template(self) -> torch.nn.Module:
        """The residual head over the prior's node embeddings, its correction zero (head.ElementForceResidual)."""
        return ElementForceResidual(self.prior.sphere_channels, self.prior.info.max_elements + 1).to(self.device)

    # ------------------------------------------------------------------ the prior
    def check_elements(self, numbers: np.ndarray) -> None:
        """Clear error for elements the network cannot embed; a one-time warning for ones pretraining never saw."""
        self.prior.check_elements(numbers)
        unseen = [e for e in unseen_elements(numbers, self.card) if e not in self._warned]
        if unseen:
            self._warned.update(unseen)
            warnings.warn(f"surrogate {self.checkpoint}: pretraining never saw {', '.join(unseen)}; its prior "
                          "there is uninformed and the online learner leans on parent calls", stacklevel=3)

    def features(self, atoms: Atoms, training: bool = False) -> Features:
        """The prior's energy/forces and node embeddings for `atoms`: one fairchem forward pass, cached per structure
        (training=True: in the cache of fine-tuning points, kept while the training cache's budget allows)."""
        key = (atoms.numbers.tobytes() + np.ascontiguousarray(atoms.positions).tobytes() + atoms.cell.array.tobytes()
               + repr((atoms.info.get("charge"), atoms.info.get("spin"))).encode())
        with self._lock:
            for cache in (self._training, self._cache):
                if key in cache:
                    cache.move_to_end(key)
                    feats = cache[key]
                    break
            else:
                self.check_elements(atoms.numbers)
                pred = self.prior.predict(atoms)
                feats = Features(pred.embedding.to(self.device, torch.float32), pred.energy,
                                 torch.as_tensor(pred.forces, dtype=torch.float32, device=self.device),
                                 torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device))
            if training and key not in self._training:
                self._cache.pop(key, None)
                self._training[key] = feats
                self._training_bytes += _nbytes(feats)
                while self._training_bytes > self._training_budget and len(self._training) > 1:
                    self._training_bytes -= _nbytes(self._training.popitem(last=False)[1])
            elif key not in self._training and key not in self._cache:
                self._cache[key] = feats
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
            return feats

    def clear_caches(self) -> None:
        """Forget every cached forward pass (what a fresh worker starts with)."""
        with self._lock:
            self._cache.clear()
            self._training.clear()
            self._training_bytes = 0

    # ------------------------------------------------------------------ the learner's protocol
    def initial_head(self) -> bytes:
        s = self.settings
        return initial_state(self._template, s.ensemble_size, s.seed, self.ensemble_spread).to_bytes()

    def fine_tune(self, head: bytes, points: list[Atoms]) -> tuple[bytes, dict]:
        """Train the residual heads on `points` (parent-labelled Atoms; the learner passes the newest one)."""
        t0 = time.perf_counter()
        state = HeadState.from_bytes(head)
        heads = member_heads(self._template, state, self.device)
        data = []
        for atoms in points:
            feats = self.features(atoms, training=True)
            target = torch.as_tensor(atoms.get_forces(apply_constraint=False), dtype=feats.forces.dtype,
                                     device=self.device)
            data.append((feats, target, torch.as_tensor(free_mask(atoms), device=self.device)))
        s = self.settings
        with torch_threads(s.threads):
            info = fine_tune(heads, data, s.epochs, s.lr, s.scheduler_factor, s.scheduler_patience)
        newest = points[-1]
        offset = float(newest.get_potential_energy()) - self.features(newest).energy
        info["seconds"] = time.perf_counter() - t0
        return state_from_heads(heads, offset, state.trained_points + len(points)).to_bytes(), info

    def predict(self, atoms: Atoms, head: bytes | HeadState) -> tuple[float, np.ndarray, float]:
        """Energy, ensemble-mean forces and uncertainty (max over free atoms of the force std's norm, eV/A)."""
        state = HeadState.from_bytes(head) if isinstance(head, bytes) else head
        return self._predict(atoms, state, member_heads(self._template, state, self.device))

    def _predict(self, atoms: Atoms, state: HeadState, heads: list[torch.nn.Module]) -> tuple[float, np.ndarray, float]:
        feats = self.features(atoms)
        with torch.no_grad(), torch_threads(self.settings.threads):
            members = feats.forces.unsqueeze(0) + residual_forces(heads, feats)
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


def load_surrogate(settings: SurrogateSettings | str = "shipped", **changes) -> Surrogate:
    """The surrogate on a fairchem inference checkpoint ('shipped' = the package's model).

    settings: the whole SurrogateSettings (what a campaign passes), or a checkpoint, with any other setting
    given by keyword (load_surrogate("shipped", device="cpu", epochs=100)). Nothing is downloaded. Raises
    SurrogateError (one line) when the file or task cannot serve, its model card is not a JSON object, or cuda
    is asked for without a GPU.
    """
    if not isinstance(settings, SurrogateSettings):
        settings = SurrogateSettings(checkpoint=str(settings))
    settings = replace(settings, **changes)
    device = resolve_device(settings.device)
    with GLOBAL_GENERATOR:  # the seed and the build's draws, with no prediction in another thread between them
        torch.manual_seed(settings.seed)
        prior = Prior(settings.checkpoint, settings.task, device, seed=settings.seed, threads=settings.threads)
    return Surrogate(prior, read_card(prior.info.path), replace(settings, device=device))
