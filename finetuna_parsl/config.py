"""Run-config schema (YAML): systems, parent, surrogate, learner, campaign, site.

Every problem is reported as one line naming the file and the key, before any work starts.
Relative paths are taken from the current working directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .learner.recipes import DEFAULT_RECIPE, recipe
from .records import PAUSE_WHILE_LEARNING, LearnerSettings, SettingError
from .surrogate.settings import SurrogateSettings


class ConfigError(ValueError):
    """A run config is invalid; str() is one line: '<file>: <key>: <what is wrong>'."""


@dataclass(frozen=True)
class SystemsConfig:
    """Where the systems come from: a file or folder, 'demo' / 'ood' (seeded sets built with ase.build), or
    'oc20-ood30' (the paper's 30 OC20 systems, shipped with the package).

    count: how many to take (the first N); unset = every structure of a file or folder, 20 of demo / ood.
    """

    source: str = "demo"
    count: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class ParentConfig:
    """The parent (reference) calculator and its options.

    kind `ase`: `calculator` names any ASE calculator class or factory as "module:Name" and `options` are its
    keywords (parents/ase.py); other kinds take no `calculator` and read their own `options`.
    """

    kind: str = "emt"
    calculator: str = ""
    options: dict = field(default_factory=dict)
    threads: int | None = None  # kind ase: torch threads of the parent worker (torch.set_num_threads); unset: as is
    workdir: str = ""  # one folder per relaxation below this; "" means "<store path without .h5>-parent"
    bridge: str = "unix"  # how sessions reach the driver: unix (same machine) or tcp (cluster)
    timeout_s: float = 3600.0  # longest wait for one parent call (or for a session to connect)
    # stop the parent (VASP: SIGTSTP, or scancel -s TSTP under srun) between calls, while the learner works:
    # auto = when the site's learn workers share the parent's node (campaign/pausing.py), true, false
    pause_while_learning: str = "auto"

    def session_options(self) -> dict:
        """The keywords the `kind` session is built with (parents.make_parent) and its options are checked with:
        `options` for every kind, and for `ase` the calculator path with its keywords."""
        if self.kind == "ase":
            return {"calculator": self.calculator, "options": dict(self.options), "threads": self.threads}
        return dict(self.options)


@dataclass(frozen=True)
class CampaignConfig:
    """How the campaign runs and where it writes."""

    output: str = "runs/campaign.h5"
    max_concurrent: int = 4
    keep_surrogate_every: int = 1  # 1: every surrogate step; N: every Nth; 0: parent points only
    learn_retries: int = 2
    parent_retries: int = 2


@dataclass(frozen=True)
class RunConfig:
    """A whole run config; `text` is the YAML it came from (stored in the campaign file)."""

    systems: SystemsConfig = field(default_factory=SystemsConfig)
    parent: ParentConfig = field(default_factory=ParentConfig)
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    learner: LearnerSettings = field(default_factory=LearnerSettings)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    site: str = "laptop"
    path: str = ""
    text: str = ""


_SECTIONS = {
    "systems": SystemsConfig,
    "parent": ParentConfig,
    "surrogate": SurrogateSettings,
    "learner": LearnerSettings,
    "campaign": CampaignConfig,
}
_CHOICES = {
    ("surrogate", "device"): ("auto", "cpu", "cuda"),
    ("parent", "bridge"): ("unix", "tcp"),
    ("parent", "pause_while_learning"): PAUSE_WHILE_LEARNING,
}
_POSITIVE = {
    ("systems", "count"), ("parent", "timeout_s"), ("parent", "threads"), ("surrogate", "ensemble_size"), ("surrogate", "epochs"), ("surrogate", "lr"),
    ("surrogate", "threads"),
    ("campaign", "max_concurrent"),
    # The learner's integer counts say "> 0" here, as they always did; every other learner range (and its choices:
    # query, train_on, recipe) is LearnerSettings' own check (records.py), reported under its key.
    ("learner", "k"), ("learner", "max_parent_calls"), ("learner", "max_surrogate_steps"),
}
#: Keys that take auto or a boolean: YAML's true/false (yes/no, on/off) are stored as the strings "true"/"false".
_AUTO_OR_BOOL = {("parent", "pause_while_learning")}
_NON_NEGATIVE = {("campaign", "keep_surrogate_every"), ("campaign", "learn_retries"), ("campaign", "parent_retries"),
                 ("systems", "seed"), ("surrogate", "seed")}


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_value(where: str, key: str, value: Any, annotation: Any) -> Any:
    """Value converted to the annotated type, or ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(where, key, value, inner)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key}: expected a number, got {_type_name(value)} {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key}: expected an integer, got {_type_name(value)} {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key}: expected true or false, got {_type_name(value)} {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key}: expected a string, got {_type_name(value)} {value!r}")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key}: expected a mapping, got {_type_name(value)} {value!r}")
        return value
    return value


