#!/usr/bin/env python
"""Initial structures of the stand-in world's pretraining data (issue 25, item 1), OC20-style.

Usage: python scripts/standin_structures.py [--output benchmarks/prior-standin/structures.db]
           [--workdir runs/standin-structures] [--seed 0] [--pairs 200] [--slabs-per-bulk 2]
           [--adsorbates-per-slab 2] [--max-atoms 60] [--max-slab 48] [--threads 1]

The stand-in for DFT is SevenNet-0 (sevenn's "7net-0", on the CPU here). Steps, each resumable:

1. The 30 test systems (`oc20-ood30`): each one's adsorbate (its non-slab atoms, found by
   finetuna_parsl.surrogate.standin.adsorbate_indices against fairchem-data-oc's OC20 adsorbate set) and its
   bulk composition; together they are the holdout.
2. Bulks: an elemental reference structure (ase.build.bulk) of every element of the test slabs and of OC20's
   common transition metals that ASE can build, and binary intermetallic prototypes (L1_2 A3B, B2 AB, L1_0
   AB; ase.build.bulk cells decorated) for `--pairs` seeded pairs of the metals among them, never a test
   system's composition. Every cell is relaxed on the stand-in (ase FrechetCellFilter + BFGS, fmax 0.05 eV/A,
   at most 80 steps) into WORKDIR/bulks.db (a relaxed bulk is kept, so a killed run resumes).
3. Slabs and placements with fairchem-data-oc: `Bulk`, `Slab.from_bulk_get_specific_millers` (its pymatgen
   enumeration, OC20's 7 A minimum slab, 20 A vacuum, surface tags 0/1 and FixAtoms on subsurface atoms),
   tiled to OC20's 8 A minimum width (6 A where that exceeds `--max-slab` atoms); `Adsorbate` from its OC20
   adsorbates.pkl minus every held-out formula; `AdsorbateSlabConfig` in "random_site_heuristic_placement"
   mode (tags 2 on the adsorbate), overlapping placements rejected with its `there_is_overlap`. Per bulk
   `--slabs-per-bulk` slabs with Miller indices up to 1 and `--adsorbates-per-slab` adsorbates each.
4. Split (finetuna_parsl.surrogate.standin.split_of): "train", "valid_in" (one in 13 numbers, held out whole),
   and the 30 test systems as "valid_out" (tags set: 0 fixed, 1 free slab atom, 2 adsorbate).

Rows of the output ASE database carry name (oc20-<sid> for a test system, with oc20_sid), split, bulk (Hill
formula), bulk_elements ("Ag-Sr"), bulk_id (its prototype in it), miller, shift, top, min_ab, adsorbate (SMILES,
or the Hill formula for a test system) and ads_formula; a bulk without a usable slab leaves one empty row of
split "none". A bulk's systems are
written in one transaction, so a killed run resumes at the next bulk. Progress: WORKDIR/progress.log.
Reproducible: every random choice comes from a generator seeded by (--seed, bulk index), fairchem-data-oc's
np.random calls included (np.random.seed before each bulk).
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import click
import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.constraints import FixAtoms
from ase.data import atomic_numbers, reference_states

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from finetuna_parsl.surrogate.standin import hill, holdout_of, split_of  # noqa: E402
from finetuna_parsl.systems import load_systems  # noqa: E402

#: OC20's common transition metals (its bulks are drawn from Materials Project entries of 55 elements; these
#: are the d-block metals among them), added to the elements of the 30 test slabs.
OC20_TRANSITION_METALS = ("Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Y", "Zr", "Nb", "Mo", "Ru",
                          "Rh", "Pd", "Ag", "Cd", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg")
#: Elements never put in a binary prototype (they are not metals) nor built as an elemental bulk (no ASE
#: reference crystal that is a solid of a few atoms): H, N, O. C, S, Se, Te, As are built as elemental bulks
#: where ASE can, but not alloyed.
NOT_ALLOYED = frozenset({"H", "C", "N", "O", "S", "Se", "Te", "As", "P", "Si"})
NO_BULK = frozenset({"H", "N", "O"})
PROTOTYPES = ("L1_2", "B2", "L1_0")
MAX_BULK_ATOMS = 8


def _log(workdir: Path):
    handle = (workdir / "progress.log").open("a")

    def log(text: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {text}"
        print(line, flush=True)
        handle.write(line + "\n")
        handle.flush()
    return log


def elemental(symbol: str) -> Atoms | None:
    """ASE's reference crystal of `symbol` (primitive cell), None where ASE has none of a few atoms."""
    try:
        cell = bulk(symbol)
    except Exception:  # ASE raises several kinds for elements without a buildable reference state
        return None
    return cell if len(cell) <= MAX_BULK_ATOMS else None


