"""Parent kinds by name: the built-in ones, and those other packages add through the entry-point group
`finetuna_parsl.parents`.

A lab or site package ships its own parent with one ParentSession subclass (parents/base.py) and, in its
pyproject.toml:

    [project.entry-points."finetuna_parsl.parents"]
    mycode = "mylab.parent:MyCodeSession"

after which `parent.kind: mycode` is accepted by the run config and built by make_parent, as the built-in kinds
are. A built-in name wins over an entry point of the same name. Classes are imported on first use, so an engine
that is not installed (gpaw) only matters when its kind is asked for.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import ParentSession, ParentSetupError

#: The entry-point group other packages register parent kinds in ("kind = module:Class").
ENTRY_POINT_GROUP = "finetuna_parsl.parents"

#: The built-in kinds: kind -> "module:class".
BUILTIN_PARENTS: dict[str, str] = {
    "emt": "finetuna_parsl.parents.emt:EMTSession",
    "vasp": "finetuna_parsl.parents.vasp:VaspInteractiveSession",
    "gpaw": "finetuna_parsl.parents.gpaw:GPAWSession",
    "ase": "finetuna_parsl.parents.ase:ASESession",
}


def parent_kinds() -> dict[str, str]:
    """Every parent kind known here: kind -> "module:class", the built-in ones first, then the installed
    packages' entry points (group finetuna_parsl.parents), read now. Raises nothing."""
    kinds = dict(BUILTIN_PARENTS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        kinds.setdefault(point.name, point.value)
    return kinds


def parent_class(kind: str) -> type[ParentSession]:
    """The session class registered for `kind`.

    ParentSetupError when the kind is unknown (the message lists the known ones), when its module cannot be
    imported, or when what it names is not a ParentSession subclass.
    """
    kinds = parent_kinds()
    try:
        target = kinds[kind]
    except KeyError:
        raise ParentSetupError(f"unknown parent kind {kind!r}; known: {', '.join(sorted(kinds))}") from None
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ParentSetupError(f"parent kind {kind!r} is not available here: {exc}") from exc
    except AttributeError:
        raise ParentSetupError(f"parent kind {kind!r}: {module} has no {name}") from None
    if not (isinstance(cls, type) and issubclass(cls, ParentSession)):
        raise ParentSetupError(f"parent kind {kind!r}: {target} is not a ParentSession subclass")
    return cls
