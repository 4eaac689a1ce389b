"""The prior: a fairchem checkpoint predicted by fairchem's own inference path, plus its node embeddings.

Energy and forces come from `fairchem.core.calculate.ase_calculator.FAIRChemCalculator` on an
`MLIPPredictUnit` (`fairchem.core.units.mlip_unit.load_predict_unit`), so normaliser rmsd, element
references, task/dataset selection, MoLE expert merging and fairchem's inference overrides (otf_graph,
pbc handling) are fairchem's, not ours. The node embeddings the residual heads train on are taken from
that same forward pass by a forward hook on the backbone: there is no second, hand-built pass.

UMA (MoLE) checkpoints: fairchem merges the experts for one composition, task, charge and spin
(`InferenceSettings.merge_mole`) and falls back to the slow unmerged model for good when the input
changes. A learn worker relaxes many systems, so the prior keeps one merged predict unit per
composition (copied from one loaded, unmerged unit; least recently used dropped), as fairchem does for
a fixed-composition run, and never hits the fallback.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import threading
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import all_changes

from .checkpoint import CheckpointInfo, SurrogateError, inspect_checkpoint
from .settings import SurrogateSettings

#: Held by whatever draws from torch's global generator in this process: each prior prediction (seeded or not)
#: and each model build. A draw in another thread between a prediction's seeding and its own draws would change
#: that prediction (tests/test_reproducible.py: 5 of 20 predictions made during builds differed, by 2e-7 eV).
GLOBAL_GENERATOR = threading.RLock()


@contextmanager
def torch_threads(count: int):
    """torch's intra-op CPU threads at `count` on this OS thread for the block, restored after (the count is per
    thread: OpenMP's, so other threads are untouched). Float sums depend on it (tests/test_reproducible.py)."""
    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


@dataclass(frozen=True)
class PriorPrediction:
    """fairchem's prediction for one structure and the backbone's node embeddings from the same pass.

    energy: eV (element references added back, as FAIRChemCalculator reports it); forces: (N, 3) eV/A;
    embedding: (N, (lmax+1)^2, sphere_channels) float tensor, detached.
    """

    energy: float
    forces: np.ndarray
    embedding: torch.Tensor


def inference_settings(info: CheckpointInfo, merge_mole: bool, dtype: torch.dtype = torch.float32):
    """fairchem InferenceSettings for the prior: full FP32, no compile, forces by autograd where untrained.

    The same as fairchem's "high-precision" preset but uncompiled (torch.compile costs minutes per
    composition and a C++ toolchain on the worker) and without the default untrained stress tasks
    (the learner never reads stress; computing it costs a cell gradient per step).
    """
    from fairchem.core.units.mlip_unit.api.inference import InferenceSettings

    return InferenceSettings(
        tf32=False, activation_checkpointing=False, merge_mole=merge_mole, compile=False, external_graph_gen=False,
        internal_graph_gen_version=2, auto_add_default_untrained_tasks=False, base_precision_dtype=dtype,
        predict_untrained_forces={info.task} if info.forces_by_autograd else set(),
    )