def prototype(kind: str, a_sym: str, b_sym: str, volume_per_atom: float) -> Atoms:
    """A binary prototype cell on the mean volume per atom (A^3): L1_2 (A3B, Cu3Au-type), B2 (AB, CsCl-type) or
    L1_0 (AB, CuAu-type; alternate (001) layers of an fcc cell)."""
    if kind == "B2":
        cell = bulk(a_sym, "bcc", a=(2 * volume_per_atom) ** (1 / 3), cubic=True)
        cell.symbols[1] = b_sym
        return cell
    cell = bulk(a_sym, "fcc", a=(4 * volume_per_atom) ** (1 / 3), cubic=True)
    if kind == "L1_2":
        cell.symbols[0] = b_sym
    else:  # L1_0: fcc cubic cell atoms at z = 0 (0, 3) and z = a/2 (1, 2)
        cell.symbols[1] = b_sym
        cell.symbols[2] = b_sym
    return cell


def relax_cell(atoms: Atoms, calc, fmax: float = 0.05, steps: int = 80) -> tuple[Atoms, int, bool]:
    """`atoms` with cell and positions relaxed on `calc` (FrechetCellFilter + BFGS); (relaxed, steps, converged)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    work = atoms.copy()
    work.calc = calc
    opt = BFGS(FrechetCellFilter(work), logfile=None)
    converged = bool(opt.run(fmax=fmax, steps=steps))
    out = Atoms(work.numbers, positions=work.positions, cell=work.cell, pbc=True)
    return out, int(opt.nsteps), converged


def bulk_specs(elements: list[str], holdout, pairs: int, seed: int) -> list[dict]:
    """Every bulk to build: elementals of `elements`, then `pairs` seeded metal pairs, each one prototype;
    compositions in `holdout.bulks` left out."""
    specs = [{"id": f"el-{s}", "symbols": [s], "prototype": "elemental"} for s in elements
             if s not in NO_BULK and frozenset([s]) not in holdout.bulks and elemental(s) is not None]
    metals = [s for s in elements if s not in NOT_ALLOYED and elemental(s) is not None]
    candidates = [(a, b) for i, a in enumerate(metals) for b in metals[i + 1:]
                  if frozenset([a, b]) not in holdout.bulks]
    rng = np.random.default_rng([seed, 1])
    for k in rng.permutation(len(candidates))[:pairs]:
        a, b = candidates[k]
        kind = str(rng.choice(PROTOTYPES))
        if rng.random() < 0.5:
            a, b = b, a
        specs.append({"id": f"{kind}-{a}-{b}", "symbols": [a, b], "prototype": kind})
    return specs


def relaxed_bulks(specs: list[dict], workdir: Path, calc, log) -> dict[str, Atoms]:
    """Relax every spec's cell on the stand-in into WORKDIR/bulks.db (those already there are kept)."""
    from ase.db import connect

    db = connect(str(workdir / "bulks.db"))
    done = {row.bulk_id: row.toatoms() for row in db.select()}
    volume = {k[3:]: a.get_volume() / len(a) for k, a in done.items() if k.startswith("el-")}
    t0 = time.perf_counter()
    for n, spec in enumerate(specs, start=1):
        if spec["id"] in done:
            continue
        if spec["prototype"] == "elemental":
            start = elemental(spec["symbols"][0])
        else:
            a, b = spec["symbols"]
            share = 0.75 if spec["prototype"] == "L1_2" else 0.5
            v = [volume.get(s) or elemental(s).get_volume() / len(elemental(s)) for s in (a, b)]
            start = prototype(spec["prototype"], a, b, share * v[0] + (1 - share) * v[1])
        relaxed, steps, converged = relax_cell(start, calc)
        ratio = relaxed.get_volume() / start.get_volume()
        db.write(relaxed, bulk_id=spec["id"], prototype=spec["prototype"], steps=steps, converged=converged,
                 volume_ratio=ratio)
        done[spec["id"]] = relaxed
        if spec["prototype"] == "elemental":
            volume[spec["symbols"][0]] = relaxed.get_volume() / len(relaxed)
        log(f"bulk {n}/{len(specs)} {spec['id']}: {steps} steps, converged {converged}, volume x{ratio:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return done


def _tagged_test_system(atoms: Atoms, ads: list[int]) -> Atoms:
    out = atoms.copy()
    fixed = np.zeros(len(out), dtype=bool)
    for c in out.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    tags = np.where(fixed, 0, 1)
    tags[ads] = 2
    out.set_tags(tags)
    return out


def bulk_systems(index: int, bulk_id: str, cell: Atoms, adsorbates: list[tuple[int, str, str]], args: dict) -> list[tuple[Atoms, dict]]:
    """Adsorbate+slab systems of one relaxed bulk: fairchem-data-oc slabs (Miller indices up to 1, at most
    `max_slab` atoms) and placements of seeded allowed adsorbates; (atoms, key-value pairs) each."""
    from fairchem.data.oc.core import Adsorbate, AdsorbateSlabConfig, Bulk, Slab
    from fairchem.data.oc.core.adsorbate_slab_config import there_is_overlap
    from pymatgen.core.surface import get_symmetrically_distinct_miller_indices

    from fairchem.data.oc.core.slab import standardize_bulk

    rng = np.random.default_rng([args["seed"], index])
    np.random.seed(int(rng.integers(2**31)))  # fairchem-data-oc draws from the global generator
    fc_bulk = Bulk(bulk_atoms=cell)
    millers = [tuple(int(x) for x in m) for m in get_symmetrically_distinct_miller_indices(standardize_bulk(cell), 1)]
    slabs = []
    for m in rng.permutation(len(millers)):
        for min_ab in (8.0, 6.0):
            try:
                found = Slab.from_bulk_get_specific_millers(millers[m], fc_bulk, min_ab=min_ab)
            except Exception:  # pymatgen finds no slab, or tagging fails on a degenerate cell
                found = []
            found = [s for s in found if len(s.atoms) <= args["max_slab"]]
            if found:
                slabs.append((found[int(rng.integers(len(found)))], min_ab))
                break
        if len(slabs) >= args["slabs_per_bulk"]:
            break
    elements = sorted(set(cell.get_chemical_symbols()))
    out = []
    for s_i, (slab, min_ab) in enumerate(slabs):
        for a_i, k in enumerate(rng.choice(len(adsorbates), size=args["adsorbates_per_slab"], replace=False)):
            db_index, smiles, formula = adsorbates[int(k)]
            ads = Adsorbate(adsorbate_id_from_db=db_index)
            for _ in range(5):
                config = AdsorbateSlabConfig(slab, ads, num_sites=1, mode="random_site_heuristic_placement")
                atoms = config.atoms_list[0]
                if not there_is_overlap(atoms):
                    break
            else:
                continue
            if len(atoms) > args["max_atoms"]:
                continue
            atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 0))
            number = index * 16 + s_i * 4 + a_i
            split = split_of(number, formula, elements, args["holdout"])
            if split is None:  # bulk_specs and the adsorbate list already leave the holdout out
                raise AssertionError(f"{bulk_id} with {smiles} touches the holdout")
            out.append((atoms, {
                "name": f"{bulk_id}-{''.join(map(str, slab.millers))}-{number}", "split": split, "bulk": hill(cell.get_chemical_symbols()),
                "bulk_id": bulk_id, "bulk_index": index, "bulk_elements": "-".join(elements),
                "miller": "(" + ",".join(map(str, slab.millers)) + ")", "shift": float(slab.shift), "top": bool(slab.top),
                "min_ab": min_ab, "adsorbate": smiles, "ads_formula": formula}))
    return out


