"""The campaign's HDF5 store: one file, one writer (the driver), readable with plain h5py.

Layout: /systems/<id>/ with the system as given, resizable steps/* datasets (one row per
records.Evaluation, surrogate or parent: positions, forces, energy, kind, uncertainty, scf_cycles, wall_s,
reason, fine_tune_s) and head/weights for resume; /runs holds one JSON line per run of the store (its config,
package versions, start time). Every append is flushed before the learner is allowed to use the point it holds.
"""

from __future__ import annotations

import datetime as _dt
import errno
import importlib.metadata
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .learner.bfgs import free_fmax
from .learner.state import LearnerState
from .records import (SOURCE_PARENT, STATUS_DONE, STATUS_FAILED, STATUS_PENDING, Evaluation, LearnerSettings,
                      SystemResult, SystemSpec)

if TYPE_CHECKING:
    from ase import Atoms

FORMAT_VERSION = 1
#: steps/kind: who answered a row (records.Evaluation.source, as stored).
KIND_SURROGATE = 0
KIND_PARENT = 1
#: steps/reason: a UTF-8 string per row, "" on surrogate rows (and on parent rows stored before reasons were kept).
STRING_DTYPE = h5py.string_dtype("utf-8")
#: Columns added to steps/ after the first stores were written: (name, dtype, value of the rows stored before).
LATER_COLUMNS = (("reason", STRING_DTYPE, ""), ("fine_tune_s", "f8", 0.0))
LOCKING_HINT = (
    "if this file is on a shared filesystem without file locking (Lustre, NFS, GPFS), "
    "set HDF5_USE_FILE_LOCKING=FALSE and try again"
)


class StoreError(RuntimeError):
    """The store could not be opened or does not hold what was asked for."""


class DiskFull(StoreError):
    """The store's filesystem has less than DISK_RESERVE_BYTES free: the store stopped growing, readable and
    complete up to its last write (HDF5 itself never meets ENOSPC, which can leave a file unreadable)."""


#: Free space (bytes) kept on the store's filesystem: a write that would start below it stops the run instead
#: (DiskFull), so the store's own metadata can still be flushed and closed.
DISK_RESERVE_BYTES = 64 * 2**20


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding `path` (the nearest existing folder above it that is one)."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    while not os.path.ismount(here) and here != here.parent:
        here = here.parent
    return here


def check_space(path: str | Path, reserve: int | None = None) -> None:
    """DiskFull (one line naming the filesystem) when the filesystem holding `path` has less than `reserve`
    (default DISK_RESERVE_BYTES) bytes free for this user; quiet where the OS cannot say."""
    reserve = DISK_RESERVE_BYTES if reserve is None else reserve
    try:
        stat = os.statvfs(Path(path).parent if not Path(path).is_dir() else path)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if free < reserve:
        raise DiskFull(
            f"the filesystem of store {path} ({mount_point(path)}) is full: {free / 2**20:.1f} MiB free, "
            f"{reserve / 2**20:.0f} MiB kept so the store stays readable; stopped with everything stored so far "
            "intact: free some space there and run the same command to resume")


def _versions() -> str:
    names = ("finetuna-parsl", "ase", "h5py", "numpy", "parsl", "torch", "fairchem-core")
    found = []
    for name in names:
        try:
            found.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return " ".join(found)


#: errno values of a lock the filesystem cannot take (no locking: the HDF5_USE_FILE_LOCKING case).
_NO_LOCKING = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP}
#: errno values of a lock another process holds.
_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}


def open_h5(path: str | Path, mode: str) -> h5py.File:
    """h5py.File(path, mode); any failure is a one-line StoreError saying why.

    A store another process holds (a reader holds a lock too) names that process where /proc tells; the
    HDF5_USE_FILE_LOCKING advice is given only when the filesystem cannot lock at all.
    """
    try:
        return h5py.File(path, mode)
    except (OSError, BlockingIOError) as exc:
        raise StoreError(describe_open_failure(path, mode, exc)) from exc


#: What HDF5 says of a file that is damaged (cut short by a full disk or a copy, a block overwritten), as opposed
#: to one that is locked, missing or unwritable.
_DAMAGE = re.compile(r"truncated file|signature|addr overflow|bad object header|bad local heap|bad global heap|"
                     r"bad symbol table|b-tree|checksum|can't decompress|inflate\(\) failed|bad version number|"
                     r"bad (?:heap|object) |address of object past end|invalid object header", re.I)