def _auto_or_bool(where: str, key: str, value: Any) -> Any:
    """A YAML boolean as "true"/"false", a string lower-cased (then checked against _CHOICES); else ConfigError."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key}: expected auto, true or false, got {_type_name(value)} {value!r}")
    return value.lower()


def _section(where: str, name: str, raw: Any) -> Any:
    cls = _SECTIONS[name]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name}: expected a mapping, got {_type_name(raw)} {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    chosen = None
    if cls is LearnerSettings:  # learner.recipe picks the starting settings; the section's other keys override it
        raw = dict(raw)
        chosen = _check_value(where, "learner.recipe", raw.pop("recipe", DEFAULT_RECIPE), str)
        known.add("recipe")
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: {name}.{key}: unknown key (known: {', '.join(sorted(known))})")
        full = f"{name}.{key}"
        if (name, key) in _AUTO_OR_BOOL:
            value = _auto_or_bool(where, full, value)
        value = _check_value(where, full, value, hints[key])
        if (name, key) in _CHOICES and value not in _CHOICES[(name, key)]:
            raise ConfigError(f"{where}: {full}: must be one of {', '.join(_CHOICES[(name, key)])}, got {value!r}")
        if (name, key) in _POSITIVE and value is not None and not value > 0:
            raise ConfigError(f"{where}: {full}: must be > 0, got {value!r}")
        if (name, key) in _NON_NEGATIVE and value < 0:
            raise ConfigError(f"{where}: {full}: must be >= 0, got {value!r}")
        values[key] = value
    try:
        return cls(**values) if chosen is None else recipe(chosen, **values)
    except SettingError as exc:  # the dataclass's own check of one field
        raise ConfigError(f"{where}: {name}.{exc.field}: {exc.problem}") from None
    except ValueError as exc:  # cross-field checks of the dataclass itself
        raise ConfigError(f"{where}: {name}: {exc}") from None


def _check_files(where: str, config: RunConfig) -> None:
    from .systems import NAMED_SOURCES

    source = config.systems.source
    if source not in NAMED_SOURCES and not Path(source).exists():
        raise ConfigError(f"{where}: systems.source: no such file or folder: {source}")
    if config.surrogate.factory is None:
        # Opened once here, before any worker starts: a file fairchem cannot serve, or a task it lacks, is one line.
        from .surrogate.checkpoint import SurrogateError, inspect_checkpoint

        try:
            inspect_checkpoint(config.surrogate.checkpoint, config.surrogate.task)
        except SurrogateError as exc:
            key, _, why = str(exc).partition(" ")  # "surrogate.task 'x': ..." or "surrogate checkpoint PATH: ..."
            key = "surrogate.task" if key == "surrogate.task" else "surrogate.checkpoint"
            raise ConfigError(f"{where}: {key}: {why.removeprefix('checkpoint ')}") from None
    if config.surrogate.factory is not None and ":" not in config.surrogate.factory:
        raise ConfigError(f"{where}: surrogate.factory: expected 'module:callable', got {config.surrogate.factory!r}")
    from .parents import parent_kinds

    kinds = parent_kinds()  # the built-in kinds and the installed packages' (entry points finetuna_parsl.parents)
    if config.parent.kind not in kinds:
        raise ConfigError(
            f"{where}: parent.kind: unknown parent {config.parent.kind!r} (known: {', '.join(sorted(kinds))})"
        )
    if config.parent.kind == "ase":
        if not config.parent.calculator:
            raise ConfigError(f"{where}: parent.calculator: kind ase needs the calculator as 'module:Name', e.g. "
                              "'sevenn.calculator:SevenNetCalculator'")
        from .parents.ase import ASESession

        problem = ASESession.check_options(config.parent.session_options())
        if problem is not None:
            key = "parent.options" if problem.startswith("options:") else "parent.calculator"
            raise ConfigError(f"{where}: {key}: {problem.removeprefix('options: ')}")
    else:
        for key in ("calculator", "threads"):
            if getattr(config.parent, key):
                raise ConfigError(f"{where}: parent.{key}: only kind ase takes it (kind is {config.parent.kind!r})")


def _yaml_error_place(exc: Exception, text: str) -> str:
    """' at line N (`the line`): what PyYAML says', at the line of the mistake: where an unclosed quote or
    bracket, or a key without its colon, began (PyYAML's context mark), not where the parser gave up
    (its problem mark, often lines later: the end of the file for a quote never closed)."""
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    mark = getattr(exc, "problem_mark", None)
    started = getattr(exc, "context_mark", None)
    if started is not None and context and context.startswith(("while scanning a", "while parsing a flow")):
        mark = started
    if mark is None:
        return f": {exc}"
    lines = text.splitlines()
    shown = lines[mark.line].strip() if mark.line < len(lines) else ""
    what = f"{context}, {problem}" if context and problem else (problem or str(exc))
    return f" at line {mark.line + 1}" + (f" (`{shown}`)" if shown else "") + f": {what}"


def parse_config(text: str, where: str = "<config>") -> RunConfig:
    """Parse and validate YAML text; `where` names the file in error messages."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML{_yaml_error_place(exc, text)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at the top level, got {_type_name(raw)}")
    allowed = set(_SECTIONS) | {"site"}
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{where}: {key}: unknown key (known: {', '.join(sorted(allowed))})")
    sections = {name: _section(where, name, raw.get(name)) for name in _SECTIONS}
    site = raw.get("site", "laptop")
    if not isinstance(site, str):
        raise ConfigError(f"{where}: site: expected a string, got {_type_name(site)} {site!r}")
    config = RunConfig(**sections, site=site, path=where, text=text)
    _check_files(where, config)
    return _resolve_paths(config)


