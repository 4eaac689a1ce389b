"""Real filesystem faults for tests: a small filesystem that fills up (ENOSPC), a read-only one (EROFS).

Mounted where this process may (root, as in CI containers): a tmpfs of a given size, a read-only bind mount.
Where it may not, the full-disk case is skipped (nothing else gives a real ENOSPC) and a read-only folder falls
back to chmod 555 (enough for a user other than root).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return result.returncode == 0


@contextmanager
def small_filesystem(target: Path, size: str) -> Iterator[Path]:
    """`target` as a filesystem of `size` (tmpfs, e.g. '2m'), unmounted afterwards; skips the test where it cannot."""
    target.mkdir(parents=True, exist_ok=True)
    if not _mount(target, f"size={size}"):
        pytest.skip("needs root and tmpfs to make a real full filesystem")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


@contextmanager
def read_only_folder(target: Path) -> Iterator[Path]:
    """`target` (made if missing, its files kept) that nothing can be written into or deleted from: bind-mounted
    read-only onto itself (root), else chmod 555 (others, where that is enough)."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        bound = subprocess.run(["mount", "--bind", str(target), str(target)], capture_output=True).returncode == 0
        if bound and subprocess.run(["mount", "-o", "remount,ro,bind", str(target)],
                                    capture_output=True).returncode == 0:
            try:
                yield target
            finally:
                subprocess.run(["umount", "-l", str(target)], check=False)
            return
        if bound:
            subprocess.run(["umount", "-l", str(target)], check=False)
        pytest.skip("root writes into any folder, and a read-only bind mount is not allowed here")
    target.chmod(0o555)
    try:
        yield target
    finally:
        target.chmod(0o755)
