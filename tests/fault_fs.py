"""Real filesystem faults for tests: a small filesystem that fills up (ENOSPC), a read-only one (EROFS).

Mounted as tmpfs where this process may (root, as in CI containers); where it may not, the callers skip the
full-disk case (nothing else gives a real ENOSPC) and a read-only folder falls back to chmod 555 (not root).
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
    """`target` that nothing can be written into: a read-only tmpfs (root), else chmod 555 (others)."""
    target.mkdir(parents=True, exist_ok=True)
    if _mount(target, "ro,size=64k"):
        try:
            yield target
        finally:
            subprocess.run(["umount", "-l", str(target)], check=False)
        return
    if os.geteuid() == 0:
        pytest.skip("root can write into any folder, and mounting a read-only filesystem is not allowed here")
    target.chmod(0o555)
    try:
        yield target
    finally:
        target.chmod(0o755)
