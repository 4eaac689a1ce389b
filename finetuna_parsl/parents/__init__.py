"""Parent sessions (the expensive truth): EMT, VASP interactive, warm GPAW and any ASE calculator behind one
interface; other packages add kinds through the entry-point group finetuna_parsl.parents (parents/registry.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import ParentError, ParentSession, ParentSetupError
from .emt import EMTSession
from .registry import BUILTIN_PARENTS, ENTRY_POINT_GROUP, parent_class, parent_kinds


def make_parent(kind: str, workdir: str | Path | None = None, **options: Any) -> ParentSession:
    """A new, unstarted parent session of `kind`.

    ParentSetupError for an unknown or unavailable kind, and for options the session does not take (an unknown
    name, a value of the wrong type): retrying cannot help with either.
    """
    cls = parent_class(kind)
    try:
        return cls(workdir=workdir, **options)
    except (TypeError, ValueError) as exc:
        raise ParentSetupError(f"{kind} parent: bad parent.options: {exc}") from exc


def check_systems(kind: str, options: Mapping[str, Any], systems: Sequence[Any]) -> tuple[list, list[tuple[str, str]]]:
    """Split `systems` (SystemSpec) into those the `kind` parent set up with `options` can compute and the rest.

    Returns (usable, [(system_id, one-line reason), ...]), both in input order. Raises ParentSetupError for an
    unknown or unavailable kind.
    """
    cls = parent_class(kind)
    usable, unusable = [], []
    for system in systems:
        reason = cls.unusable(system, options)
        if reason is None:
            usable.append(system)
        else:
            unusable.append((system.system_id, " ".join(str(reason).split())))
    return usable, unusable


__all__ = ["check_systems", "ParentError", "ParentSetupError", "ParentSession", "EMTSession", "BUILTIN_PARENTS",
           "ENTRY_POINT_GROUP", "make_parent", "parent_class", "parent_kinds"]
