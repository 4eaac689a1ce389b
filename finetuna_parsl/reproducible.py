"""Repeatable runs: the same config and seed on the same machine give the same parent calls.

Where run-to-run differences came from, and what this module does about each:

- fairchem's eSCN/UMA backbones rotate each edge by a random angle about its axis (`torch.rand_like` in
  `fairchem.core.models.uma.common.rotation`), drawn from torch's global generator. The prediction for one
  structure then depended on every prediction the worker made before it (which systems it happened to get,
  whether a feature was cached), about 1e-7 eV apart; the online learner amplifies that into different
  paths and parent-call counts. `seed_each_prediction` gives each prediction its own generator state,
  seeded from the structure itself (and the config's seed), so a structure always gets the same rotations.
- Nondeterministic torch kernels (scatter/index-add on GPU): `deterministic_torch` asks for deterministic
  algorithms (warning, not failing, where torch has none: there, bench --repeats reports the spread).
- Thread count changes float reductions: each learn worker runs with the site's OMP_NUM_THREADS (1 on the
  shipped sites), the same in every run.

The campaign driver handles finished relaxations in the systems' order, not in completion order, so the
store is written in the same order too.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

import numpy as np

#: How bench and the README say a run was made repeatable (one line).
HOW = ("repeatable on CPU: each surrogate prediction seeded from its structure and surrogate.seed (fairchem's "
       "random edge rotations), torch deterministic algorithms, a fixed thread count per learn worker "
       "(OMP_NUM_THREADS), finished relaxations handled in system order")


def structure_seed(atoms: Any, base: int = 0) -> int:
    """A 63-bit seed from the structure (atomic numbers, positions in A, cell, pbc, charge, spin) and `base`."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(atoms.positions, dtype=np.float64).tobytes())
    digest.update(np.asarray(atoms.cell.array, dtype=np.float64).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    digest.update(repr((atoms.info.get("charge"), atoms.info.get("spin"), int(base))).encode())
    return int.from_bytes(digest.digest(), "little") >> 1


def deterministic_torch() -> None:
    """torch's deterministic algorithms (warn-only where none exists); cuBLAS's deterministic workspace."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when CUDA starts; harmless on CPU
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_each_prediction(prior: Any, base_seed: int = 0) -> None:
    """Wrap `prior.predict(atoms)` so each call draws from a generator seeded by structure_seed(atoms, base_seed).

    The global torch generator is restored after each call (torch.random.fork_rng). Idempotent; a prior
    without `predict` (a test surrogate) is left alone.
    """
    predict = getattr(prior, "predict", None)
    if predict is None or getattr(predict, "_seeded", False):
        return
    import torch
    device = str(getattr(prior, "device", "cpu"))

    @functools.wraps(predict)
    def seeded(atoms, *args, **kwargs):
        cuda = device.startswith("cuda") and torch.cuda.is_available()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [], device_type="cuda"):
            torch.manual_seed(structure_seed(atoms, base_seed))
            return predict(atoms, *args, **kwargs)

    seeded._seeded = True
    prior.predict = seeded
