#!/usr/bin/env python
"""Learner ablation -> benchmarks/learner.md: one row per lever of the online learner, on the same systems.

Usage: python benchmarks/learner.py [--checkpoint shipped] [--ood 10] [--demo 6] [--workers 2]
                                    [--rows baseline,all-exact-damped] [--results runs/learner-ablation.jsonl]
                                    [--output benchmarks/learner.md]
       python benchmarks/learner.py --list          # every row's name and settings
       python benchmarks/learner.py --rows ... --dry-run   # what would run, what --results already holds

Rows are chosen by name (ROWS; a name always means the same lever combination, and every learner setting is
pinned in BASELINE, so a row does not move when a code default does). Positions are refused: they were reused
when rows of removed levers went, so the position lists in old notes (benchmarks/history/) name other rows now.

Resumable: each finished (row, system) is appended to --results with the row's full settings, and a rerun with
the same checkpoint weights, system counts and row settings runs only what is missing.

Every row relaxes the same systems (the first --ood systems of the "ood" source, seed 0, and the first --demo
of the "demo" source) with the EMT parent and the online learner's pure functions (learner.online.propose /
record_parent, exactly what a campaign's learn task runs, without Parsl), and compares its parent calls with
parent-only ASE BFGS on the same system (learner.reference, measured in the same run). Ratio: the mean over
systems of (online parent calls / BFGS parent calls), as the paper reports; worst: the largest per-system
ratio; accurate: parent-confirmed fmax <= 0.03 eV/A and final energy <= BFGS's + 0.02 eV.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import click
import numpy as np

#: The two configs' learners as the eighth session left them, less their k (demo k=15, ood k=10); the rows from
#: k15-all-fade1-damped-sf0.02 onwards vary them.
DEMO_LEARNER = {"train_on": "all", "exact_at_newest": True, "exact_fade": 1.0, "hessian_damping": 0.2}
OOD_LEARNER = {**DEMO_LEARNER, "residual_points": 10}
TRUST_ANY = {"trust_radius": 1.0, "trust_fmax": 1e3}  # every segment kept within 1 A of the newest parent point
#: The measured recipe (learner/recipes.py, the code defaults) over BASELINE: the demo-config row's levers.
MEASURED = {**DEMO_LEARNER, "k": 100, "surrogate_fmax": 0.02, "anomaly_guard": True}


@dataclass(frozen=True)
class Row:
    """One row of the table: `name` is what --rows, --list and the results file call it (stable: a name is never
    given to another lever combination; a row whose lever is removed from the learner is removed with it), `label`
    what the table's lever column says, `change` the LearnerSettings fields it sets over BASELINE."""

    name: str
    label: str
    change: dict


