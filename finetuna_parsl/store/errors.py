"""What goes wrong with a store file: the store's errors, a full disk (checked before each write), and HDF5's
errors for a damaged file turned into one line that says what to do."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


#: What HDF5 says of a file that is damaged (cut short by a full disk or a copy, a block overwritten), as opposed
#: to one that is locked, missing or unwritable.
_DAMAGE = re.compile(r"truncated file|signature|addr overflow|bad object header|bad local heap|bad global heap|"
                     r"bad symbol table|b-tree|checksum|can't decompress|inflate\(\) failed|bad version number|"
                     r"bad (?:heap|object) |address of object past end|invalid object header", re.I)


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
