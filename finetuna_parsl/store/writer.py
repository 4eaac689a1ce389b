"""The store's one writer (the campaign driver): CampaignStore opens a run of the store, adds systems, appends
evaluations (flushed before the learner may use them), and records status, anomalies and head weights."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..learner.bfgs import free_fmax
from ..learner.state import LearnerState
from ..records import STATUS_PENDING, Evaluation, LearnerSettings, SystemResult, SystemSpec
from .errors import StoreError, check_space, naming_damage
from .layout import (FORMAT_VERSION, KIND_PARENT, KIND_SURROGATE, _append_run, _final_positions,
                     _require_later_columns, read_runs, system_from_group)
from .locks import open_h5
from .reader import read_summary, read_system_row
from .resume import state_from_group


def _versions() -> str:
    names = ("finetuna-parsl", "ase", "h5py", "numpy", "parsl", "torch", "fairchem-core")
    found = []
    for name in names:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return " ".join(found)


class CampaignStore:
    """Single-writer access to a campaign store. Use as a context manager.

    Opening it with a run_config starts a run of the store: the run's config text, method, package versions, start
    time and `settings` (the effective settings the run used, JSON-able: runner.settings_change reads them) are
    appended to /runs (read_runs), and the root attributes run_config / package_versions hold
    this run's (`created` stays the first run's). Raises StoreError when the file cannot be opened or is another
    format.
    """

    def __init__(self, path: str | Path, run_config: str = "", method: str = "online", keep_surrogate_every: int = 1,
                 settings: dict | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_surrogate_every = keep_surrogate_every
        self.file = open_h5(self.path, "a")
        try:
            with naming_damage(self.path):
                self._start_run(run_config, method, settings)
        except BaseException:
            self.file.close()
            raise
        self._rows: dict[str, SystemResult] = {}  # live_rows' cache, re-read only for systems changed since
        self._changed: set[str] = set(self.file["systems"].keys())

    def _start_run(self, run_config: str, method: str, settings: dict | None = None) -> None:
        root = self.file.attrs
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if "format_version" not in root:
            root["format_version"] = FORMAT_VERSION
            root["method"] = method
            root["created"] = now
            root["package_versions"] = _versions()
            root["run_config"] = ""
        elif int(root["format_version"]) != FORMAT_VERSION:
            raise StoreError(f"{self.path}: store format {root['format_version']} is not {FORMAT_VERSION}")
        if run_config:  # a run of the store (opened without a config: read or repaired, not run)
            if "runs" not in self.file:  # a store from before runs were kept: its first run goes first
                for earlier in read_runs(self.file):
                    if earlier["run_config"]:
                        _append_run(self.file, earlier)
            versions = _versions()
            root["package_versions"] = versions
            root["run_config"] = run_config
            run = {"started": now, "method": method, "package_versions": versions, "run_config": run_config}
            _append_run(self.file, {**run, "settings": settings} if settings is not None else run)
        self.file.require_group("systems")

    def __enter__(self) -> "CampaignStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.file.id.valid:
            self.file.flush()
            self.file.close()

    # --- systems -----------------------------------------------------------------------------
    def has_system(self, system_id: str) -> bool:
        """Whether the store holds `system_id` (from this run or an earlier one)."""
        return system_id in self.file["systems"]

    def add_system(self, system: SystemSpec) -> None:
        """Record the system as given, with empty step datasets; no-op if it is already there.

        StoreError when the system id cannot name an HDF5 group (empty, or containing '/')."""
        if self.has_system(system.system_id):
            return
        check_space(self.path)
        if "/" in system.system_id or not system.system_id:
            raise StoreError(f"system id {system.system_id!r} cannot be an HDF5 group name")
        g = self.file["systems"].create_group(system.system_id)
        g["numbers"] = system.numbers
        g["cell"] = system.cell
        g["pbc"] = system.pbc
        g["fixed"] = system.fixed
        g["tags"] = system.tags
        g["initial_positions"] = system.positions
        for key in ("charge", "spin"):
            if getattr(system, key) is not None:
                g.attrs[key] = getattr(system, key)
        n = system.n_atoms
        steps = g.create_group("steps")
        steps.create_dataset("positions", (0, n, 3), maxshape=(None, n, 3), chunks=(16, n, 3), dtype="f8")
        steps.create_dataset("forces", (0, n, 3), maxshape=(None, n, 3), chunks=(16, n, 3), dtype="f8")
        for name, dtype in (("energy", "f8"), ("kind", "i1"), ("uncertainty", "f8"), ("scf_cycles", "i4"), ("wall_s", "f8")):
            steps.create_dataset(name, (0,), maxshape=(None,), chunks=(256,), dtype=dtype)
        _require_later_columns(steps)
        g.attrs.update(
            status=STATUS_PENDING, formula=system.formula, n_atoms=n, parent_calls=0, surrogate_steps=0,
            final_energy=np.nan, final_fmax=np.nan, error="", outcome="",
        )
        self._changed.add(system.system_id)
        self.file.flush()

    def set_status(self, system_id: str, status: str, error: str = "", outcome: str | None = None) -> None:
        """status: records.STATUS_* (where the system stands in the campaign); outcome: records.OUTCOME_* (how
        its relaxation ended), left as it is when None. KeyError for a system not in the store."""
        attrs = self.file["systems"][system_id].attrs
        attrs["status"] = status
        attrs["error"] = error
        if outcome is not None:
            attrs["outcome"] = outcome
        self._changed.add(system_id)
        self.file.flush()

    def add_warnings(self, system_id: str, messages: Sequence[str]) -> None:
        """Append warnings about the system (attribute 'warnings', one string each; repeats kept once)."""
        attrs = self.file["systems"][system_id].attrs
        have = [str(w) for w in attrs.get("warnings", [])]
        new = [m for m in dict.fromkeys(messages) if m not in have]
        if new:
            attrs["warnings"] = have + new
            self._changed.add(system_id)
            self.file.flush()

    def status(self, system_id: str) -> str:
        """records.STATUS_* of the system; KeyError for a system not in the store."""
        return str(self.file["systems"][system_id].attrs["status"])

    def parent_calls(self, system_id: str) -> int:
        """Parent calls stored for the system over every run of the store."""
        return int(self.file["systems"][system_id].attrs["parent_calls"])

    def reset_steps(self, system_id: str) -> None:
        """Empty a system's steps (a reference relaxation that is redone whole)."""
        g = self.file["systems"][system_id]
        for ds in g["steps"].values():
            ds.resize(0, axis=0)
        g.attrs.update(parent_calls=0, surrogate_steps=0, final_energy=np.nan, final_fmax=np.nan)
        for key in ("anomalies", "anomalies_unknown"):  # they were the old final structure's
            g.attrs.pop(key, None)
        self._changed.add(system_id)
        self.file.flush()

    def append_steps(self, system_id: str, rows: Sequence[Evaluation]) -> None:
        """Append evaluations in order, then flush. Surrogate rows are thinned by keep_surrogate_every: the Nth,
        2Nth, ... surrogate evaluation of the system is kept, counted over every run of the store (the count is
        the system's surrogate_steps attribute), so a resumed run thins exactly as an uninterrupted one.
        KeyError for a system not in the store."""
        check_space(self.path)  # before anything is written: the rows go in whole or not at all
        g = self.file["systems"][system_id]
        seen = int(g.attrs["surrogate_steps"])
        kept = []
        for row in rows:
            if not row.is_parent:
                seen += 1
                if self.keep_surrogate_every <= 0 or seen % self.keep_surrogate_every:
                    continue
            kept.append(row)
        if kept:
            steps = g["steps"]
            _require_later_columns(steps)  # a store written before a column existed gets it from here on
            start = steps["energy"].shape[0]
            stop = start + len(kept)
            columns = {
                "positions": np.stack([r.positions for r in kept]),
                "forces": np.stack([r.forces for r in kept]),
                "energy": np.array([r.energy for r in kept]),
                "kind": np.array([KIND_PARENT if r.is_parent else KIND_SURROGATE for r in kept]),
                "uncertainty": np.array([r.uncertainty for r in kept]),
                "scf_cycles": np.array([r.scf_cycles for r in kept]),
                "wall_s": np.array([r.wall_s for r in kept]),
                "reason": np.array([r.reason for r in kept], dtype=object),
                "fine_tune_s": np.array([r.fine_tune_s for r in kept]),
            }
            for name, values in columns.items():
                steps[name].resize(stop, axis=0)
                steps[name][start:stop] = values
        parents = [r for r in rows if r.is_parent]
        g.attrs["surrogate_steps"] = seen
        g.attrs["parent_calls"] = int(g.attrs["parent_calls"]) + len(parents)
        if parents:
            last = parents[-1]
            g.attrs["final_energy"] = last.energy
            g.attrs["final_fmax"] = free_fmax(last.forces, g["fixed"][()])
        self._changed.add(system_id)
        self.file.flush()

    def set_anomalies(self, system_id: str, anomalies: Sequence[str] | None, unknown: str = "") -> None:
        """Record the anomaly flags of the system's last parent-confirmed structure (learner.anomaly.detect):
        attribute 'anomalies' (the kinds joined by ",", "" for none) and 'anomalies_unknown' (why they cannot be
        known, then 'anomalies' is ""). KeyError for a system not in the store."""
        attrs = self.file["systems"][system_id].attrs
        attrs["anomalies"] = ",".join(anomalies or ())
        attrs["anomalies_unknown"] = "" if anomalies is not None else (unknown or "unknown")
        self._changed.add(system_id)
        self.file.flush()

    def has_anomalies(self, system_id: str) -> bool:
        """Whether the system's anomaly flags are recorded (stores written before they were kept have none)."""
        return "anomalies" in self.file["systems"][system_id].attrs

    def system(self, system_id: str) -> SystemSpec:
        """The system as stored (initial positions, tags, fixed atoms). KeyError for a system not in the store."""
        return system_from_group(self.file["systems"][system_id], system_id)

    def final_positions(self, system_id: str) -> np.ndarray | None:
        """Positions (n, 3; A) of the system's last parent call, None before any. KeyError if not in the store."""
        return _final_positions(self.file["systems"][system_id])

    def save_head(self, system_id: str, head: bytes | None, head_points: int) -> None:
        """Latest fine-tuned head weights, so a resumed relaxation need not fine-tune again."""
        if head is None:
            return
        check_space(self.path)
        g = self.file["systems"][system_id].require_group("head")
        if "weights" in g:
            del g["weights"]
        g["weights"] = np.frombuffer(head, dtype=np.uint8)
        g.attrs["head_points"] = head_points
        self.file.flush()

    # --- reading -----------------------------------------------------------------------------
    def summary(self) -> list[SystemResult]:
        """One read_system_row per stored system (energies eV, fmax eV/A, times s)."""
        return read_summary(self.file)

    def has_changes(self) -> bool:
        """Whether a system changed since the last live_rows() call."""
        return bool(self._changed)

    def live_rows(self) -> list[SystemResult]:
        """read_summary's rows of every system, re-reading only the systems changed since the last call
        (cheap enough to call after every parent call of a large campaign)."""
        systems = self.file["systems"]
        for system_id in self._changed:
            self._rows[system_id] = read_system_row(system_id, systems[system_id])
        self._changed.clear()
        return [self._rows[system_id] for system_id in systems.keys()]

    def load_state(self, system_id: str, settings: LearnerSettings) -> LearnerState:
        """The learner state of a stored relaxation, for resume: its parent Evaluations in call order (with their
        reasons and fine-tuning times), the latest head and how many points it was fine-tuned on, and the
        surrogate steps taken, under `settings` (this run's). The outcome is left running: the caller settles it
        (learner.online.settle). KeyError for a system not in the store."""
        with naming_damage(self.path, system_id):
            return state_from_group(self.file["systems"][system_id], system_id, settings)