#: Every row, in table order. Rows used to be chosen by position (--rows 7,11); positions were reused when rows of
#: removed levers went, so old notes' position lists name other rows today (benchmarks/history/).
ROWS: tuple[Row, ...] = (
    Row("baseline", "baseline: k-steps k=10, newest point, backoff", {}),
    Row("k3", "k=3", {"k": 3}),
    Row("k20", "k=20", {"k": 20}),
    Row("all", "fine-tune on all parent points", {"train_on": "all"}),
    Row("exact", "exact at the newest parent point", {"exact_at_newest": True}),
    Row("no-backoff", "no backoff", {"backoff": False}),
    Row("all-exact", "all points + exact at newest", {"train_on": "all", "exact_at_newest": True}),
    Row("k20-all", "k=20 + all points", {"k": 20, "train_on": "all"}),
    Row("k20-all-exact", "k=20 + all points + exact at newest",
        {"k": 20, "train_on": "all", "exact_at_newest": True}),
    Row("all-gp10", "all points + residual GP (newest 10 points)", {"train_on": "all", "residual_points": 10}),
    Row("all-exact-gp10", "all points + exact at newest + residual GP (newest 10)",
        {"train_on": "all", "exact_at_newest": True, "residual_points": 10}),
    Row("k20-all-exact-gp10", "k=20 + all points + exact at newest + residual GP (newest 10)",
        {"k": 20, "train_on": "all", "exact_at_newest": True, "residual_points": 10}),
    Row("all-exact-gp30", "all points + exact at newest + residual GP (newest 30)",
        {"train_on": "all", "exact_at_newest": True, "residual_points": 30}),
    Row("all-exact-gp10-scale0.8", "all points + exact at newest + residual GP (newest 10, scale 0.8 A)",
        {"train_on": "all", "exact_at_newest": True, "residual_points": 10, "residual_scale": 0.8}),
    Row("all-exact-damped", "all points + exact at newest + damped Hessian",
        {"train_on": "all", "exact_at_newest": True, "hessian_damping": 0.2}),
    Row("all-exact-gp10-damped", "all points + exact at newest + residual GP (newest 10) + damped Hessian",
        {"train_on": "all", "exact_at_newest": True, "residual_points": 10, "hessian_damping": 0.2}),
    Row("all-exact-gp10-damped0.5",
        "all points + exact at newest + residual GP (newest 10) + damped Hessian (0.5)",
        {"train_on": "all", "exact_at_newest": True, "residual_points": 10, "hessian_damping": 0.5}),
    Row("k20-all-exact-gp10-damped",
        "k=20 + all points + exact at newest + residual GP (newest 10) + damped Hessian",
        {"k": 20, "train_on": "all", "exact_at_newest": True, "residual_points": 10, "hessian_damping": 0.2}),
    Row("all-gp10-damped", "all points + residual GP (newest 10) + damped Hessian (not exact at newest)",
        {"train_on": "all", "residual_points": 10, "hessian_damping": 0.2}),
    Row("ro-all-exact-gp10-damped",
        "relaxed-only + all points + exact at newest + residual GP (newest 10) + damped Hessian",
        {"query": "relaxed-only", "train_on": "all", "exact_at_newest": True, "residual_points": 10,
         "hessian_damping": 0.2}),
    Row("ro-all-gp10-damped",
        "relaxed-only + all points + residual GP (newest 10) + damped Hessian (not exact at newest)",
        {"query": "relaxed-only", "train_on": "all", "residual_points": 10, "hessian_damping": 0.2}),
    Row("all-fade1-gp10-damped",
        "all points + exact at newest, faded over 1 A + residual GP (newest 10) + damped Hessian",
        {**OOD_LEARNER}),
    Row("ro-all-fade1-gp10-damped",
        "relaxed-only + all points + exact at newest, faded over 1 A + residual GP (newest 10) + damped Hessian",
        {**OOD_LEARNER, "query": "relaxed-only"}),
    Row("all-fade0.5-gp10-damped",
        "all points + exact at newest, faded over 0.5 A + residual GP (newest 10) + damped Hessian",
        {**OOD_LEARNER, "exact_fade": 0.5}),
    Row("all-fade2-gp10-damped",
        "all points + exact at newest, faded over 2 A + residual GP (newest 10) + damped Hessian",
        {**OOD_LEARNER, "exact_fade": 2.0}),
    Row("all-fade1-gp10-damped-trust0.15",
        "faded 1 A + residual GP + damped Hessian + trust radius 0.15 A below 0.1 eV/A",
        {**OOD_LEARNER, "trust_radius": 0.15, "trust_fmax": 0.1}),
    Row("all-fade1-gp10-damped-trust0.1",
        "faded 1 A + residual GP + damped Hessian + trust radius 0.1 A below 0.1 eV/A",
        {**OOD_LEARNER, "trust_radius": 0.1, "trust_fmax": 0.1}),
    Row("ro-all-fade1-gp10-damped-trust0.15",
        "relaxed-only + faded 1 A + residual GP + damped Hessian + trust radius 0.15 A below 0.1 eV/A",
        {**OOD_LEARNER, "query": "relaxed-only", "trust_radius": 0.15, "trust_fmax": 0.1}),
    Row("all-fade1-damped",
        "the demo config's learner of the time: all points + exact at newest, faded 1 A + damped Hessian "
        "(no residual GP)", {**DEMO_LEARNER}),
    Row("k15-all-fade1-damped", "the demo config's learner of the time with k=15", {**DEMO_LEARNER, "k": 15}),
    Row("k20-all-fade1-damped", "the demo config's learner of the time with k=20", {**DEMO_LEARNER, "k": 20}),
    Row("k15-all-fade1-gp10-damped",
        "k=15 + all points + exact at newest, faded over 1 A + residual GP (newest 10) + damped Hessian",
        {**OOD_LEARNER, "k": 15}),
    Row("k15-all-fade1-damped-sf0.02", "k15-all-fade1-damped + surrogate relaxed at 0.02 eV/A",
        {**DEMO_LEARNER, "k": 15, "surrogate_fmax": 0.02}),
    Row("k15-all-fade1-damped-sf0.015", "k15-all-fade1-damped + surrogate relaxed at 0.015 eV/A",
        {**DEMO_LEARNER, "k": 15, "surrogate_fmax": 0.015}),
    Row("ro-all-fade1-damped", "all-fade1-damped as relaxed-only", {**DEMO_LEARNER, "query": "relaxed-only"}),
    Row("ro-all-fade1-damped-trust0.15", "all-fade1-damped as relaxed-only + trust radius 0.15 A below 0.1 eV/A",
        {**DEMO_LEARNER, "query": "relaxed-only", "trust_radius": 0.15, "trust_fmax": 0.1}),
    Row("ro-all-fade1-damped-sf0.02", "all-fade1-damped as relaxed-only + surrogate relaxed at 0.02 eV/A",
        {**DEMO_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.02}),
    Row("ro-all-fade1-damped-sf0.015", "all-fade1-damped as relaxed-only + surrogate relaxed at 0.015 eV/A",
        {**DEMO_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.015}),
    Row("ro-all-fade1-gp10-damped-sf0.02", "ro-all-fade1-gp10-damped + surrogate relaxed at 0.02 eV/A",
        {**OOD_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.02}),
    Row("ro-all-fade1-gp10-damped-sf0.015", "ro-all-fade1-gp10-damped + surrogate relaxed at 0.015 eV/A",
        {**OOD_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.015}),
    Row("ro-all-fade1-gp10-damped-sf0.02-trust1",
        "ro-all-fade1-gp10-damped-sf0.02 + every segment kept within 1 A of the newest parent point (trust radius "
        "1 A at any fmax)", {**OOD_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.02, **TRUST_ANY}),
    Row("ro-all-fade1-gp10-damped-sf0.02-trust2",
        "ro-all-fade1-gp10-damped-sf0.02 + every segment kept within 2 A of the newest parent point (trust radius "
        "2 A at any fmax)",
        {**OOD_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.02, **TRUST_ANY, "trust_radius": 2.0}),
    Row("ro-all-fade1-damped-sf0.02-trust1", "ro-all-fade1-damped-sf0.02 + trust radius 1 A at any fmax",
        {**DEMO_LEARNER, "query": "relaxed-only", "surrogate_fmax": 0.02, **TRUST_ANY}),
    Row("all-fade1-gp10-damped-sf0.02",
        "the ood config's learner of the time (k-steps k=10, all-fade1-gp10-damped) + surrogate relaxed at "
        "0.02 eV/A", {**OOD_LEARNER, "surrogate_fmax": 0.02}),
    Row("k15-all-fade1-damped-sf0.02-trust1",
        "the demo config's learner of the time (k-steps k=15) + surrogate relaxed at 0.02 eV/A + trust radius 1 A "
        "at any fmax", {**DEMO_LEARNER, "k": 15, "surrogate_fmax": 0.02, **TRUST_ANY}),
    Row("k100-all-fade1-damped-sf0.02",
        "configs/demo.yaml's learner, anomaly guard off: k=100 + all-fade1-damped + surrogate relaxed at "
        "0.02 eV/A", {**DEMO_LEARNER, "k": 100, "surrogate_fmax": 0.02}),
    Row("k100-all-fade1-gp10-damped-sf0.02",
        "configs/ood-bench.yaml's learner, anomaly guard off: k=100 + all-fade1-gp10-damped + surrogate relaxed "
        "at 0.02 eV/A", {**OOD_LEARNER, "k": 100, "surrogate_fmax": 0.02}),
    Row("demo-config", "configs/demo.yaml's learner (k100-all-fade1-damped-sf0.02 + anomaly guard)",
        {**DEMO_LEARNER, "k": 100, "surrogate_fmax": 0.02, "anomaly_guard": True}),
    Row("ood-config", "configs/ood-bench.yaml's learner (k100-all-fade1-gp10-damped-sf0.02 + anomaly guard)",
        {**OOD_LEARNER, "k": 100, "surrogate_fmax": 0.02, "anomaly_guard": True}),
    Row("demo-config-restart", "demo-config + restart from the lowest parent point after an uphill segment",
        {**MEASURED, "restart_from_lowest": True}),
    Row("ood-config-restart", "ood-config + restart from the lowest parent point after an uphill segment",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True}),
    Row("ood-config-restart-no-backoff", "ood-config-restart without backoff",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "backoff": False}),
    Row("ood-config-restart-not-exact", "ood-config-restart without the exact shift at the newest parent point",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "exact_at_newest": False}),
    Row("ood-config-restart-undamped", "ood-config-restart with ASE's Hessian update (no damping)",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "hessian_damping": 0.0}),
    Row("demo-config-no-backoff", "demo-config without backoff", {**MEASURED, "backoff": False}),
    Row("demo-config-restart-no-backoff", "demo-config-restart without backoff",
        {**MEASURED, "restart_from_lowest": True, "backoff": False}),
    Row("demo-config-not-exact", "demo-config without the exact shift at the newest parent point",
        {**MEASURED, "exact_at_newest": False}),
    Row("demo-config-undamped", "demo-config with ASE's Hessian update (no damping)",
        {**MEASURED, "hessian_damping": 0.0}),
    Row("demo-config-newest", "demo-config fine-tuning on the newest parent point only",
        {**MEASURED, "train_on": "newest"}),
    Row("ood-config-restart-trust0.15", "ood-config-restart + trust radius 0.15 A once the parent fmax is below "
        "0.1 eV/A", {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "trust_radius": 0.15}),
    Row("ood-config-restart-leash0.3", "ood-config-restart + adsorbate leash 0.3 A",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "adsorbate_leash": 0.3}),
    Row("ood-config-restart-no-guard", "ood-config-restart without the anomaly guard",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "anomaly_guard": False}),
    Row("ood-config-restart-leash0.3-not-exact", "ood-config-restart + adsorbate leash 0.3 A, without the exact shift",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "adsorbate_leash": 0.3,
         "exact_at_newest": False}),
    Row("ood-config-restart-leash0.3-not-exact-trust0.15",
        "ood-config-restart + adsorbate leash 0.3 A + trust radius 0.15 A, without the exact shift",
        {**MEASURED, "residual_points": 10, "restart_from_lowest": True, "adsorbate_leash": 0.3,
         "exact_at_newest": False, "trust_radius": 0.15}),
)