class Prior:
    """One checkpoint and one task through fairchem's predict unit; `predict(atoms)` -> PriorPrediction.

    Raises SurrogateError (one line) for a checkpoint or task fairchem cannot serve, and for elements
    beyond the model's embedding table.
    """

    def __init__(self, checkpoint: str | Path, task: str = "oc20", device: str = "cpu", units_kept: int = 8,
                 dtype: torch.dtype = torch.float32, merge_mole: bool | None = None, seed: int | None = 0,
                 threads: int = SurrogateSettings.threads) -> None:
        """merge_mole: None = merge for MoLE (UMA) checkpoints; False = fairchem's unmerged general path.

        seed: each prediction draws its random numbers (fairchem's random edge rotations in eSCN/UMA,
        `torch.rand_like` in fairchem.core.models.uma.common.rotation) from a generator seeded by
        structure_seed(atoms, seed), so a structure always gets the same prediction whatever was predicted
        before it in this process; torch's global generator is left as it was. None: torch's global generator.
        Predictions take a process-wide lock (the generator is process-wide), so priors in several threads wait
        for each other.
        threads: torch CPU threads for each prediction (torch_threads; SurrogateSettings.threads).
        """
        self.info = inspect_checkpoint(checkpoint, task)
        self.device, self.dtype, self.seed, self.threads = device, dtype, seed, threads
        self.merge_mole = self.info.mole if merge_mole is None else bool(merge_mole and self.info.mole)
        self._units_kept = units_kept
        self._base = self._load_unit()
        self._units: OrderedDict[tuple, object] = OrderedDict()

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def model(self) -> torch.nn.Module:
        """The loaded (unmerged) fairchem HydraModel; frozen: fine-tuning never touches it."""
        return self._base.model.module

    def models_in_use(self) -> list[torch.nn.Module]:
        """Every fairchem HydraModel the prior predicts with now (the loaded one, and merged copies for MoLE)."""
        return [self.model] + [calc.predictor.model.module for calc in self._units.values()
                               if calc.predictor is not self._base]

    @property
    def sphere_channels(self) -> int:
        return int(self._base.model.module.backbone.sphere_channels)

    def _load_unit(self):
        from fairchem.core.units.mlip_unit import load_predict_unit

        settings = inference_settings(self.info, self.merge_mole, self.dtype)
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # fairchem logs its settings and the direct-force caveat at every load
        try:
            with GLOBAL_GENERATOR:  # building the model draws its initial weights from the same generator
                return load_predict_unit(str(self.info.path), inference_settings=settings, device=self.device)
        except Exception as exc:  # noqa: BLE001 - fairchem raises many types for a checkpoint it cannot build
            raise SurrogateError(f"surrogate checkpoint {self.info.path}: fairchem cannot build it "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from exc
        finally:
            logging.disable(previous)

    def _calculator(self, atoms: Atoms):
        """The FAIRChemCalculator for this structure's composition (a merged unit per composition for MoLE)."""
        from fairchem.core.calculate.ase_calculator import FAIRChemCalculator

        key = ()
        if self.merge_mole:
            key = (tuple(sorted(Counter(atoms.numbers.tolist()).items())), atoms.info.get("charge"),
                   atoms.info.get("spin"))
        if key not in self._units:
            unit = copy.deepcopy(self._base) if self.merge_mole else self._base
            self._units[key] = FAIRChemCalculator(unit, task_name=self.task)
            if len(self._units) > self._units_kept:
                self._units.popitem(last=False)
        self._units.move_to_end(key)
        return self._units[key]

    def check_elements(self, numbers: np.ndarray) -> None:
        """SurrogateError naming elements beyond the model's embedding table."""
        from ase.data import chemical_symbols

        beyond = sorted({chemical_symbols[z] for z in np.unique(numbers) if z >= self.info.max_elements})
        if beyond:
            raise SurrogateError(f"surrogate checkpoint {self.info.path}: element(s) {', '.join(beyond)} beyond the "
                                 f"model's {self.info.max_elements} embedded elements")

    def predict(self, atoms: Atoms) -> PriorPrediction:
        """fairchem's energy (eV), forces ((n, 3) eV/A) and node embeddings for `atoms` (charge/spin read from
        atoms.info), seeded from the structure (see __init__). SurrogateError when fairchem cannot predict."""
        # One prediction at a time in this process: fairchem draws its random edge rotations from torch's global
        # generator, which all threads share (GLOBAL_GENERATOR). An unseeded prediction draws too.
        with GLOBAL_GENERATOR, torch_threads(self.threads):
            if self.seed is None:
                return self._predict(atoms)
            cuda = str(self.device).startswith("cuda") and torch.cuda.is_available()
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [], device_type="cuda"):
                torch.manual_seed(structure_seed(atoms, self.seed))
                return self._predict(atoms)

    def _predict(self, atoms: Atoms) -> PriorPrediction:
        self.check_elements(atoms.numbers)
        atoms = atoms.copy()
        atoms.set_constraint()  # forces on every atom, as the parent reports them
        calc = self._calculator(atoms)
        for _attempt in range(2):  # a fairchem fallback reloads the model mid-call: hook the new one and redo
            captured: dict[str, torch.Tensor] = {}
            handles = []

            def attach(model, _args):
                def keep(_backbone, _inputs, output):
                    captured["embedding"] = output["node_embedding"].detach()

                handles.append(model.backbone.register_forward_hook(keep))

            handles.append(calc.predictor.model.module.register_forward_pre_hook(attach))
            try:
                calc.calculate(atoms, ["energy", "forces"], all_changes)
            except SurrogateError:
                raise
            except Exception as exc:  # noqa: BLE001 - fairchem's failure, told in one line with the checkpoint
                raise SurrogateError(f"surrogate checkpoint {self.info.path}: fairchem's prediction for task "
                                     f"{self.task!r} failed ({type(exc).__name__}: {_first_line(exc)})") from exc
            finally:
                for handle in handles:
                    handle.remove()
            if "embedding" in captured:
                break
        else:
            raise SurrogateError(f"surrogate checkpoint {self.info.path}: no node embedding seen in the forward pass")
        results = calc.results
        if "forces" not in results:
            raise SurrogateError(f"surrogate checkpoint {self.info.path}: task {self.task!r} gives no forces")
        return PriorPrediction(float(results["energy"]), np.asarray(results["forces"], dtype=float).reshape(-1, 3),
                               captured["embedding"])


def structure_seed(atoms: Atoms, base: int = 0) -> int:
    """A 63-bit seed from the structure (atomic numbers, positions in A, cell, pbc, charge, spin) and `base`."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    digest.update(np.asarray(atoms.cell.array, dtype=np.float64).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    digest.update(repr((atoms.info.get("charge"), atoms.info.get("spin"), int(base))).encode())
    return int.from_bytes(digest.digest(), "little") >> 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
