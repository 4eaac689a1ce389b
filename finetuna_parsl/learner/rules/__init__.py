"""Query rules by name: when the learner pays for a parent call besides "the surrogate says relaxed".

A rule is one function, registered with @query_rule("name"): it sees the learner's settings and the step just
taken (records.SurrogateStep) and says whether to call the parent now; the call's reason is the rule's name.
To add one, put a module with that function in this folder: every module here is imported, after the built-in
rules (builtin.py), when finetuna_parsl is imported, and the name is then a valid `learner.query` (config,
bench's methods, the learner). Every rule also calls the parent when the surrogate says relaxed or has
stalled, and stops at backoff's cap (learner/query.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from ...records import QUERY_RULES, LearnerSettings, QueryRule, SurrogateStep

Fires = Callable[[LearnerSettings, SurrogateStep], bool]


def query_rule(name: str, *, ceiling: Callable[[LearnerSettings], int | None] | None = None,
               needs_ensemble: bool = False) -> Callable[[Fires], Fires]:
    """Decorator: register the decorated `fires(settings, step) -> bool` as the query rule `name`.

    ceiling(settings): the longest segment the rule allows (k-steps: k), which backoff shrinks and grows back to;
    None: no ceiling. needs_ensemble: the rule reads the surrogate ensemble's spread (bench then runs it with
    at least 3 heads). ValueError when `name` is empty or already registered by another function.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a query rule needs a name, got {name!r}")

    def register(fires: Fires) -> Fires:
        known = QUERY_RULES.get(name)
        if known is not None and known.fires is not fires:
            raise ValueError(f"query rule {name!r} is already registered ({known.fires.__module__})")
        QUERY_RULES[name] = QueryRule(name=name, fires=fires, ceiling=ceiling, needs_ensemble=needs_ensemble)
        return fires

    return register


def get_rule(name: str) -> QueryRule:
    """The query rule registered as `name`; ValueError listing the known names when there is none."""
    try:
        return QUERY_RULES[name]
    except KeyError:
        raise ValueError(f"unknown query rule {name!r}; known: {', '.join(QUERY_RULES)}") from None


def rule_names() -> tuple[str, ...]:
    """The registered query rules' names, built-in ones first."""
    return tuple(QUERY_RULES)


def _load_rule_modules() -> None:
    """Import builtin.py, then every other module of this folder (each registers its rules)."""
    importlib.import_module(f"{__name__}.builtin")
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        if module != "builtin" and not module.startswith("_"):
            importlib.import_module(f"{__name__}.{module}")


_load_rule_modules()

__all__ = ["query_rule", "get_rule", "rule_names"]