#: Every LearnerSettings field, pinned, so that a row keeps its levers when a code default changes (the code
#: defaults are not the baseline's: hessian_damping, exact_fade and anomaly_guard were added later and default to
#: on). tests/test_benchmarks.py checks that every field is here: a new learner field must be pinned (to the
#: value that leaves the rows as measured) before it can change them.
BASELINE = {"query": "k-steps", "k": 10, "uncertainty_threshold": 0.05, "fmax": 0.03, "surrogate_fmax": None,
            "max_parent_calls": 300, "max_surrogate_steps": 3000, "maxstep": 0.2, "alpha": 70.0,
            "train_on": "newest", "stall_steps": 10, "stall_distance": 0.02, "backoff": True,
            "trust_radius": None,  # no trust radius, as every row before the trust rows was measured
            "trust_fmax": 0.1, "exact_at_newest": False,
            "exact_fade": None,  # the unfaded shift, as every row before the faded ones was measured
            "residual_points": 0, "residual_scale": 0.4,
            "hessian_damping": 0.0,  # ASE's Hessian update, as every row before the damped one was measured
            "anomaly_guard": False,  # no guard, as every row before it existed was measured
            "adsorbate_leash": None,
            "restart_from_lowest": False}  # segments start from the newest parent point, as before the lever

