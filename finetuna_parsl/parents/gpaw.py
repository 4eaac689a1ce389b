"""GPAW parent: one live GPAW calculator per relaxation, so each call starts from the last wavefunctions.

gpaw is imported only here (and only when a session starts), so the package works without it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..records import SOURCE_PARENT, Evaluation, SystemSpec
from .base import ParentError, ParentSession, ParentSetupError, cell_problem

MODES = ("pw", "lcao", "fd")
#: GPAW keywords set through the session's own options, so `parameters` may not set them too.
_OWN_KEYWORDS = {"mode", "xc", "kpts", "occupations", "convergence", "txt", "basis", "h"}


def _import_gpaw() -> Any:
    """gpaw.GPAW, or a ParentSetupError saying how to install it (why: gpaw is an optional extra)."""
    try:
        from gpaw import GPAW
    except ImportError as exc:
        raise ParentSetupError(
            f"gpaw parent: gpaw is not importable ({exc}); install it with "
            "`pip install 'finetuna-parsl[gpaw]'` (needs g++, libxc-dev and a BLAS: see the README)"
        ) from exc
    return GPAW


class GPAWSession(ParentSession):
    """GPAW kept on one Atoms object for the whole relaxation (warm), or rebuilt every call (cold baseline).

    Options: `mode` pw (with `ecut` eV) | lcao (with `basis`) | fd (with grid spacing `h`); `xc`; `kpts`
    (three integers, or a GPAW kpts mapping; default Gamma only); `smearing` (Fermi-Dirac width, eV; default
    0.1) or a full GPAW `occupations` mapping; `convergence` (GPAW's SCF criteria); `txt` (log file name in
    the workdir; none without a workdir); `warm`; `parameters` (any other GPAW keyword, e.g. spinpol, mixer).
    """

    kind = "gpaw"

    @classmethod
    def check_options(cls, options: dict) -> str | None:
        """GPAW's per-element settings (setups, basis) as a list would apply by position: refused."""
        for where, values in (("", options), ("parameters.", options.get("parameters") or {})):
            for key in ("setups", "basis"):
                if isinstance(values.get(key), (list, tuple)):
                    return (f"gpaw parent: {where}{key}: {values[key]!r} would apply by position; give one name for "
                            f"every element or a mapping by element, e.g. {key}: {{Ni: ...}}")
        return None

    @classmethod
    def unusable(cls, system: SystemSpec, options: dict) -> str | None:
        """Every mode (plane waves, lcao, fd) needs a cell with volume: the periodic box or the grid's extent."""
        mode = options.get("mode", "pw")
        what = "GPAW plane waves (mode pw)" if mode == "pw" else f"GPAW (mode {mode})"
        return cell_problem(system, what=what)

    def __init__(self, workdir: str | Path | None = None, mode: str = "pw", ecut: float = 350.0,
                 h: float | None = None, basis: str | None = None, xc: str = "PBE",
                 kpts: list[int] | tuple[int, ...] | dict | None = None, smearing: float | None = None,
                 occupations: dict | None = None, convergence: dict | None = None, txt: str | None = "gpaw.txt",
                 warm: bool = True, parameters: dict | None = None) -> None:
        super().__init__(workdir)
        if mode not in MODES:
            raise ParentSetupError(f"gpaw parent: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if smearing is not None and occupations is not None:
            raise ParentSetupError("gpaw parent: give smearing or occupations, not both")
        clash = sorted(_OWN_KEYWORDS & set(parameters or {}))
        if clash:
            raise ParentSetupError(f"gpaw parent: set {', '.join(clash)} as session options, not inside parameters")
        self.mode = mode
        self.ecut = float(ecut)
        self.h = h
        self.basis = basis
        self.xc = xc
        self.kpts = kpts
        self.smearing = smearing
        self.occupations = occupations
        self.convergence = convergence
        self.txt = txt
        self.warm = bool(warm)
        self.parameters = dict(parameters or {})
        self.calls = 0
        self._calc: Any = None
        self._log: IO[str] | None = None
        self._last_positions: np.ndarray | None = None

    def gpaw_keywords(self) -> dict[str, Any]:
        """The keyword arguments every GPAW calculator of this session gets (log file aside)."""
        mode: Any = {"name": "pw", "ecut": self.ecut} if self.mode == "pw" else self.mode
        keywords: dict[str, Any] = {"mode": mode, "xc": self.xc}
        if self.kpts is not None:
            keywords["kpts"] = tuple(self.kpts) if isinstance(self.kpts, (list, tuple)) else self.kpts
        if self.occupations is not None:
            keywords["occupations"] = dict(self.occupations)
        else:
            keywords["occupations"] = {"name": "fermi-dirac", "width": 0.1 if self.smearing is None else self.smearing}
        if self.convergence is not None:
            keywords["convergence"] = dict(self.convergence)
        if self.h is not None:
            keywords["h"] = self.h
        if self.basis is not None:
            keywords["basis"] = self.basis
        keywords.update(self.parameters)
        return keywords

    def start(self, system: SystemSpec) -> None:
        """Bind to `system`; the warm calculator is created on the first call (its first SCF is a cold one)."""
        self._gpaw = _import_gpaw()
        super().start(system)
        self._atoms = system.to_atoms()
        self._atoms.set_constraint()  # the parent reports raw forces; constraints are the optimizer's business
        self._calc = None
        self._last_positions = None
        self.calls = 0
        if self.workdir is not None and self.txt:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.workdir / self.txt, "a", encoding="utf-8")

    def _new_calculator(self) -> Any:
        """A fresh GPAW calculator writing to the session's log (appended, so cold calls keep every SCF)."""
        try:
            return self._gpaw(txt=self._log, **self.gpaw_keywords())
        except Exception as exc:  # GPAW reports bad keywords with many exception types
            raise ParentSetupError(f"gpaw parent for {self.system.system_id}: bad GPAW settings: {exc}") from exc

    def calculate(self, positions: np.ndarray) -> Evaluation:
        """Energy and unconstrained forces at `positions`, with the SCF iterations this call ran."""
        positions = self._check_positions(positions)
        t0 = time.perf_counter()
        if self._calc is None or not self.warm:
            self._calc = self._new_calculator()
            self._atoms.calc = self._calc
            self._last_positions = None
        scf_ran = self._last_positions is None or not np.array_equal(positions, self._last_positions)
        self._atoms.positions = positions
        try:
            energy = float(self._atoms.get_potential_energy())
            forces = np.array(self._atoms.get_forces(), dtype=float)
            scf_cycles = int(self._calc.get_number_of_iterations()) if scf_ran else 0
        except Exception as exc:  # SCF not converged, atoms too close, ...: the caller decides on a retry
            self._calc = None  # never reuse a calculator left in an unknown state
            raise ParentError(
                f"gpaw parent for {self.system.system_id}: call {self.calls + 1} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._last_positions = positions.copy()
        self.calls += 1
        return Evaluation(positions.copy(), energy, forces, SOURCE_PARENT, scf_cycles=scf_cycles,
                          wall_s=time.perf_counter() - t0)

    def close(self) -> None:
        """Drop the calculator (and its wavefunctions) and close the log."""
        self._calc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        super().close()