@click.command()
@click.option("--output", type=click.Path(path_type=Path), default=Path("benchmarks/prior-standin/structures.db"),
              show_default=True)
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("runs/standin-structures"), show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--pairs", default=200, show_default=True, help="binary metal pairs (one prototype each)")
@click.option("--slabs-per-bulk", default=2, show_default=True)
@click.option("--adsorbates-per-slab", default=2, show_default=True)
@click.option("--max-atoms", default=60, show_default=True, help="largest adsorbate+slab system")
@click.option("--max-slab", default=48, show_default=True, help="largest slab")
@click.option("--threads", default=1, show_default=True, help="torch threads for the stand-in on the CPU")
def main(output: Path, workdir: Path, seed: int, pairs: int, slabs_per_bulk: int, adsorbates_per_slab: int,
         max_atoms: int, max_slab: int, threads: int) -> None:
    import torch
    from ase.db import connect
    from fairchem.data.oc.databases.pkls import ADSORBATE_PKL_PATH
    from sevenn.calculator import SevenNetCalculator

    torch.set_num_threads(threads)
    workdir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    log = _log(workdir)
    log("start: python scripts/standin_structures.py " + " ".join(sys.argv[1:]))
    with open(ADSORBATE_PKL_PATH, "rb") as fp:
        adsorbate_db = pickle.load(fp)
    formulas = {k: hill(v[0].get_chemical_symbols()) for k, v in adsorbate_db.items()}
    tests, _ = load_systems("oc20-ood30")
    test_atoms = {s.system_id: s.to_atoms() for s in tests}
    holdout, per_test = holdout_of(test_atoms, formulas.values())
    allowed_ads = [(k, adsorbate_db[k][1], f) for k, f in sorted(formulas.items()) if f not in holdout.adsorbates]
    log(f"holdout: adsorbates {sorted(holdout.adsorbates)}; {len(holdout.bulks)} bulk compositions; "
        f"{len(allowed_ads)} of {len(adsorbate_db)} OC20 adsorbates allowed")
    elements = sorted({e for _, els in per_test.values() for e in els} | set(OC20_TRANSITION_METALS),
                      key=lambda s: atomic_numbers[s])
    specs = bulk_specs(elements, holdout, pairs, seed)
    recipe = {"seed": seed, "pairs": pairs, "slabs_per_bulk": slabs_per_bulk, "adsorbates_per_slab": adsorbates_per_slab,
              "max_atoms": max_atoms, "max_slab": max_slab, "elements": elements, "bulks": len(specs),
              "held_out_adsorbates": sorted(holdout.adsorbates),
              "held_out_bulks": sorted("-".join(sorted(b)) for b in holdout.bulks),
              "standin": "SevenNet-0 (sevenn 7net-0)"}
    (workdir / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    calc = SevenNetCalculator(model="7net-0", device="cpu")
    cells = relaxed_bulks(specs, workdir, calc, log)

    db = connect(str(output))
    if db.count(split="valid_out") == 0:
        with db:
            for sid, atoms in test_atoms.items():
                ads = _ads(atoms, formulas.values())
                formula, els = per_test[sid]
                slab_symbols = [s for i, s in enumerate(atoms.get_chemical_symbols()) if i not in set(ads)]
                db.write(_tagged_test_system(atoms, ads), name=f"oc20-{sid}", oc20_sid=int(sid), split="valid_out", ads_formula=formula,
                         adsorbate=formula, bulk_elements="-".join(sorted(els)), bulk=hill(slab_symbols))
    done = {row.bulk_index for row in db.select("bulk_index>=0")}
    args = {"seed": seed, "max_slab": max_slab, "max_atoms": max_atoms, "slabs_per_bulk": slabs_per_bulk,
            "adsorbates_per_slab": adsorbates_per_slab, "holdout": holdout}
    t0 = time.perf_counter()
    for index, spec in enumerate(specs):
        if index in done:
            continue
        systems = bulk_systems(index, spec["id"], cells[spec["id"]], allowed_ads, args)
        with db:
            for atoms, kv in systems:
                db.write(atoms, **kv)
            if not systems:  # a bulk without a usable slab still counts as done
                db.write(Atoms(), name=f"{spec['id']}-none", split="none", bulk_index=index)
        log(f"systems of bulk {index + 1}/{len(specs)} {spec['id']}: {len(systems)} "
            f"({db.count('split=train')} train, {db.count('split=valid_in')} valid_in; "
            f"{time.perf_counter() - t0:.0f} s)")
    log(f"done: {db.count('split=train')} train, {db.count('split=valid_in')} valid_in, "
        f"{db.count('split=valid_out')} valid_out systems in {output}")


def _ads(atoms: Atoms, known) -> list[int]:
    from finetuna_parsl.surrogate.standin import adsorbate_indices

    return adsorbate_indices(atoms, known)


if __name__ == "__main__":
    main()
