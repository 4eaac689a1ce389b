"""Site loading: a site is a Python file with make_config(run_dir, parent_slots) -> parsl.Config.

It may also declare LEARN_SHARES_PARENT_NODE = True / False: whether its learn workers run on the nodes
the parent (VASP) runs on, which decides parent.pause_while_learning: auto (campaign/pausing.py).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from parsl.config import Config

SITES_DIR = Path(__file__).resolve().parents[2] / "sites"


class SiteError(ValueError):
    """The site could not be found or did not give a Parsl Config."""


def known_sites() -> list[str]:
    return sorted(p.stem for p in SITES_DIR.glob("*.py") if not p.name.startswith("_"))


def site_file(name_or_path: str) -> Path:
    """The site file for a shipped site name (sites/NAME.py) or a path to the user's own file."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise SiteError(f"site file not found: {path}")
        return path
    shipped = SITES_DIR / f"{name_or_path}.py"
    if not shipped.is_file():
        raise SiteError(f"unknown site {name_or_path!r}; shipped sites: {', '.join(known_sites())}, or give a .py path")
    return shipped


def import_site(name_or_path: str) -> ModuleType:
    """The site file imported as a module (a fresh import each call); SiteError when there is no such site."""
    path = site_file(name_or_path)
    spec = importlib.util.spec_from_file_location(f"finetuna_site_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_site(name_or_path: str, run_dir: str, parent_slots: int) -> Config:
    """Import the site file and build its Parsl Config (executors 'parent' and 'learn')."""
    path = site_file(name_or_path)
    module = import_site(name_or_path)
    if not hasattr(module, "make_config"):
        raise SiteError(f"{path}: a site file must define make_config(run_dir, parent_slots)")
    config = module.make_config(run_dir=run_dir, parent_slots=parent_slots)
    if not isinstance(config, Config):
        raise SiteError(f"{path}: make_config returned {type(config).__name__}, not parsl.config.Config")
    labels = {e.label for e in config.executors}
    if not {"parent", "learn"} <= labels:
        raise SiteError(f"{path}: executors must be labelled 'parent' and 'learn', got {sorted(labels)}")
    return config