#: HDF5's word for a file lock; not "lock" inside "sblock" (the superblock in a truncated file's message).
_LOCK_WORD = re.compile(r"\block", re.I)


def is_damage(exc: BaseException) -> bool:
    """Whether an h5py error says the file itself is damaged (not locked, missing or unwritable)."""
    return bool(_DAMAGE.search(str(exc))) and not str(exc).startswith("store ")


def damage_message(path: str | Path, exc: BaseException, system_id: str | None = None) -> str:
    """One line: the store at `path` is damaged (where: system_id, when known), what HDF5 said, what to do."""
    text = " ".join(str(exc).split()).strip("'\"")
    where = f"system {system_id}: " if system_id else ""
    return (f"store {path} is damaged ({where}{text}); `finetuna-parsl salvage {path}` copies every readable "
            "system into a new store to resume from, or `run --restart` starts over")


@contextmanager
def naming_damage(path: str | Path, system_id: str | None = None) -> Iterator[None]:
    """Turn h5py's error for a damaged file (OSError, KeyError, RuntimeError ...) into a StoreError naming it."""
    try:
        yield
    except StoreError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        if not is_damage(exc):
            raise
        raise StoreError(damage_message(path, exc, system_id)) from exc


def describe_open_failure(path: str | Path, mode: str, exc: OSError) -> str:
    """One line: why h5py could not open `path` in `mode`."""
    text = " ".join(str(exc).split())
    found = re.search(r"errno = (\d+)", text)
    code = int(found.group(1)) if found else exc.errno
    if "file signature not found" in text:
        return f"cannot open store {path}: not an HDF5 file (file signature not found)"
    if is_damage(exc):
        return damage_message(path, exc)
    locked = bool(_LOCK_WORD.search(text))
    if locked and code in _NO_LOCKING:
        return f"cannot lock store {path}: the filesystem does not support file locking; {LOCKING_HINT}"
    if locked and (code in _HELD or code is None):
        holders = store_holders(path)
        who = ", ".join(f"pid {pid}: {cmd}" for pid, cmd in holders) if holders else "the OS does not say which"
        return (f"store {path} is held by another process ({who}); close it there (an open reader holds it too) "
                "or give another --output, then run again")
    return f"cannot open store {path} (mode {mode}): {text}"


def store_holders(path: str | Path) -> list[tuple[int, str]]:
    """(pid, command line) of the other processes that have `path` open, from /proc (empty where there is none)."""
    try:
        target = os.path.realpath(path)
        stat = os.stat(target)
    except OSError:
        return []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                try:
                    st = os.stat(fd)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == (stat.st_dev, stat.st_ino):
                    cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    found.append((int(entry.name), cmd[:120] or "?"))
                    break
        except OSError:  # gone, or not ours to look at
            continue
    return sorted(found)


def check_not_held(path: str | Path) -> None:
    """StoreError (one line) if another process has the store at `path` open; nothing if it is free, absent,
    or not a store at all (a broken file may still be deleted)."""
    if not Path(path).exists():
        return
    try:
        h5py.File(path, "a").close()
    except (OSError, BlockingIOError) as exc:
        message = describe_open_failure(path, "a", exc)
        if "held by another process" in message:
            raise StoreError(message) from exc


class CampaignStore:
    """Single-writer access to a campaign store. Use as a context manager.

    Opening it with a run_config starts a run of the store: the run's config text, method, package versions and
    start time are appended to /runs (read_runs), and the root attributes run_config / package_versions hold
    this run's (`created` stays the first run's). Raises StoreError when the file cannot be opened or is another
    format.
    """

    def __init__(self, path: str | Path, run_config: str = "", method: str = "online", keep_surrogate_every: int = 1):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_surrogate_every = keep_surrogate_every
        self.file = open_h5(self.path, "a")
        try:
            with naming_damage(self.path):
                self._start_run(run_config, method)
        except BaseException:
            self.file.close()
            raise
        self._rows: dict[str, SystemResult] = {}  # live_rows' cache, re-read only for systems changed since
        self._changed: set[str] = set(self.file["systems"].keys())

    def _start_run(self, run_config: str, method: str) -> None:
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
            _append_run(self.file, {"started": now, "method": method, "package_versions": versions,
                                    "run_config": run_config})
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
    YAML text the run used). A store written before runs were kept gives its one stored config, started at
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


def _final_positions(g: h5py.Group) -> np.ndarray | None:
    idx = np.flatnonzero(g["steps"]["kind"][()] == KIND_PARENT)
    return g["steps"]["positions"][idx[-1]] if len(idx) else None


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


