#!/usr/bin/env python
"""Label the stand-in world's structures with the stand-in (SevenNet-0) for pretraining (issue 25, item 1).

Usage: python scripts/standin_label.py [--structures benchmarks/prior-standin/structures.db]
           [--workdir runs/standin] [--workers 12] [--device cuda] [--minutes 4] [--steps 60]
           [--ood-steps 100] [--fmax 0.05] [--rattles 4] [--chunk 2] [--limit N] [--seed 0]

Per system of the structures file (made by scripts/standin_structures.py): the frames of an ASE BFGS
relaxation on the stand-in (every step, fmax `--fmax` eV/A, at most `--steps` steps; `--ood-steps` for the
30 test systems), and, for pretraining systems, `--rattles` rattled copies (Gaussian, sigma 0.03-0.15 A on
free atoms; half of the start, half of the last BFGS frame). Frames whose largest force exceeds 8 eV/A are
dropped, as finetuna_parsl.surrogate.pretrain drops them.

Output is the format finetuna_parsl/surrogate/pretrain.py reads (`read_split_frames`): extxyz chunks
WORKDIR/frames/<split>-<NNNN>.extxyz, split train, valid_in (held-out in-domain systems) or valid_out (the
30 test systems' BFGS paths, out of domain), each frame with energy (eV), forces (eV/A), info["system"] and
arrays["free"]. Chunks are written whole (tmp + rename), so a rerun resumes with the chunks not yet there.
WORKDIR/recipe.json holds the labelling recipe, WORKDIR/label.log the progress and the labelling time.

Work is spread over `--workers` spawned processes, each with its own stand-in on `--device` (they share one
GPU). With `--minutes`, no chunk starts after that wall-clock budget; chunks run test systems first, then
held-out in-domain and training systems mixed in a seeded random order, so a cut leaves a random subset of
both in proportion. Needs torch, numpy, e3nn, ase and sevenn with its imports torch_geometric, braceexpand and
tqdm; sevenn's module-level imports of requests, pandas, scikit-learn and xxhash serve downloads, tables and
training that labelling never uses, so each is replaced by an empty module where it is not installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.machinery
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np

#: Frames whose largest force exceeds this (eV/A) are dropped (finetuna_parsl.surrogate.pretrain.MAX_FORCE).
MAX_FORCE = 8.0
SPLITS = ("valid_out", "valid_in", "train")

_CALC = None
_INIT_ERROR: str | None = None


def _stub_unused_imports() -> None:
    """Empty modules for sevenn's import-time dependencies that labelling never calls (see module docstring);
    matscipy (sevenn's optional fast neighbour list) is hidden when its build does not load here."""
    for name, attrs in (("requests", {}), ("pandas", {}), ("xxhash", {}),
                        ("sklearn", {}), ("sklearn.linear_model", {"Ridge": None, "LinearRegression": None})):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name, "Import stub: scripts/standin_label.py labels without it")
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo's find_spec reads it
            module.__dict__.update(attrs)
            sys.modules[name] = module
            if "." in name:
                setattr(sys.modules[name.rsplit(".", 1)[0]], name.rsplit(".", 1)[1], module)
    try:
        import matscipy.neighbours  # noqa: F401
    except Exception:  # a compiled wheel that does not load: sevenn falls back to ASE's neighbour list
        sys.modules["matscipy"] = None


def _load(device: str):
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    _stub_unused_imports()
    from sevenn.calculator import SevenNetCalculator

    return SevenNetCalculator(model="7net-0", device=device)


def _init(device: str) -> None:
    """Pool initializer: the worker's stand-in. A failure is kept for the first chunk to raise (an initializer
    that raises makes multiprocessing respawn workers for ever)."""
    global _CALC, _INIT_ERROR
    try:
        _CALC = _load(device)
    except Exception as exc:  # any failure to import or load sevenn; reported by _run_chunk
        _INIT_ERROR = f"{type(exc).__name__}: {exc}"