#: Levers removed from the learner, each with the value at which it behaved as the code does now. A result stored
#: while the lever existed, at that value, was measured as the code now behaves and is reused; rows of its other
#: values went with it (their figures: benchmarks/history/).
REMOVED = {"backoff_regrow": 1}  # 2026-12-05: the regrow3 rows did not pay in the stand-in world
ROW_NAMES = {row.name: row for row in ROWS}
assert len(ROW_NAMES) == len(ROWS), "two rows share a name"

_SURROGATE = None


def _init(checkpoint: str) -> None:
    global _SURROGATE
    import torch

    from finetuna_parsl.surrogate import load_surrogate

    torch.set_num_threads(1)
    _SURROGATE = load_surrogate(checkpoint, device="cpu")


#: The stand-in world's parent (configs/oc20-paper.yaml): SevenNet-0 through ASE, weights from the sevenn wheel.
STANDIN_CALCULATOR = ("sevenn.calculator", "SevenNetCalculator", {"model": "7net-0", "device": "cpu"})
#: The oc20-ood30 systems --world standin relaxes unless --paper names others: 8 of the 30 with 17-57 atoms, from
#: the k-steps run's best (2500909, 1447590) to its worst (1070869, 2537583) in benchmarks/oc20-paper/per_system.md.
STANDIN_SUBSET = ("1447590", "1553462", "1697959", "2176747", "2500909", "1979576", "1070869", "2537583")