def _resolve_paths(config: RunConfig) -> RunConfig:
    """The surrogate checkpoint as an absolute path (workers may run in another folder, or on another node);
    "shipped" stays a name, the package resolves it wherever it is installed. An ase parent's options that name an
    existing file or folder relative to the current folder (a model file) become absolute too."""
    if config.parent.kind == "ase":
        from .parents.ase import resolve_option_paths

        options = resolve_option_paths(config.parent.options, Path.cwd())
        config = dataclasses.replace(config, parent=dataclasses.replace(config.parent, options=options))
    checkpoint = config.surrogate.checkpoint
    from .surrogate.checkpoint import PACKAGED

    if config.surrogate.factory is not None or checkpoint in PACKAGED:
        return config
    return dataclasses.replace(
        config, surrogate=dataclasses.replace(config.surrogate, checkpoint=str(Path(checkpoint).expanduser().resolve())))


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a run-config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    return parse_config(path.read_text(), where=str(path))


def with_overrides(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """A copy with some section fields replaced, e.g. with_overrides(c, campaign={"output": "x.h5"})."""
    changed = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items() if values}
    return dataclasses.replace(config, **changed)


#: parent.options keys (seconds) of a parent's own timeouts for one call, which parent.timeout_s must exceed.
PARENT_CALL_TIMEOUTS = ("step_timeout_s", "startup_timeout_s")


def shadowed_settings(config: RunConfig) -> list[str]:
    """Settings that make one timeout fire before another can (one line each), for a warning when read.

    parent.timeout_s (the driver's wait for one parent call) shorter than the parent's own timeout for that call
    (parent.options step_timeout_s, startup_timeout_s: VASP's): the driver gives up first, reports a call
    without an answer, and the parent's own, more telling error (which step hung, its output) is never seen.
    """
    found = []
    for key in PARENT_CALL_TIMEOUTS:
        value = config.parent.options.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= config.parent.timeout_s:
            found.append(
                f"parent.timeout_s ({config.parent.timeout_s:g} s) is shorter than parent.options.{key} ({value:g} s): "
                "the driver gives up on a call before the parent's own timeout can say what hung; "
                f"set parent.timeout_s above {value:g}")
    return found
