"""Reading a store: each system's summary row (records.SystemResult), and the per-call figures the bench and
the plots read (reasons and fmax of parent calls, final positions, parent energies)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import h5py
import numpy as np

from ..learner.bfgs import free_fmax
from ..records import STATUS_DONE, STATUS_FAILED, SystemResult
from .errors import naming_damage
from .layout import KIND_PARENT, _final_positions
from .locks import open_h5


#: Why a row's anomalies are unknown when the store has no flags for it.
NOT_RECORDED = ("not recorded: the store was written before anomaly flags were kept (running the same command "
                "again adds them)")
NOT_CHECKED = "not checked until the relaxation ends"
NO_PARENT_STRUCTURE = "no parent-confirmed structure"


def _anomalies(a, status: str, parent_calls: int) -> tuple[list[str] | None, str]:
    """(anomaly kinds, or None when unknown; why unknown) from a system's attributes."""
    if "anomalies" in a:
        unknown = str(a.get("anomalies_unknown", ""))
        return (None, unknown) if unknown else ([k for k in str(a["anomalies"]).split(",") if k], "")
    if not parent_calls:
        return None, NO_PARENT_STRUCTURE
    return None, NOT_CHECKED if status not in (STATUS_DONE, STATUS_FAILED) else NOT_RECORDED


def read_system_row(system_id: str, g: h5py.Group) -> SystemResult:
    """One system's summary row (records.SystemResult): status, outcome, parent calls (total and by reason;
    "" = not recorded), surrogate steps, final parent energy (eV) and fmax over free atoms (eV/A), error and
    warnings in full, SCF cycles, parent wall time (s), the learner's fine-tuning time before those calls (s),
    and the anomaly flags of the last parent-confirmed structure (learner.anomaly: the kinds, () for none, None
    when unknown, with anomalies_unknown saying why)."""
    with naming_damage(g.file.filename, system_id):
        return _system_row(system_id, g)


def _system_row(system_id: str, g: h5py.Group) -> SystemResult:
    a = g.attrs
    steps = g["steps"]
    parent = steps["kind"][()] == KIND_PARENT
    reasons = steps["reason"].asstr()[()][parent].tolist() if "reason" in steps else [""] * int(parent.sum())
    anomalies, unknown = _anomalies(a, str(a["status"]), int(a["parent_calls"]))
    return SystemResult(
        system_id=system_id,
        status=str(a["status"]),
        outcome=str(a.get("outcome", "")),
        formula=str(a["formula"]),
        n_atoms=int(a["n_atoms"]),
        parent_calls=int(a["parent_calls"]),
        parent_calls_by_reason=dict(Counter(reasons)),
        surrogate_steps=int(a["surrogate_steps"]),
        final_energy=float(a["final_energy"]),
        final_fmax=float(a["final_fmax"]),
        error=str(a["error"]),
        warnings=tuple(str(w) for w in a.get("warnings", [])),
        scf_cycles=int(steps["scf_cycles"][()][parent].sum()),
        parent_wall_s=float(steps["wall_s"][()][parent].sum()),
        fine_tune_s=float(steps["fine_tune_s"][()][parent].sum()) if "fine_tune_s" in steps else 0.0,
        anomalies=None if anomalies is None else tuple(anomalies),
        anomalies_unknown=unknown,
    )


def read_summary(f: h5py.File) -> list[SystemResult]:
    """Per-system summary rows (read_system_row) from an open store (any mode); StoreError naming the system
    where the store is damaged."""
    with naming_damage(f.filename):
        return [read_system_row(system_id, g) for system_id, g in f["systems"].items()]


def load_summary(path: str | Path) -> list[SystemResult]:
    """Read-only per-system summary of a store on disk."""
    with open_h5(path, "r") as f:
        return read_summary(f)


def read_parent_calls(f: h5py.File) -> dict[str, tuple[list[str], list[float]]]:
    """Per system, in call order: why each parent call was made ("" where not recorded) and the parent's
    fmax over free atoms there (eV/A)."""
    calls = {}
    for system_id, g in f["systems"].items():
        steps = g["steps"]
        idx = np.flatnonzero(steps["kind"][()] == KIND_PARENT)
        reasons = steps["reason"].asstr()[()][idx].tolist() if "reason" in steps else [""] * len(idx)
        fixed = g["fixed"][()]
        forces = steps["forces"][()][idx] if len(idx) else []
        calls[system_id] = (reasons, [free_fmax(row, fixed) for row in forces])
    return calls


def load_parent_calls(path: str | Path) -> dict[str, tuple[list[str], list[float]]]:
    """read_parent_calls of a store on disk (read-only)."""
    with open_h5(path, "r") as f, naming_damage(path):
        return read_parent_calls(f)


def load_final_positions(path: str | Path) -> dict[str, np.ndarray]:
    """Positions (n, 3; A) of each system's last parent call (its last parent-confirmed structure), for the
    systems that have one."""
    with open_h5(path, "r") as f:
        found = {sid: _final_positions(g) for sid, g in f["systems"].items()}
    return {sid: p for sid, p in found.items() if p is not None}


def load_parent_energies(path: str | Path) -> dict[str, np.ndarray]:
    """Parent energies in call order, per system (for energy-vs-parent-call plots)."""
    with open_h5(path, "r") as f, naming_damage(path):
        return {sid: g["steps/energy"][()][g["steps/kind"][()] == KIND_PARENT] for sid, g in f["systems"].items()}