def _parent(world: str, spec):
    """The parent of `world` for one relaxation: EMT, or the stand-in (one SevenNet-0 calculator kept for the whole
    relaxation, as the product's ase parent keeps it)."""
    if world == "emt":
        return _emt_parent(spec)
    import importlib

    from finetuna_parsl.records import Evaluation

    module, name, options = STANDIN_CALCULATOR
    calc = getattr(importlib.import_module(module), name)(**options)
    atoms = spec.to_atoms(spec.positions)
    atoms.calc = calc

    def call(positions: np.ndarray) -> Evaluation:
        atoms.positions = positions
        return Evaluation(positions.copy(), float(atoms.get_potential_energy()),
                          np.array(atoms.get_forces(apply_constraint=False)))
    return call


def _emt_parent(spec):
    from ase.calculators.emt import EMT

    from finetuna_parsl.records import Evaluation

    def call(positions: np.ndarray) -> Evaluation:
        atoms = spec.to_atoms(positions)
        atoms.calc = EMT()
        return Evaluation(positions.copy(), float(atoms.get_potential_energy()),
                          np.array(atoms.get_forces(apply_constraint=False)))
    return call


def mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f}" if values else "-"


def row_settings(name: str) -> dict:
    """The row's LearnerSettings fields, every one (BASELINE with the row's change); 'bfgs' is the baseline's
    (the reference reads fmax, max_parent_calls, maxstep and alpha)."""
    from finetuna_parsl.records import LearnerSettings

    settings = {**BASELINE, **(ROW_NAMES[name].change if name != "bfgs" else {})}
    return asdict(LearnerSettings(**settings))  # ValueError or TypeError for a lever the learner no longer has


def as_now(stored: dict | None) -> dict | None:
    """A stored result's settings as the current learner reads them: removed levers at their as-now value dropped
    (REMOVED); None where a removed lever held another value (that result measured a lever that is gone)."""
    if stored is None:
        return None
    if any(name in stored and stored[name] != value for name, value in REMOVED.items()):
        return None
    return {name: value for name, value in stored.items() if name not in REMOVED}


def parse_rows(rows: str) -> list[Row]:
    """--rows: names from ROWS, comma-separated; empty means every row. One-line ClickException otherwise."""
    if not rows.strip():
        return list(ROWS)
    names = [n.strip() for n in rows.split(",") if n.strip()]
    if any(n.isdigit() for n in names):
        raise click.ClickException(
            f"--rows takes row names, not positions (positions were reused as levers were removed); "
            f"known names (python benchmarks/learner.py --list): {', '.join(ROW_NAMES)}")
    unknown = [n for n in names if n not in ROW_NAMES]
    if unknown:
        raise click.ClickException(f"unknown row name(s) {', '.join(unknown)}; known names "
                                   f"(python benchmarks/learner.py --list): {', '.join(ROW_NAMES)}")
    return [ROW_NAMES[n] for n in dict.fromkeys(names)]


def _run(job: tuple[str, dict, object]) -> dict:
    """One (row, system): parent calls, converged, final energy; 'bfgs' runs the reference."""
    from finetuna_parsl.learner.online import SurrogateDiverged, propose, record_parent
    from finetuna_parsl.learner.reference import run_reference
    from finetuna_parsl.learner.state import LearnerState
    from finetuna_parsl.records import OUTCOME_CONVERGED, LearnerSettings

    name, fields_, spec, world = job
    settings = LearnerSettings(**fields_)
    parent = _parent(world, spec)
    t0 = time.perf_counter()
    if name == "bfgs":
        ref = run_reference("bfgs", spec, parent, settings)
        points, converged, reasons = ref.parent_points, ref.outcome == OUTCOME_CONVERGED, {}
    else:
        state = LearnerState(spec, settings)
        reasons: dict[str, int] = {}
        try:
            while not state.done:
                proposal = propose(state, _SURROGATE)
                reasons[proposal.reason] = reasons.get(proposal.reason, 0) + 1
                state = record_parent(state, proposal, parent(proposal.positions))
        except SurrogateDiverged as exc:  # as a campaign records it: this system failed, the others go on
            reasons["failed"] = 1
            print(f"{name} {spec.system_id}: {exc}", flush=True)
        points, converged = state.parent_points, state.outcome == OUTCOME_CONVERGED
    return {"variant": name, "system": spec.system_id, "calls": len(points), "converged": converged,
            "energy": points[-1].energy, "reasons": reasons, "seconds": time.perf_counter() - t0,
            "settings": fields_}


