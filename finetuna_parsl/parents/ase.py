"""Any ASE calculator as the parent: a universal potential, CP2K, FHI-aims, ... named by `module:Name`.

One calculator object per relaxation, built when the session starts on the parent worker and kept on one Atoms
object for every call of that relaxation (the warm session: whatever the calculator reuses between calls, such
as CP2K's running shell or a model already in memory, it reuses), closed when the session ends.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..records import SOURCE_PARENT, Evaluation, SystemSpec
from .base import ParentError, ParentSession, ParentSetupError

#: calculator.results keys read as the SCF iterations of a call, in this order; then a get_number_of_iterations()
#: method (ASE's Vasp, GPAW). Calculators without either report 0 (no SCF, e.g. EMT or a machine-learned potential).
SCF_KEYS = ("scf_cycles", "n_scf", "nscf", "niter", "n_iter")


def resolve_target(path: str) -> Any:
    """The object `path` ("package.module:Name") names: a calculator class or a factory returning a calculator.

    Raises ParentSetupError (one line) when `path` is not of that form, does not import, has no such name, or
    names something that is not callable.
    """
    module, sep, name = str(path).partition(":")
    if not sep or not module or not name:
        raise ParentSetupError(f"ase parent: calculator: expected 'module:Name', got {path!r}")
    try:
        target = importlib.import_module(module)
    except ImportError as exc:
        raise ParentSetupError(f"ase parent: calculator {path!r}: module {module!r} does not import ({exc})") from exc
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ParentSetupError(f"ase parent: calculator {path!r}: module {module!r} has no {name!r}") from None
    if not callable(target):
        raise ParentSetupError(f"ase parent: calculator {path!r} is a {type(target).__name__}, not a class or factory")
    return target


def _keywords_problem(target: Any, options: Mapping[str, Any]) -> str | None:
    """Why `options` cannot be passed to `target` as keywords, judged from its signature, or None."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # some builtins and C extensions have none: the worker finds out
        return None
    try:
        signature.bind(**options)
    except TypeError as exc:
        return str(exc)
    return None


def _takes_directory(target: Any) -> bool:
    """Whether `target` takes a `directory` keyword: named in its signature, or an ASE calculator class whose
    signature passes **kwargs on (ASE's Calculator and file-based calculators take it through their base class)."""
    from ase.calculators.calculator import Calculator
    from ase.calculators.genericfileio import GenericFileIOCalculator

    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    if "directory" in parameters:
        return True
    passes_on = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return passes_on and isinstance(target, type) and issubclass(target, (Calculator, GenericFileIOCalculator))


def scf_iterations(calc: Any) -> int:
    """The SCF iterations `calc` reports for its last calculation (SCF_KEYS in its results, else
    get_number_of_iterations()), 0 where it reports none."""
    results = getattr(calc, "results", None) or {}
    for key in SCF_KEYS:
        if key in results:
            try:
                return int(results[key])
            except (TypeError, ValueError):
                return 0
    getter = getattr(calc, "get_number_of_iterations", None)
    if callable(getter):
        try:
            value = getter()
        except Exception:  # noqa: BLE001 - a report the calculator cannot give is not a failed call
            return 0
        return int(value) if value is not None else 0
    return 0


def close_calculator(calc: Any) -> None:
    """End what `calc` keeps running: close() where it has one, else its context-manager exit."""
    if calc is None:
        return
    closer = getattr(calc, "close", None)
    if callable(closer):
        closer()
    elif hasattr(calc, "__exit__"):
        calc.__exit__(None, None, None)


