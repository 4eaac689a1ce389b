"""The import graph keeps the layers the package docstring draws: records at the bottom; learner, parents,
surrogate and store above it; apps and campaign (the only Parsl users) above them; only the store touches
h5py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "finetuna_parsl"

#: layer (first dotted part below the package) -> the layers it may import from. Absent: unrestricted (the top).
ALLOWED = {
    "records": set(),
    "learner": {"records"},
    "parents": {"records"},
    "surrogate": {"records", "systems"},  # systems: pretraining draws its data from the same generators
    "systems": {"records"},
    "store": {"records", "learner"},
}


def imports(path: Path) -> set[str]:
    """Dotted names of everything `path` imports, relative imports resolved (at any depth, lazy ones too)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    found.add(".".join([*base, node.module]))
                else:  # from .. import live
                    found.update(".".join([*base, alias.name]) for alias in node.names)
            else:
                found.add(node.module)
    return found


def layer(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "finetuna_parsl" and len(parts) > 1 else None


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_layer_imports_only_the_layers_below_it(path):
    own = layer(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    names = imports(path)
    if own in ALLOWED:
        above = sorted(n for n in names if layer(n) not in (None, own) and layer(n) not in ALLOWED[own])
        assert not above, f"{path.name} ({own}) imports from above its layer: {above}"
    if own not in ("campaign", "apps"):
        assert not any(n.split(".")[0] == "parsl" for n in names), f"{path.name} imports Parsl"
    if own != "store":
        assert not any(n.split(".")[0] == "h5py" for n in names), f"{path.name} imports h5py"


def test_the_checker_sees_relative_and_lazy_imports():
    names = imports(PACKAGE / "campaign" / "driver.py")
    assert {"finetuna_parsl.records", "finetuna_parsl.store", "finetuna_parsl.apps", "finetuna_parsl.live"} <= names
    assert "finetuna_parsl.surrogate" in imports(PACKAGE / "apps.py")  # imported inside a function