def _list_rows() -> None:
    from finetuna_parsl.records import LearnerSettings

    assert {f.name for f in fields(LearnerSettings)} == set(BASELINE), "BASELINE must pin every learner field"
    print("baseline: " + ", ".join(f"{k}={v}" for k, v in BASELINE.items()))
    for row in ROWS:
        row_settings(row.name)  # every row still builds
        print(f"{row.name}: " + (", ".join(f"{k}={v}" for k, v in row.change.items()) or "(the baseline)")
              + f"  # {row.label}")


@click.command()
@click.option("--checkpoint", default="shipped", show_default=True)
@click.option("--ood", "n_ood", default=10, show_default=True, help="systems from the 'ood' source")
@click.option("--demo", "n_demo", default=6, show_default=True, help="systems from the 'demo' source")
@click.option("--world", type=click.Choice(["emt", "standin"]), default="emt", show_default=True,
              help="emt: the ood and demo systems with the EMT parent; standin: oc20-ood30 systems (--paper) with "
                   "SevenNet-0 as the parent (configs/oc20-paper.yaml's; needs the .[mlip] extra)")
@click.option("--paper", "paper_ids", default=",".join(STANDIN_SUBSET), show_default=True,
              help="--world standin: the oc20-ood30 system ids to relax, comma-separated")
@click.option("--workers", default=2, show_default=True)
@click.option("--rows", default="", help="only these rows, by name, comma-separated (default: all; see --list)")
@click.option("--list", "list_rows", is_flag=True, help="print each row's name and settings, and exit")
@click.option("--dry-run", is_flag=True, help="say what would run and what --results already holds, and exit")
@click.option("--results", type=click.Path(path_type=Path), default=None,
              help="one JSON line per finished (row, system); a rerun skips those already there "
                   "[default: runs/learner-ablation.jsonl; runs/learner-standin.jsonl for --world standin]")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="[default: benchmarks/learner.md; benchmarks/learner-standin.md for --world standin]")
