"""Repeatable runs: the same config and seed on the same machine give the same parent calls.

Where run-to-run differences came from, and what this module does about each:

- fairchem's eSCN/UMA backbones rotate each edge by a random angle about its axis (`torch.rand_like` in
  `fairchem.core.models.uma.common.rotation`), drawn from torch's global generator. The prediction for one
  structure then depended on every prediction the worker made before it (which systems it happened to get,
  whether a feature was cached), about 1e-7 eV apart; the online learner amplifies that into different
  paths and parent-call counts. The prior (surrogate.prior.Prior) gives each prediction its own generator
  state, seeded from the structure itself (and surrogate.seed), so a structure always gets the same rotations,
  in a campaign's workers and in a script that calls load_surrogate alike. The generator is one per process,
  so predictions take a process-wide lock (surrogate.prior.GLOBAL_GENERATOR): otherwise a prediction in another
  thread (a second surrogate, or a learn task left over from an earlier campaign in the same process) draws
  from this one's seed. Building a model draws its initial weights from the same generator, so builds take
  the lock too; and a worker builds its surrogate once (apps.surrogate_for), however many learn tasks start
  at once.
- Nondeterministic torch kernels (scatter/index-add on GPU): `deterministic_torch` asks for deterministic
  algorithms (warning, not failing, where torch has none: there, bench --repeats reports the spread).
- Thread count changes float reductions: each learn worker runs with the site's OMP_NUM_THREADS (1 on the
  shipped sites), the same in every run.
- What this cannot fix: another CPU (torch and OpenBLAS pick their vector kernels by the CPU's instruction set)
  or other library versions round differently, and the learner amplifies that too. Measured on the paper's 30
  systems at one commit on three installs (benchmarks/oc20-paper/README.md): BFGS 2,693, 2,688 and 2,680 parent
  calls (5 and 7 of 30 systems apart; the last two with the same library versions on hosts both named 'AMD EPYC'),
  k-steps 1,146 then 1,233 (21 of 30 apart). So every bench table names the
  machine and versions it ran on (`environment`), and figures are compared within one table, not across installs.

The campaign driver handles finished relaxations in the systems' order, not in completion order, so the
store is written in the same order too.
"""

from __future__ import annotations

import os

#: How bench and the README say a run was made repeatable (one line).
HOW = ("repeatable on CPU on the same machine and library versions: each surrogate prediction seeded from its structure and surrogate.seed (fairchem's "
       "random edge rotations), torch deterministic algorithms, every prediction and fine-tuning on "
       "surrogate.threads torch threads, finished relaxations handled in system order")


#: Distributions whose versions change a run's floating point, named in every bench table.
VERSIONED = ("torch", "numpy", "scipy", "ase", "fairchem-core", "e3nn", "parsl")


def environment(calculator: str | None = None) -> str:
    """The machine and library versions a run was made with, in one line.

    calculator: an `ase` parent's 'module:Name'; the distribution providing its top-level module is named too
    (for example sevenn). CPU: the model name, family, model number and stepping from /proc/cpuinfo (where
    readable; a VM may name only 'AMD EPYC', and two hosts so named gave BFGS 2,688 and 2,680 parent calls on the
    paper's 30 systems with the same versions) and the vector instruction set torch's CPU kernels use
    (`torch.backends.cpu.get_cpu_capability()`).
    """
    import platform
    from importlib import metadata

    import torch

    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name", "")
    # A VM may show only 'AMD EPYC': family/model/stepping tell its generations apart (25/17/1 is Zen 4)
    ids = [f"{label} {info[key]}" for key, label in (("cpu family", "family"), ("model", "model"),
                                                      ("stepping", "stepping")) if key in info]
    if model and ids:
        model = f"{model} [{', '.join(ids)}]"
    names = list(VERSIONED)
    if calculator:
        top = calculator.split(":", 1)[0].split(".", 1)[0]
        names += [d for d in metadata.packages_distributions().get(top, []) if d not in names]
    versions = []
    for name in names:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    cpu = f"{model or platform.machine()} ({torch.backends.cpu.get_cpu_capability()} kernels)"
    return f"CPU {cpu}, Python {platform.python_version()}, " + ", ".join(versions)


def deterministic_torch() -> None:
    """torch's deterministic algorithms (warn-only where none exists); cuBLAS's deterministic workspace."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when CUDA starts; harmless on CPU
    torch.use_deterministic_algorithms(True, warn_only=True)
