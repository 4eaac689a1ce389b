"""How often do two exact (parent-only) optimizers end in the same minimum? The ceiling of the accuracy measure.

The bench's accuracy counts a method accurate on a system when it is parent-confirmed relaxed and its final parent
energy is at most 0.02 eV above parent-only BFGS's (learner/metrics.py; the paper's measure). On rugged
adsorbate/slab surfaces two correct optimizers can end in different local minima. This script measures how often,
with no surrogate involved: ASE optimizers other than BFGS, and BFGS itself started 0.001 A away, all on ASE's
EMT with the bench's settings (fmax 0.03 eV/A, at most 300 parent calls, maxstep 0.2 A), scored against parent-only
BFGS from the unperturbed start with learner/metrics.py's own function.

    python benchmarks/minima.py --sources ood,demo --output benchmarks/minima.md

Writes the table (markdown) and, next to it, a JSON file with every run's calls and energy. EMT only; about 11 minutes
on one core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT
from ase.optimize import BFGS, FIRE, LBFGS, BFGSLineSearch, GPMin
from ase.optimize.sciopt import SciPyFminCG

from finetuna_parsl.learner.bfgs import free_fmax
from finetuna_parsl.learner.metrics import ENERGY_TOLERANCE, is_accurate, why_not_accurate
from finetuna_parsl.records import OUTCOME_CONVERGED, OUTCOME_PARENT_BUDGET, SystemSpec
from finetuna_parsl.systems import load_systems

FMAX = 0.03  # eV/A, the bench's
BUDGET = 300  # parent calls, the configs' max_parent_calls
NUDGE = 0.001  # A: the perturbed starts move every free atom by a random vector of this length

#: name -> (what it is, optimizer factory, nudge seed or None). The first is the reference.
VARIANTS: dict[str, tuple[str, Callable, int | None]] = {
    "bfgs": ("ASE BFGS, maxstep 0.2 A (the bench's reference)", lambda a: BFGS(a, logfile=None, maxstep=0.2), None),
    "bfgs-nudged-1": (f"the same BFGS, every free atom moved {NUDGE} A at random (seed 1)",
                      lambda a: BFGS(a, logfile=None, maxstep=0.2), 1),
    "bfgs-nudged-2": ("... seed 2", lambda a: BFGS(a, logfile=None, maxstep=0.2), 2),
    "bfgs-nudged-3": ("... seed 3", lambda a: BFGS(a, logfile=None, maxstep=0.2), 3),
    "bfgs-maxstep-0.1": ("ASE BFGS, maxstep 0.1 A", lambda a: BFGS(a, logfile=None, maxstep=0.1), None),
    "bfgs-alpha-35": ("ASE BFGS, initial Hessian 35 eV/A^2 (default 70)",
                      lambda a: BFGS(a, logfile=None, maxstep=0.2, alpha=35.0), None),
    "lbfgs": ("ASE LBFGS, defaults", lambda a: LBFGS(a, logfile=None), None),
    "bfgs-linesearch": ("ASE BFGSLineSearch, defaults", lambda a: BFGSLineSearch(a, logfile=None), None),
    "fire": ("ASE FIRE, defaults", lambda a: FIRE(a, logfile=None), None),
    "cg": ("SciPy CG through ASE (the bench's cg)", lambda a: SciPyFminCG(a, logfile=None), None),
    "gpmin": ("ASE GPMin, defaults (the bench's gpmin)", lambda a: GPMin(a, logfile=None), None),
}


class _Spent(Exception):
    """The parent-call budget is spent."""


class _Counting(EMT):
    """ASE's EMT that records each calculation as a parent call (energy, free-atom fmax) and stops at the budget."""

    def __init__(self, fixed: np.ndarray) -> None:
        super().__init__()
        self.fixed = fixed
        self.parent_energies: list[float] = []
        self.parent_fmax: list[float] = []

    @property
    def calls(self) -> int:
        return len(self.parent_energies)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        if self.calls >= BUDGET:
            raise _Spent
        super().calculate(atoms, properties, system_changes)
        self.parent_energies.append(float(self.results["energy"]))
        self.parent_fmax.append(free_fmax(self.results["forces"], self.fixed))