def main(checkpoint: str, n_ood: int, n_demo: int, world: str, paper_ids: str, workers: int, rows: str,
         list_rows: bool, dry_run: bool, results: Path | None, output: Path | None) -> None:
    if list_rows:
        _list_rows()
        return
    variants = parse_rows(rows)
    from finetuna_parsl.systems import demo_systems, load_systems, ood_systems

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    standin = world == "standin"
    results = results or Path("runs/learner-standin.jsonl" if standin else "runs/learner-ablation.jsonl")
    output = output or Path(__file__).with_name("learner-standin.md" if standin else "learner.md")
    if standin:
        wanted = [i.strip() for i in paper_ids.split(",") if i.strip()]
        by_id = {s.system_id: s for s in load_systems("oc20-ood30")[0]}
        unknown = [i for i in wanted if i not in by_id]
        if unknown:
            raise click.ClickException(f"--paper: not oc20-ood30 systems: {', '.join(unknown)}")
        systems = [by_id[i] for i in wanted]
    else:
        systems = ood_systems(n_ood, seed=0) + demo_systems(n_demo, seed=0)
    settings = {name: row_settings(name) for name in ["bfgs"] + [row.name for row in variants]}
    jobs = [("bfgs", settings["bfgs"], s, world) for s in systems] + [(row.name, settings[row.name], s, world)
                                                                       for row in variants for s in systems]
    t0 = time.perf_counter()
    results_file = results
    from finetuna_parsl.surrogate.checkpoint import SHIPPED

    weights = SHIPPED if checkpoint == "shipped" else Path(checkpoint)
    digest = hashlib.sha1(weights.read_bytes()).hexdigest()[:12] if weights.is_file() else checkpoint
    # results of other weights, another world or another system set are not reused
    key = f"{digest} standin {','.join(s.system_id for s in systems)}" if standin else f"{digest} {n_ood} {n_demo}"
    stored = [r for r in map(json.loads, results_file.read_text().splitlines() if results_file.exists() else [])
              if r.get("key") == key and as_now(r.get("settings")) == settings.get(r.get("variant"))]  # nor other levers
    results = list({(r["variant"], r["system"]): r for r in stored}.values())  # one per (row, system)
    done = {(r["variant"], r["system"]) for r in results}
    todo = [j for j in jobs if (j[0], j[2].system_id) not in done]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} results already in {results_file}", flush=True)
    if dry_run:
        for name in settings:
            print(f"{name}: {sum(j[0] == name for j in todo)} of {len(systems)} systems to run")
        return
    results_file.parent.mkdir(parents=True, exist_ok=True)
    with mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(checkpoint,)) as pool, \
            results_file.open("a") as log:
        for i, r in enumerate(pool.imap_unordered(_run, todo), start=1):
            results.append({**r, "key": key})
            log.write(json.dumps(results[-1]) + "\n")
            log.flush()
            print(f"[{i}/{len(todo)} {time.perf_counter() - t0:.0f} s] {r['variant']} {r['system']}: "
                  f"{r['calls']} calls, converged {r['converged']}, E {r['energy']:.4f} eV", flush=True)
    ref = {r["system"]: r for r in results if r["variant"] == "bfgs"}
    command = "python benchmarks/learner.py " + " ".join(sys.argv[1:])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    title = "# Learner ablation in the stand-in world" if standin else "# Learner ablation in the EMT world"
    world_line = (f"> World: parent SevenNet-0 (sevenn 7net-0 through ASE), prior `{checkpoint}`." if standin else
                  f"> World: parent EMT (ASE), prior `{checkpoint}`.")
    lines = [title, "", world_line, "",
             f"Made by `{command.strip()}` on {platform.platform()} ({os.cpu_count()} cores), commit `{commit}`, "
             f"checkpoint `{checkpoint}`; results from {results_file} "
             f"({sum(r['seconds'] for r in results) / 60:.0f} CPU-minutes of relaxations, resumed runs included).",
             "",
             (f"Systems: {len(systems)} of the paper's `oc20-ood30` ({', '.join(s.system_id for s in systems)}); "
              "parent SevenNet-0 (`sevenn`'s 7net-0 through ASE, configs/oc20-paper.yaml's); baseline learner:"
              if standin else
              f"Systems: {n_ood} out-of-domain (`ood` source, seed 0) and {n_demo} in-domain (`demo`, seed 0); EMT "
              "parent; baseline learner:") + " k-steps, k=10, fine-tune on the newest point, "
             "backoff on, ASE's Hessian update (no damping), no anomaly guard (every learner setting is pinned: "
             "`python benchmarks/learner.py --list`). Each row changes the levers it names; its name (in "
             "backquotes) is what `--rows` takes. Ratio = mean over systems of online / BFGS parent calls "
             "(the paper's measure); worst = largest per-system ratio; accurate = parent-confirmed relaxed and "
             "final energy <= BFGS's + 0.02 eV.", "",
             f"BFGS: {sum(r['calls'] for r in ref.values())} parent calls in all.", "",
             "| lever | parent calls | ratio ood | ratio demo | ratio all | worst (system) | accurate "
             "| calls by reason |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in variants:
        done = [r for r in results if r["variant"] == row.name]
        ratios = {r["system"]: r["calls"] / ref[r["system"]]["calls"] for r in done}
        ood = [v for k, v in ratios.items() if k.startswith("ood")]
        demo = [v for k, v in ratios.items() if k.startswith("demo")]
        worst = max(ratios, key=ratios.get)
        accurate = sum(r["converged"] and r["energy"] <= ref[r["system"]]["energy"] + 0.02 for r in done)
        reasons: dict[str, int] = {}
        for r in done:
            for k, v in r["reasons"].items():
                reasons[k] = reasons.get(k, 0) + v
        lines.append(f"| `{row.name}`: {row.label} | {sum(r['calls'] for r in done)} | {mean(ood)} | {mean(demo)} | "
                     f"{mean(list(ratios.values()))} | {ratios[worst]:.2f} ({worst}) | {accurate}/{len(done)} | "
                     + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])) + " |")
    lines.append("")
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