def _free(atoms) -> np.ndarray:
    from ase.constraints import FixAtoms

    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return ~fixed


def _frame(atoms, energy: float, forces: np.ndarray, name: str):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc, tags=atoms.get_tags())
    frame.set_constraint(atoms.constraints)
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.asarray(forces, dtype=float))
    frame.info["system"] = name
    frame.arrays["free"] = _free(atoms).astype(np.int8)
    return frame


def _label(atoms, name: str):
    work = atoms.copy()
    work.calc = _CALC
    energy, forces = work.get_potential_energy(), work.get_forces(apply_constraint=False)
    return _frame(atoms, energy, forces, name)


def system_frames(atoms, name: str, split: str, steps: int, fmax: float, rattles: int, rng) -> tuple[list, int]:
    """Stand-in frames of one system: its BFGS path, then `rattles` rattled copies; (frames, calls)."""
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = _CALC
    frames = []
    for _ in BFGS(work, logfile=None).irun(fmax=fmax, steps=steps):
        frames.append(_frame(work, work.get_potential_energy(), work.get_forces(apply_constraint=False), name))
    calls = len(frames)
    free = _free(atoms)
    for k in range(rattles):
        base = atoms if k % 2 == 0 else frames[-1]
        shaken = atoms.copy()
        shaken.positions = base.positions.copy()
        shaken.positions[free] += rng.normal(0.0, rng.uniform(0.03, 0.15), (int(free.sum()), 3))
        frames.append(_label(shaken, name))
        calls += 1
    kept = [f for f in frames if float((f.get_forces(apply_constraint=False) ** 2).sum(axis=1).max()) <= MAX_FORCE ** 2]
    for f in kept:
        f.info["split"] = split
    return kept, calls