def relax(system: SystemSpec, variant: str) -> dict:
    """One parent-only relaxation, scored as the bench scores its stores (store/reader.py, learner/metrics.py): outcome
    converged when some parent call confirmed fmax <= FMAX; final energy (eV) is the last parent call's."""
    _doc, make, seed = VARIANTS[variant]
    positions = system.positions.copy()
    if seed is not None:
        rng = np.random.default_rng(seed)
        step = rng.normal(size=positions.shape)
        step *= NUDGE / np.linalg.norm(step, axis=1, keepdims=True)
        positions[~system.fixed] += step[~system.fixed]
    atoms = system.to_atoms(positions)
    calc = _Counting(system.fixed)
    atoms.calc = calc
    try:
        make(atoms).run(fmax=FMAX, steps=BUDGET)
    except (_Spent, RuntimeError):  # the budget; GPMin may give up building its model (RuntimeError)
        pass
    converged = any(f <= FMAX for f in calc.parent_fmax)
    return {"system_id": system.system_id, "variant": variant, "parent_calls": calc.calls,
            "outcome": OUTCOME_CONVERGED if converged else OUTCOME_PARENT_BUDGET,
            "final_energy": calc.parent_energies[-1] if calc.parent_energies else float("nan")}


def table(rows: list[dict], source: str) -> list[str]:
    ref = {r["system_id"]: r for r in rows if r["variant"] == "bfgs"}
    lines = [f"### `{source}` ({len(ref)} systems)", "",
             "| optimizer | parent calls | relaxed | dE <= -0.02 | -0.02 < dE < 0.02 | dE >= 0.02 | accurate |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        n = len(mine)
        de = [r["final_energy"] - ref[r["system_id"]]["final_energy"] for r in mine]
        relaxed = sum(r["outcome"] == OUTCOME_CONVERGED for r in mine)
        accurate = sum(is_accurate(r, ref[r["system_id"]]) for r in mine)
        lower = sum(d <= -ENERGY_TOLERANCE for d in de)
        same = sum(-ENERGY_TOLERANCE < d < ENERGY_TOLERANCE for d in de)
        higher = sum(d >= ENERGY_TOLERANCE for d in de)
        lines.append(f"| {variant} | {sum(r['parent_calls'] for r in mine)} | {relaxed}/{n} | {lower} | {same} | "
                     f"{higher} | {accurate}/{n} ({100 * accurate / n:.0f}%) |")
    lines += ["", "Systems where some optimizer is not accurate (why, as the bench says it):", ""]
    for system_id in ref:
        misses = [f"{r['variant']} ({why_not_accurate(r, ref[system_id])})" for r in rows
                  if r["system_id"] == system_id and why_not_accurate(r, ref[system_id])]
        if misses:
            lines.append(f"- {system_id}: {len(misses)} of {len(VARIANTS)} runs: {', '.join(misses)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sources", default="ood,demo", help="system sources, comma-separated (20 systems each)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/minima.md"))
    args = parser.parse_args()
    started = time.time()
    rows: dict[str, list[dict]] = {}
    for source in args.sources.split(","):
        systems, _skipped = load_systems(source, 20, 0)
        rows[source] = []
        for system in systems:
            for variant in VARIANTS:
                rows[source].append(relax(system, variant))
            print(f"{source} {system.system_id}: done ({time.time() - started:.0f} s)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    command = "python benchmarks/minima.py " + " ".join(sys.argv[1:])
    out = ["# How often two exact optimizers end in the same minimum", "",
           f"Made by: `{command}` at commit {commit}, {time.time() - started:.0f} s. Parent: ASE's EMT; "
           f"fmax {FMAX} eV/A; at most {BUDGET} parent calls. dE = final parent energy minus parent-only BFGS's "
           "from the unperturbed start (the bench's reference); accurate = relaxed and dE <= 0.02 eV "
           "(learner/metrics.py's is_accurate).", "",
           "| optimizer | what |", "|---|---|"]
    out += [f"| {name} | {doc} |" for name, (doc, _m, _s) in VARIANTS.items()]
    out.append("")
    for source, source_rows in rows.items():
        out += table(source_rows, source) + [""]
    args.output.write_text("\n".join(out))
    args.output.with_suffix(".json").write_text(json.dumps({"commit": commit, "command": command, "rows": rows},
                                                           indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
