"""Parent sessions (the expensive truth): EMT, VASP interactive, warm GPAW and any ASE calculator behind one
interface."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import ParentError, ParentSession, ParentSetupError
from .emt import EMTSession

#: kind -> "module:class"; imported on first use so a missing optional engine (gpaw) only matters when asked for.
PARENT_KINDS: dict[str, str] = {
    "emt": "finetuna_parsl.parents.emt:EMTSession",
    "vasp": "finetuna_parsl.parents.vasp:VaspInteractiveSession",
    "gpaw": "finetuna_parsl.parents.gpaw:GPAWSession",
    "ase": "finetuna_parsl.parents.ase:ASESession",
}


def parent_class(kind: str) -> type[ParentSession]:
    """The session class registered for `kind`; a clear ParentSetupError when unknown or not importable."""
    try:
        target = PARENT_KINDS[kind]
    except KeyError:
        raise ParentSetupError(f"unknown parent kind {kind!r}; known: {', '.join(sorted(PARENT_KINDS))}") from None
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ParentSetupError(f"parent kind {kind!r} is not available here: {exc}") from exc


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


__all__ = ["check_systems", "ParentError", "ParentSetupError", "ParentSession", "EMTSession", "PARENT_KINDS", "make_parent", "parent_class"]
