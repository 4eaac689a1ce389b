"""The live summary: a small JSON file beside a store that the campaign driver rewrites as it goes.

`finetuna-parsl inspect` reads it while a campaign holds the store (HDF5 lets no reader open a file a
writer holds), so looking at a running campaign never touches, locks or slows the store. Each write goes
to a temporary file in the same folder, then os.replace: a reader sees the old summary or the new one,
never half of one.

Layout: {"format": 1, "store", "method", "state" ("running", "finished", "interrupted", "stopped"), "pid",
"host", "written" (UTC, ISO 8601), "systems": [summary rows as store.read_system_row gives them
(records.SystemResult.as_dict), with NaN written as null]}.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

FORMAT = 1
SUFFIX = ".summary.json"
RUNNING = "running"
#: A running campaign rewrites its summary at least this often (s), changed or not.
HEARTBEAT_S = 60.0
#: A 'running' summary not rewritten for this long (s) is taken as left by a driver that died.
STALE_S = 5 * HEARTBEAT_S


def summary_path(store: str | Path) -> Path:
    """Where the live summary of `store` lives: runs/demo.h5 -> runs/demo.summary.json."""
    store = Path(store)
    return store.with_name(store.stem + SUFFIX)


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def publish(store: str | Path, method: str, state: str, rows: Sequence[Mapping]) -> Path:
    """Write the summary of `store` atomically (temporary file, then os.replace); returns its path.

    Raises OSError only if the folder cannot be written (the store beside it then cannot be either).
    """
    path = summary_path(store)
    payload = {
        "format": FORMAT, "store": str(Path(store).resolve()), "method": method, "state": state,
        "pid": os.getpid(), "host": socket.gethostname(),
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "systems": [_plain(dict(r)) for r in rows],  # a SystemResult's plain form (its mapping view)
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read(store: str | Path) -> dict | None:
    """The live summary of `store`, with null numbers back as NaN; None if there is none (or it is unreadable)."""
    path = summary_path(store)
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None
    for row in payload.get("systems", []):
        for key in ("final_energy", "final_fmax"):
            if row.get(key) is None:
                row[key] = math.nan
    return payload


def age_s(payload: dict) -> float:
    """Seconds since the summary was written (inf if it does not say)."""
    try:
        written = _dt.datetime.fromisoformat(str(payload["written"]))
    except (KeyError, ValueError):
        return math.inf
    return (_dt.datetime.now(_dt.timezone.utc) - written).total_seconds()


def writer_alive(payload: dict) -> bool:
    """True when the summary says 'running' and its writer is alive: a live process on this host, or, on
    another host (a driver in a batch job), a summary rewritten within STALE_S."""
    if payload.get("state") != RUNNING:
        return False
    if payload.get("host") != socket.gethostname():
        return age_s(payload) < STALE_S
    try:
        os.kill(int(payload["pid"]), 0)
    except PermissionError:  # there, but another user's
        return True
    except (ProcessLookupError, ValueError, KeyError, TypeError, OverflowError):
        return False
    return True