def _run_chunk(job: dict) -> dict:
    from ase.io import write

    if _INIT_ERROR is not None:
        raise RuntimeError(f"the stand-in did not load in a worker: {_INIT_ERROR}")
    if job["deadline"] is not None and time.time() > job["deadline"]:
        return {"path": job["path"], "skipped": True}
    t0 = time.perf_counter()
    frames, calls = [], 0
    for name, atoms, seed in job["systems"]:
        rng = np.random.default_rng(seed)
        steps = job["ood_steps"] if job["split"] == "valid_out" else job["steps"]
        rattles = 0 if job["split"] == "valid_out" else job["rattles"]
        got, n = system_frames(atoms, name, job["split"], steps, job["fmax"], rattles, rng)
        frames += got
        calls += n
    tmp = job["path"] + ".tmp.extxyz"
    write(tmp, frames, format="extxyz")
    os.replace(tmp, job["path"])
    return {"path": job["path"], "skipped": False, "frames": len(frames), "calls": calls,
            "seconds": time.perf_counter() - t0, "systems": len(job["systems"])}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--structures", type=Path, default=Path("benchmarks/prior-standin/structures.db"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/standin"))
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--minutes", type=float, default=None, help="no chunk starts after this wall-clock budget")
    parser.add_argument("--steps", type=int, default=60, help="BFGS steps per pretraining system at most")
    parser.add_argument("--ood-steps", type=int, default=100, help="BFGS steps per test system at most")
    parser.add_argument("--fmax", type=float, default=0.05, help="BFGS convergence (eV/A)")
    parser.add_argument("--rattles", type=int, default=4, help="rattled frames per pretraining system")
    parser.add_argument("--chunk", type=int, default=2, help="systems per chunk file")
    parser.add_argument("--limit", type=int, default=None, help="label only the first N systems of each split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.structures.is_file():
        print(f"error: {args.structures}: no such structures file", file=sys.stderr)
        return 2
    from ase.db import connect

    out = args.workdir / "frames"
    out.mkdir(parents=True, exist_ok=True)
    logfile = (args.workdir / "label.log").open("a")

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    recipe = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("workers", "device", "minutes", "workdir")}
    recipe["structures_sha256"] = _sha256(args.structures)
    recipe["standin"] = "SevenNet-0 (sevenn 7net-0)"
    saved = args.workdir / "recipe.json"
    if saved.exists() and any(out.glob("*.extxyz")):
        before = json.loads(saved.read_text())
        if {k: before.get(k) for k in recipe} != recipe:
            print(f"error: {args.workdir} holds frames of another recipe ({saved}): use another --workdir",
                  file=sys.stderr)
            return 2
    saved.write_text(json.dumps(recipe, indent=1) + "\n")
    log("start: python scripts/standin_label.py " + " ".join(sys.argv[1:] if argv is None else argv))

    db = connect(str(args.structures))
    rng = np.random.default_rng(args.seed)
    deadline = None if args.minutes is None else time.time() + 60.0 * args.minutes
    jobs = []
    in_domain = []
    for split in SPLITS:
        rows = [(row.key_value_pairs["name"], row.toatoms()) for row in db.select(split=split)]
        if split != "valid_out":
            rows = [rows[i] for i in rng.permutation(len(rows))]
        rows = rows[: args.limit] if args.limit is not None else rows
        for start in range(0, len(rows), args.chunk):
            path = out / f"{split}-{start // args.chunk:04d}.extxyz"
            if path.exists():
                continue
            systems = [(name, atoms, [args.seed, start + k, int(hashlib.md5(name.encode()).hexdigest()[:8], 16)])
                       for k, (name, atoms) in enumerate(rows[start:start + args.chunk])]
            job = {"split": split, "systems": systems, "path": str(path), "steps": args.steps,
                   "ood_steps": args.ood_steps, "fmax": args.fmax, "rattles": args.rattles, "deadline": deadline}
            (jobs if split == "valid_out" else in_domain).append(job)
    # In-domain chunks in a seeded mixed order: a budget cut keeps train and valid_in in proportion.
    jobs += [in_domain[i] for i in rng.permutation(len(in_domain))]
    log(f"{len(jobs)} chunks to label on {args.workers} workers ({args.device})")
    if jobs:
        t_load = time.perf_counter()
        try:  # here first: a missing module or checkpoint stops the run at once, with its traceback
            _load(args.device)
        except Exception as exc:
            log(f"error: the stand-in does not load: {type(exc).__name__}: {exc}")
            raise
        log(f"stand-in loads ({time.perf_counter() - t_load:.0f} s)")
    t0 = time.perf_counter()
    totals = {"frames": 0, "calls": 0, "chunks": 0, "skipped": 0}
    if jobs:
        import multiprocessing as mp

        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, "1")
        with mp.get_context("spawn").Pool(args.workers, initializer=_init, initargs=(args.device,)) as pool:
            for done in pool.imap_unordered(_run_chunk, jobs):
                if done["skipped"]:
                    totals["skipped"] += 1
                    continue
                totals["chunks"] += 1
                totals["frames"] += done["frames"]
                totals["calls"] += done["calls"]
                elapsed = time.perf_counter() - t0
                log(f"chunk {totals['chunks']}/{len(jobs)} {Path(done['path']).name}: {done['frames']} frames, "
                    f"{done['calls']} calls in {done['seconds']:.1f} s; total {totals['frames']} frames, "
                    f"{totals['calls'] / elapsed:.1f} calls/s, {elapsed:.0f} s")
    elapsed = time.perf_counter() - t0
    counts = {split: 0 for split in SPLITS}
    for path in out.glob("*.extxyz"):
        if not path.name.endswith(".tmp.extxyz"):
            with path.open() as handle:
                counts[path.name.rsplit("-", 1)[0]] += sum(1 for line in handle if "Properties=" in line)
    log(f"labelled {totals['frames']} frames ({totals['calls']} stand-in calls) in {elapsed:.0f} s on "
        f"{args.workers} workers ({args.device}); {totals['skipped']} chunks left for a later run; frames on disk: "
        f"{counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
