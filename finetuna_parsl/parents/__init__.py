"""Parent sessions (the expensive truth): EMT now; VASP interactive and warm GPAW follow the same interface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ParentError, ParentResult, ParentSession
from .emt import EMTSession

PARENT_KINDS: dict[str, type[ParentSession]] = {"emt": EMTSession}


def make_parent(kind: str, workdir: str | Path | None = None, **options: Any) -> ParentSession:
    """A new, unstarted parent session of `kind`."""
    try:
        cls = PARENT_KINDS[kind]
    except KeyError:
        raise ParentError(f"unknown parent kind {kind!r}; known: {', '.join(sorted(PARENT_KINDS))}") from None
    return cls(workdir=workdir, **options)


__all__ = ["ParentError", "ParentResult", "ParentSession", "EMTSession", "make_parent"]
