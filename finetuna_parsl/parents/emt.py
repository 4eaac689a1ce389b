"""EMT parent: instant, licence-free; the parent of the demo and of the tests."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
from collections.abc import Mapping
from typing import Any

from ase.calculators.emt import EMT, parameters as EMT_PARAMETERS

from ..records import SOURCE_PARENT, Evaluation, SystemSpec
from .base import ParentError, ParentSession


class EMTSession(ParentSession):
    """ASE's EMT calculator kept on one Atoms object for the whole relaxation.

    Options for audits and failure drills: `call_log` appends one line per call (system id, process id,
    energy, host, batch job id or "-") to a file; `fail_after_calls` makes the session fail like a crashed parent after that many calls.
    """

    kind = "emt"

    @classmethod
    def unusable(cls, system: SystemSpec, options: Mapping[str, Any]) -> str | None:
        """Elements ASE's EMT has no parameters for (it has Al, Cu, Ag, Au, Ni, Pd, Pt, H, C, N, O)."""
        symbols = list(dict.fromkeys(system.to_atoms().get_chemical_symbols()))
        missing = [s for s in symbols if s not in EMT_PARAMETERS]
        if missing:
            return f"EMT has no potential for {', '.join(missing)} (it has {' '.join(sorted(EMT_PARAMETERS))})"
        return None

    def __init__(self, workdir: str | Path | None = None, call_log: str | None = None,
                 fail_after_calls: int | None = None) -> None:
        super().__init__(workdir)
        self.call_log = call_log
        self.fail_after_calls = fail_after_calls
        self.calls = 0

    def start(self, system: SystemSpec) -> None:
        super().start(system)
        self._atoms = system.to_atoms()
        self._atoms.set_constraint()  # the parent reports raw forces; constraints are the optimizer's business
        self._atoms.calc = EMT()
        self.calls = 0

    def calculate(self, positions: np.ndarray) -> Evaluation:
        positions = self._check_positions(positions)
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise ParentError(f"emt parent for {self.system.system_id}: simulated crash after {self.calls} calls")
        t0 = time.perf_counter()
        self._atoms.positions = positions
        energy = float(self._atoms.get_potential_energy())
        forces = np.array(self._atoms.get_forces(), dtype=float)
        self.calls += 1
        if self.call_log:
            with open(self.call_log, "a") as log:
                job = os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or "-"
                log.write(f"{self.system.system_id} {os.getpid()} {energy!r} {socket.gethostname()} {job}\n")
        return Evaluation(positions.copy(), energy, forces, SOURCE_PARENT, wall_s=time.perf_counter() - t0)
