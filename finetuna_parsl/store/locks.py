"""Opening a store: h5py.File with every failure as one line, and the lock forensics behind it (which process
holds the store, whether the filesystem can lock at all)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import h5py

from .errors import StoreError, damage_message, is_damage


LOCKING_HINT = (
    "if this file is on a shared filesystem without file locking (Lustre, NFS, GPFS), "
    "set HDF5_USE_FILE_LOCKING=FALSE and try again"
)


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


#: HDF5's word for a file lock; not "lock" inside "sblock" (the superblock in a truncated file's message).
_LOCK_WORD = re.compile(r"\block", re.I)


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