def salvage(path: str | Path, out: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Copy every readable system of the (damaged) store at `path` into a new store `out`; returns (the system ids
    copied, [(system id, why it was not), ...]), both in stored order.

    A system is copied only when all of it reads (every dataset in full, every attribute), so the new store
    resumes like any other (the lost systems are simply run again). /runs and the root attributes are kept where
    readable, and root attribute `salvaged` says from where, when, and what was lost. A store cut short (a full
    disk, a copy that stopped) is read from a copy padded back to its recorded length, so whatever lies in the
    part that is left is found. `path` is never written. Written to `out`.part and renamed when complete.
    Raises StoreError when `out` exists or nothing of `path` can be opened.
    """
    path, out = Path(path), Path(out)
    if out.exists():
        raise StoreError(f"{out} exists; remove it or choose another name")
    part = out.with_name(out.name + ".part")
    padded = out.with_name(out.name + ".source.part")
    try:
        try:
            src = h5py.File(path, "r")
        except OSError as exc:
            found = re.search(r"stored_eof = (\d+)", str(exc))
            if not found:
                raise StoreError(describe_open_failure(path, "r", exc)) from exc
            import shutil

            shutil.copyfile(path, padded)  # never touch the damaged original
            os.truncate(padded, int(found.group(1)))  # sparse zeros where the lost tail was
            try:
                src = h5py.File(padded, "r")
            except OSError as again:
                raise StoreError(f"nothing of store {path} can be read: {' '.join(str(again).split())}") from again
        saved: list[str] = []
        lost: list[tuple[str, str]] = []
        with src, h5py.File(part, "w") as dst:
            for key, value in _readable_attrs(src.attrs).items():
                dst.attrs[key] = value
            if "runs" in src:
                try:
                    dst.create_dataset("runs", data=src["runs"][()], maxshape=(None,), chunks=(16,), dtype=STRING_DTYPE)
                except (OSError, KeyError, RuntimeError, ValueError):
                    pass
            dst.require_group("systems")
            try:
                names = list(src["systems"].keys())
            except (OSError, KeyError, RuntimeError, ValueError) as exc:
                raise StoreError(f"nothing of store {path} can be read: its list of systems is damaged "
                                 f"({' '.join(str(exc).split())})") from exc
            for system_id in names:
                why = _unreadable(src, system_id)
                if why is None:
                    src.copy(src["systems"][system_id], dst["systems"], name=system_id)
                    why = _unreadable(dst, system_id)  # what was copied reads back in full
                    if why is not None:
                        del dst["systems"][system_id]
                if why is None:
                    saved.append(system_id)
                else:
                    lost.append((system_id, why))
            dst.attrs["salvaged"] = json.dumps({
                "from": str(path), "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "copied": len(saved), "lost": {sid: why for sid, why in lost}})
            if "format_version" not in dst.attrs:
                dst.attrs["format_version"] = FORMAT_VERSION
        os.replace(part, out)
        return saved, lost
    finally:
        part.unlink(missing_ok=True)
        padded.unlink(missing_ok=True)


def _readable_attrs(attrs: h5py.AttributeManager) -> dict:
    found = {}
    for key in list(attrs.keys()):
        try:
            found[key] = attrs[key]
        except (OSError, KeyError, RuntimeError, ValueError, TypeError):
            pass
    return found


def _unreadable(f: h5py.File, system_id: str) -> str | None:
    """Why system `system_id` of `f` does not read in full (one line), or None when every part of it does."""
    problems: list[str] = []

    def visit(name: str, obj) -> None:
        try:
            dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                obj[()]
        except Exception as exc:  # noqa: BLE001 - any failure to read is the answer
            problems.append(f"{name}: {' '.join(str(exc).split())}")

    try:
        g = f["systems"][system_id]
        dict(g.attrs)
        g.visititems(visit)
        _system_row(system_id, g)
        for part in ("numbers", "initial_positions", "cell", "pbc", "fixed", "tags", "steps/energy", "steps/kind",
                     "steps/positions", "steps/forces"):
            if part not in g:
                problems.append(f"{part} missing")
    except Exception as exc:  # noqa: BLE001
        problems.append(" ".join(str(exc).split()))
    return "; ".join(problems[:3]) or None


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
    parent-confirmed structure: "none", "unknown" or the kinds joined by ",", learner.anomaly), source (the store file), method, parent
    (kind), and charge/spin where the system has them. Raises StoreError when the store cannot be opened.
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
