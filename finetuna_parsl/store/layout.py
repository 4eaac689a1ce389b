"""The store's layout on disk, shared by the writer and the readers.

/systems/<id>/ with the system as given, resizable steps/* datasets (one row per records.Evaluation, surrogate
or parent: positions, forces, energy, kind, uncertainty, scf_cycles, wall_s, reason, fine_tune_s) and
head/weights for resume; /runs holds one JSON line per run of the store (its config, package versions, start
time); the system's attributes hold where it stands (status, outcome, counts, final energy and fmax, error,
warnings, anomalies).
"""

from __future__ import annotations

import json

import h5py
import numpy as np

from ..records import SystemSpec


FORMAT_VERSION = 1
#: steps/kind: who answered a row (records.Evaluation.source, as stored).
KIND_SURROGATE = 0
KIND_PARENT = 1
#: steps/reason: a UTF-8 string per row, "" on surrogate rows (and on parent rows stored before reasons were kept).
STRING_DTYPE = h5py.string_dtype("utf-8")
#: Columns added to steps/ after the first stores were written: (name, dtype, value of the rows stored before).
LATER_COLUMNS = (("reason", STRING_DTYPE, ""), ("fine_tune_s", "f8", 0.0))


def _require_later_columns(steps: h5py.Group) -> None:
    """The LATER_COLUMNS of steps/, created as long as the other columns where missing (their value for the rows
    stored before they existed)."""
    n = steps["energy"].shape[0]
    for name, dtype, before in LATER_COLUMNS:
        if name in steps:
            continue
        ds = steps.create_dataset(name, (n,), maxshape=(None,), chunks=(256,), dtype=dtype)
        if n:
            ds[:] = np.array([before] * n, dtype=object if dtype is STRING_DTYPE else dtype)


def _append_run(f: h5py.File, run: dict) -> None:
    """One JSON line for this run of the store at the end of /runs (created on first use)."""
    if "runs" not in f:
        f.create_dataset("runs", (0,), maxshape=(None,), chunks=(16,), dtype=STRING_DTYPE)
    runs = f["runs"]
    runs.resize(runs.shape[0] + 1, axis=0)
    runs[-1] = json.dumps(run)
    f.flush()


def read_runs(f: h5py.File) -> list[dict]:
    """Every run of the store, oldest first: started (UTC, ISO 8601), method, package_versions, run_config (the
    YAML text the run used) and, from 2026-12-05, settings (the effective learner/surrogate settings its method
    used: campaign.runner.effective_settings). A store written before runs were kept gives its one stored config, started at
    `created`."""
    if "runs" in f:
        return [json.loads(line) for line in f["runs"].asstr()[()]]
    a = f.attrs
    return [{"started": str(a.get("created", "")), "method": str(a.get("method", "")),
             "package_versions": str(a.get("package_versions", "")), "run_config": str(a.get("run_config", ""))}]


def system_from_group(g: h5py.Group, system_id: str) -> SystemSpec:
    return SystemSpec(
        system_id=system_id,
        numbers=g["numbers"][()],
        positions=g["initial_positions"][()],
        cell=g["cell"][()],
        pbc=g["pbc"][()],
        fixed=g["fixed"][()],
        tags=g["tags"][()],
        charge=int(g.attrs["charge"]) if "charge" in g.attrs else None,
        spin=int(g.attrs["spin"]) if "spin" in g.attrs else None,
    )


def _final_positions(g: h5py.Group) -> np.ndarray | None:
    idx = np.flatnonzero(g["steps"]["kind"][()] == KIND_PARENT)
    return g["steps"]["positions"][idx[-1]] if len(idx) else None