class ASESession(ParentSession):
    """An ASE calculator, built from `calculator` ("module:Name") with `options` as keywords, as the parent.

    Options (the run config's parent section): `calculator` (required), `options` (keywords for it; a relative
    path among them is resolved against the folder the run starts in, when the config is read), `threads` (torch
    threads of the worker, for calculators that run on torch; unset: torch's default), `warm` (default
    true: one calculator for the whole relaxation; false builds a new one every call, a cold baseline for
    benchmarks; `finetuna-parsl verify-parent` compares against a new session instead). When the calculator takes a `directory` keyword and
    `options` does not set it, it gets the session's folder (`<parent.workdir>/<system id>/`), so file-based
    codes write there.

    Errors: a calculator path that does not import or is not callable, and options its signature refuses, are
    ParentSetupError found by check_options() before any worker starts; options it refuses when built (on the
    worker) are ParentSetupError too, never retried. An exception inside a call, or a non-finite energy or
    force, is a ParentError (a run-time failure: retried on a fresh session).
    """

    kind = "ase"

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> str | None:
        """The calculator path imports and is callable, and its signature takes the options; else one line."""
        try:
            target = resolve_target(options.get("calculator", ""))
        except ParentSetupError as exc:
            return str(exc).removeprefix("ase parent: ")
        keywords = options.get("options") or {}
        if not isinstance(keywords, Mapping):
            return f"options: expected a mapping of keywords for {options['calculator']}, got {keywords!r}"
        problem = _keywords_problem(target, keywords)
        if problem is not None:
            return f"options: {options['calculator']} refuses them: {problem}"
        return None

    def __init__(self, workdir: str | Path | None = None, calculator: str = "", options: Mapping[str, Any] | None = None,
                 warm: bool = True, threads: int | None = None) -> None:
        super().__init__(workdir)
        self.calculator = calculator
        self.options = dict(options or {})
        self.warm = bool(warm)
        self.threads = threads
        self._target = resolve_target(calculator)  # ParentSetupError here: make_parent reports it as such
        problem = _keywords_problem(self._target, self.options)
        if problem is not None:
            raise ParentSetupError(f"ase parent: options: {calculator} refuses them: {problem}")
        self._calc: Any = None
        self.calls = 0

    def _build(self) -> Any:
        """A new calculator from the target and options; anything it raises is a setup error (never retried)."""
        keywords = dict(self.options)
        if self.workdir is not None and "directory" not in keywords and _takes_directory(self._target):
            self.workdir.mkdir(parents=True, exist_ok=True)
            keywords["directory"] = str(self.workdir)
        try:
            return self._target(**keywords)
        except Exception as exc:  # noqa: BLE001 - calculators refuse settings with many exception types
            raise ParentSetupError(f"ase parent: {self.calculator}({_shown(keywords)}) could not be built: "
                                   f"{type(exc).__name__}: {exc}") from exc

    def start(self, system: SystemSpec) -> None:
        """Bind to `system` and build the calculator (warm: kept until close()); with `threads`, torch's thread
        count in this worker first (machine-learned potentials: max_concurrent workers share the cores)."""
        if self.threads:
            import torch

            torch.set_num_threads(int(self.threads))
        super().start(system)
        self._atoms = system.to_atoms()
        self._atoms.set_constraint()  # the parent reports raw forces; constraints are the optimizer's business
        self.calls = 0
        self._calc = self._build() if self.warm else None

    def calculate(self, positions: np.ndarray) -> Evaluation:
        """Energy (eV, get_potential_energy) and unconstrained forces ((n, 3) eV/A) at `positions`, with the
        SCF iterations the calculator reports (scf_iterations)."""
        positions = self._check_positions(positions)
        t0 = time.perf_counter()
        if self._calc is None:
            self._calc = self._build()
        self._atoms.calc = self._calc
        self._atoms.positions = positions
        try:
            energy = float(self._atoms.get_potential_energy())
            forces = np.array(self._atoms.get_forces(), dtype=float)
        except Exception as exc:  # noqa: BLE001 - whatever the code raised, the caller decides on a retry
            self._drop_calculator()  # never reuse a calculator left in an unknown state
            raise ParentError(f"ase parent for {self.system.system_id}: call {self.calls + 1} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        scf = scf_iterations(self._calc)
        if not np.isfinite(energy) or not np.isfinite(forces).all():
            bad = int((~np.isfinite(forces)).any(axis=1).sum())
            self._drop_calculator()
            raise ParentError(f"ase parent for {self.system.system_id}: call {self.calls + 1}: {self.calculator} "
                              f"returned a non-finite answer (energy {energy}, non-finite forces on {bad} atoms)")
        if not self.warm:
            self._drop_calculator()
        self.calls += 1
        return Evaluation(positions.copy(), energy, forces, SOURCE_PARENT, scf_cycles=scf,
                          wall_s=time.perf_counter() - t0)

    def _drop_calculator(self) -> None:
        calc, self._calc = self._calc, None
        try:
            close_calculator(calc)
        except Exception:  # noqa: BLE001 - closing a failed calculator must not hide why it failed
            pass

    def close(self) -> None:
        """Close the calculator (its close() or context-manager exit) and unbind."""
        calc, self._calc = self._calc, None
        try:
            close_calculator(calc)
        finally:
            super().close()


def _shown(keywords: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in keywords.items())


def resolve_option_paths(options: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """`options` with each relative path string that names an existing file or folder under `base` made absolute
    (a model file given relative to the config's run folder must still be found on a worker elsewhere)."""
    resolved = {}
    for key, value in options.items():
        if isinstance(value, str) and value and not Path(value).is_absolute() and (base / value).exists():
            value = str((base / value).resolve())
        resolved[key] = value
    return resolved
