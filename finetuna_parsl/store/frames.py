"""Export: a store's frames as ASE Atoms (iter_frames), written to extxyz, traj, ASE db or fairchem's aselmdb."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import StoreError, naming_damage
from .layout import KIND_PARENT
from .locks import open_h5
from .reader import _system_row

if TYPE_CHECKING:
    from ase import Atoms


#: format -> what it is. aselmdb: ASE's LMDB backend (the ase_db_backends package fairchem installs), which
#: fairchem's AseDBDataset reads directly for training.
EXPORT_FORMATS = {"extxyz": "extended XYZ", "traj": "ASE trajectory", "db": "ASE database (SQLite)",
                  "aselmdb": "ASE LMDB database, fairchem's AseDBDataset"}


def _parent_kind(run_config: str) -> str:
    import yaml

    try:
        parent = (yaml.safe_load(run_config) or {}).get("parent") or {}
        return str(parent.get("kind", "emt"))
    except (yaml.YAMLError, AttributeError):
        return ""


def iter_frames(path: str | Path, parent_only: bool = True, final: bool = False) -> Iterator["Atoms"]:
    """Stored frames as ASE Atoms with a SinglePointCalculator (energy in eV, forces in eV/A, as the parent or
    surrogate gave them) and FixAtoms and tags as stored.

    final: only the last parent-labelled frame of each system (its last parent-confirmed structure; a system
    without parent calls gives none). atoms.info carries the metadata: system_id, step (row in steps/),
    kind (parent|surrogate), parent_call (0-based index among the system's parent calls, -1 for surrogate
    frames), reason, status and outcome of the system (its records.SystemResult), anomalies (of its last
    parent-confirmed structure: "none", "unknown" or the kinds joined by ",", learner.anomaly), source (the store
    file), method, parent (kind), and charge/spin where the system has them. Raises StoreError when the store
    cannot be opened.
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    with open_h5(path, "r") as f, naming_damage(path):
        method = str(f.attrs.get("method", "online"))
        parent = _parent_kind(str(f.attrs.get("run_config", "")))
        for system_id, g in f["systems"].items():
            steps = g["steps"]
            kind = steps["kind"][()]
            fixed = g["fixed"][()]
            reasons = steps["reason"].asstr()[()] if "reason" in steps else np.array([""] * len(kind), dtype=object)
            parent_index = np.cumsum(kind == KIND_PARENT) - 1
            rows = np.flatnonzero(kind == KIND_PARENT) if (parent_only or final) else np.arange(len(kind))
            if final:
                rows = rows[-1:]
            extra = {key: int(g.attrs[key]) for key in ("charge", "spin") if key in g.attrs}
            result = _system_row(system_id, g)
            anomalies = "unknown" if result.anomalies is None else (",".join(result.anomalies) or "none")
            for i in rows:
                atoms = Atoms(numbers=g["numbers"][()], positions=steps["positions"][i], cell=g["cell"][()],
                              pbc=g["pbc"][()], tags=g["tags"][()])
                if fixed.any():
                    atoms.set_constraint(FixAtoms(mask=fixed))
                atoms.calc = SinglePointCalculator(atoms, energy=float(steps["energy"][i]), forces=steps["forces"][i])
                is_parent = kind[i] == KIND_PARENT
                atoms.info.update(
                    system_id=system_id, step=int(i), kind="parent" if is_parent else "surrogate",
                    parent_call=int(parent_index[i]) if is_parent else -1, reason=str(reasons[i]),
                    status=result.status, outcome=result.outcome,
                    anomalies=anomalies, source=Path(path).name, method=method, parent=parent, **extra,
                )
                yield atoms


def export(path: str | Path, out: str | Path, fmt: str, parent_only: bool = True, final: bool = False) -> int:
    """Write the store's frames (iter_frames) to `out` in `fmt` (EXPORT_FORMATS); returns the frame count.

    db and aselmdb rows carry the metadata as key-value pairs (for `ase db` queries) and in row.data, with
    fairchem's sid (system id) and fid (parent call index), which AseDBDataset puts in atoms.info and the
    data's sid. Raises StoreError for an unknown format, an existing `out`, a store that cannot be opened or read,
    or an `out` that cannot be written (full disk, read-only folder); `out` is then not there at all.
    """
    if fmt not in EXPORT_FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists():
        raise StoreError(f"{out} exists; remove it or choose another name")
    if fmt == "aselmdb" and "aselmdb" not in out.name:
        raise StoreError(f"{out}: an aselmdb export's file name must contain 'aselmdb' (ase.db and fairchem "
                         f"pick the LMDB backend by it), e.g. {out.stem}.aselmdb")
    # written beside `out` under a temp name (its suffix kept: ase.db picks the backend by it) and renamed when
    # complete, so a failed export (a damaged store, a full disk) leaves nothing that blocks the next one
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.part{out.suffix}")
    try:
        count = _write_frames(iter_frames(path, parent_only, final), tmp, fmt)
        os.replace(tmp, out)
    except OSError as exc:
        raise StoreError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-lock")):  # LMDB's lock file beside its database
            try:
                leftover.unlink(missing_ok=True)
            except OSError:  # a read-only folder holds none
                pass
    return count


def _write_frames(frames: Iterator["Atoms"], out: Path, fmt: str) -> int:
    """Write `frames` to `out` in `fmt`; the frame count. extxyz leaves out empty strings (a surrogate frame's
    reason, a running or failed system's outcome): ASE's extxyz cannot write one that reads back (`outcome=`
    swallows the next key), so such a key is absent where its value is ""."""
    count = 0
    if fmt in ("db", "aselmdb"):
        from ase.db import connect

        with connect(str(out)) as db:
            for atoms in frames:
                info = dict(atoms.info)
                data = {"sid": info["system_id"], "fid": info["parent_call"], **info}
                db.write(atoms, key_value_pairs=info, data=data)
                count += 1
        return count
    from ase.io import Trajectory, write

    if fmt == "traj":
        with Trajectory(str(out), "w") as traj:
            for atoms in frames:
                traj.write(atoms)
                count += 1
        return count
    with open(out, "w") as handle:
        for atoms in frames:
            atoms.info = {key: value for key, value in atoms.info.items() if not (isinstance(value, str) and not value)}
            write(handle, atoms, format="extxyz")
            count += 1
    return count
