"""A damaged store: salvage copies every system that reads in full into a new store to resume from."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path

import h5py

from .errors import StoreError
from .layout import FORMAT_VERSION, STRING_DTYPE
from .locks import describe_open_failure
from .reader import _system_row


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
