"""Resuming from a store: a stored relaxation's learner state, and the check that a run's systems are the
stored campaign's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ..learner.state import LearnerState
from ..records import SOURCE_PARENT, Evaluation, LearnerSettings, SystemSpec
from .errors import StoreError
from .layout import KIND_PARENT, read_runs, system_from_group
from .locks import open_h5


def state_from_group(g: h5py.Group, system_id: str, settings: LearnerSettings) -> LearnerState:
    steps = g["steps"]
    kind = steps["kind"][()]
    idx = np.flatnonzero(kind == KIND_PARENT)
    reasons = steps["reason"].asstr()[()] if "reason" in steps else None
    fine_tune = steps["fine_tune_s"][()] if "fine_tune_s" in steps else None
    points = [
        Evaluation(
            positions=steps["positions"][i],
            energy=float(steps["energy"][i]),
            forces=steps["forces"][i],
            source=SOURCE_PARENT,
            scf_cycles=int(steps["scf_cycles"][i]),
            wall_s=float(steps["wall_s"][i]),
            reason=str(reasons[i]) if reasons is not None else "",
            fine_tune_s=float(fine_tune[i]) if fine_tune is not None else 0.0,
        )
        for i in idx
    ]
    head, head_points = None, 0
    if "head" in g and "weights" in g["head"]:
        head = g["head"]["weights"][()].tobytes()
        head_points = int(g["head"].attrs["head_points"])
    return LearnerState(
        system=system_from_group(g, system_id),
        settings=settings,
        parent_points=points,
        head=head,
        head_points=min(head_points, len(points)),
        surrogate_steps=int(g.attrs["surrogate_steps"]),
    )


def _same_structure(a: SystemSpec, b: SystemSpec) -> bool:
    """Same atoms, cell, pbc, fixed atoms and initial positions (to 1e-8 A: as stored, float64)."""
    same = np.array_equal
    return (same(a.numbers, b.numbers) and same(np.asarray(a.pbc, bool), np.asarray(b.pbc, bool))
            and same(np.asarray(a.fixed, bool), np.asarray(b.fixed, bool))
            and np.allclose(a.cell, b.cell, rtol=0, atol=1e-8)
            and np.allclose(a.positions, b.positions, rtol=0, atol=1e-8))


def _ids(ids: Sequence[str], shown: int = 3) -> str:
    ids = list(ids)
    return ", ".join(ids[:shown]) + (f", ... ({len(ids)} in all)" if len(ids) > shown else "")


def check_same_campaign(path: str | Path, systems: Sequence[SystemSpec], choose: str = "") -> None:
    """Refuse (StoreError, one line) to run `systems` into the store at `path` when it belongs to another campaign.

    A store is one campaign's: a run may take a subset of its systems (`--systems 2`) or add to them (a longer
    list from the same source), but a system stored under the same id must be the same structure, and a run
    that both leaves out stored systems and brings new ones (other structures, `systems.source` changed in a
    copied config) is refused. `choose` is the advice on picking another store. No store at `path`: nothing to do.
    """
    path = Path(path)
    if not path.exists():
        return
    with open_h5(path, "r") as f:
        if "systems" not in f:
            return
        stored = {sid: system_from_group(g, sid) for sid, g in f["systems"].items()}
        runs = read_runs(f)
    if not stored:
        return
    import yaml

    try:
        source = ((yaml.safe_load(runs[-1]["run_config"]) or {}).get("systems") or {}).get("source", "demo")
        held = f"{len(stored)} systems from systems.source {source!r}"
    except (yaml.YAMLError, AttributeError, IndexError, KeyError):
        held = f"{len(stored)} systems"
    ids = [s.system_id for s in systems]
    changed = [s.system_id for s in systems if s.system_id in stored and not _same_structure(s, stored[s.system_id])]
    new = [sid for sid in ids if sid not in stored]
    left = [sid for sid in stored if sid not in set(ids)]
    if changed:
        why = f"this run's {_ids(changed)} are other structures under the same ids"
    elif new and left:
        why = f"this run's systems {_ids(new)} are not among them"
    else:
        return
    raise StoreError(f"store {path} belongs to another campaign: it holds {held} ({_ids(list(stored))}); {why}. "
                     f"{choose or 'Give this campaign its own store (campaign.output or --output)'}")
