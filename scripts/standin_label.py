#!/usr/bin/env python
"""Label the stand-in world's structures with the stand-in (SevenNet-0) for pretraining (issue 25, item 1).

Usage: python scripts/standin_label.py [--structures benchmarks/prior-standin/structures.db]
           [--workdir runs/standin] [--workers 12] [--device cuda] [--minutes 4] [--steps 60]
           [--ood-steps 100] [--fmax 0.05] [--rattles 4] [--chunk 8] [--unbatched] [--limit N] [--seed 0]

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
GPU). A chunk's systems relax in lockstep: each BFGS step of all of them is one batched SevenNet-0 call
(sevenn's batch inference; `--unbatched`: one SevenNetCalculator call per frame, the same numbers). With
`--minutes`, no chunk starts after that wall-clock budget; chunks run test systems first, then
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
    last = frames[-1]
    for k in range(rattles):
        base = atoms if k % 2 == 0 else last
        shaken = atoms.copy()
        shaken.positions = base.positions.copy()
        shaken.positions[free] += rng.normal(0.0, rng.uniform(0.03, 0.15), (int(free.sum()), 3))
        frames.append(_label(shaken, name))
        calls += 1
    kept = [f for f in frames if float((f.get_forces(apply_constraint=False) ** 2).sum(axis=1).max()) <= MAX_FORCE ** 2]
    for f in kept:
        f.info["split"] = split
    return kept, calls


def _evaluate(atoms_list: list) -> list[tuple[float, np.ndarray]]:
    """(energy eV, forces eV/A) of each of `atoms_list` from ONE batched SevenNet-0 call: sevenn's own batch
    inference (model.set_is_batch_data(True) on a torch_geometric Batch of its graphs, as
    sevenn/scripts/inference.py), so the GPU sees one graph of many systems instead of many tiny calls."""
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from torch_geometric.data import Batch

    graphs = [AtomGraphData.from_numpy_dict(unlabeled_atoms_to_graph(a, _CALC.cutoff, with_shift=False))
              for a in atoms_list]
    batch = Batch.from_data_list(graphs).to(_CALC.device)
    _CALC.model.set_is_batch_data(True)
    try:
        out = _CALC.model(batch)
    finally:
        _CALC.model.set_is_batch_data(False)
    energies = out[KEY.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
    forces = out[KEY.PRED_FORCE].detach().cpu().numpy()
    ends = np.cumsum([len(a) for a in atoms_list])
    return [(float(e), f) for e, f in zip(energies, np.split(forces, ends[:-1]))]


def lockstep_frames(systems: list, split: str, steps: int, fmax: float, rattles: int) -> tuple[list, int]:
    """`system_frames` for several systems at once: their ASE BFGS relaxations advance in lockstep, each
    step's forces of all systems still running from one batched call (`_evaluate`), then the rattled copies
    of all in one call. Same frames as `system_frames` (the same BFGS, fed the same forces); (frames, calls)."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.optimize import BFGS

    work, opts, paths = [], [], []
    for _, atoms, _ in systems:
        copy = atoms.copy()
        opt = BFGS(copy, logfile=None)
        opt.fmax = fmax
        work.append(copy)
        opts.append(opt)
        paths.append([])
    active, calls = list(range(len(systems))), 0
    for step in range(steps + 1):
        if not active:
            break
        results = _evaluate([work[i] for i in active])
        calls += len(active)
        running = []
        for i, (energy, forces) in zip(active, results):
            paths[i].append(_frame(work[i], energy, forces, systems[i][0]))
            # the optimizer reads the batched results through the atoms' calculator, as irun() does
            work[i].calc = SinglePointCalculator(work[i], energy=energy, forces=forces)
            if step == steps or opts[i].gradient_converged(opts[i].optimizable.get_gradient()):
                continue
            opts[i].step()
            running.append(i)
        active = running
    shaken = []
    for i, (name, atoms, seed) in enumerate(systems):
        rng = np.random.default_rng(seed)
        free = _free(atoms)
        for k in range(rattles):
            base = atoms if k % 2 == 0 else paths[i][-1]
            copy = atoms.copy()
            copy.positions = base.positions.copy()
            copy.positions[free] += rng.normal(0.0, rng.uniform(0.03, 0.15), (int(free.sum()), 3))
            shaken.append((i, copy))
    if shaken:
        for (i, copy), (energy, forces) in zip(shaken, _evaluate([c for _, c in shaken])):
            paths[i].append(_frame(copy, energy, forces, systems[i][0]))
        calls += len(shaken)
    kept = [f for path in paths for f in path
            if float((f.get_forces(apply_constraint=False) ** 2).sum(axis=1).max()) <= MAX_FORCE ** 2]
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
    steps = job["ood_steps"] if job["split"] == "valid_out" else job["steps"]
    rattles = 0 if job["split"] == "valid_out" else job["rattles"]
    if job["batched"]:
        frames, calls = lockstep_frames(job["systems"], job["split"], steps, job["fmax"], rattles)
    else:
        frames, calls = [], 0
        for name, atoms, seed in job["systems"]:
            got, n = system_frames(atoms, name, job["split"], steps, job["fmax"], rattles,
                                   np.random.default_rng(seed))
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
    parser.add_argument("--chunk", type=int, default=8,
                        help="systems per chunk file (relaxed in lockstep, one batched stand-in call per step)")
    parser.add_argument("--unbatched", action="store_true",
                        help="one ASE calculator call per frame (SevenNetCalculator) instead of batched calls")
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
                   "ood_steps": args.ood_steps, "fmax": args.fmax, "rattles": args.rattles, "deadline": deadline,
                   "batched": not args.unbatched}
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
