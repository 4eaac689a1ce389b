"""ASE calculators for the `ase` parent's tests: real ase.calculators.calculator.Calculator subclasses around EMT
that refuse options, fail mid-relaxation, answer NaN, or record that they were closed (importable by Parsl
workers through the toy_on_workers fixture, which puts this folder on PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT


class StrictEMT(EMT):
    """EMT whose signature names its one option, so an unknown keyword is refused by the signature alone."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        super().__init__()
        self.scale = scale


class FlakyEMT(Calculator):
    """EMT that raises RuntimeError on call number `fail_on` (1-based) of each calculator object; with a
    `count_file`, appends one line per object built (how many calculators a run made)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, fail_on: int = 2, count_file: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail_on = fail_on
        self.calls = 0
        if count_file:
            with open(count_file, "a") as out:
                out.write("built\n")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError(f"simulated SCF crash on call {self.calls}")
        emt = EMT()
        self.results = {"energy": emt.get_potential_energy(self.atoms), "forces": emt.get_forces(self.atoms)}


class NaNForces(EMT):
    """EMT with the forces on atom 0 replaced by NaN (what a patched code or two atoms at one place give)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        forces = np.array(self.results["forces"])
        forces[0] = np.nan
        self.results["forces"] = forces


class ClosingEMT(EMT):
    """EMT that reports its SCF iterations (results["scf_cycles"] = 7) and writes `log` lines for each close()."""

    def __init__(self, log: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.log = log

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["scf_cycles"] = 7

    def close(self) -> None:
        with open(self.log, "a") as out:
            out.write("closed\n")


def emt_factory(**kwargs):
    """A factory (not a class) returning a calculator: the `calculator` key takes either."""
    return EMT(**kwargs)


NOT_CALLABLE = 42


class DriftingEMT(EMT):
    """EMT whose answers drift by 0.05 eV for every earlier call on the same object: a warm state that goes stale,
    as Quantum ESPRESSO's socket mode did (benchmarks/parents.md)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] += 0.05 * self.calls
        self.calls += 1


class FileWritingEMT(EMT):
    """EMT that writes `calc.out` into its `directory` on every call, as file-based codes (CP2K, Espresso) do; its
    signature takes `directory` only through **kwargs, as CP2K's does."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        Path(self.directory, "calc.out").write_text(f"{self.results['energy']}\n")


class SlowEMT(EMT):
    """EMT that takes `delay` seconds a call and appends one line to `call_log` per call: the name of its session
    folder (the system id) and the process id, so a test can kill a run mid-relaxation and count what was paid."""

    def __init__(self, call_log: str, delay: float = 0.05, directory: str = ".", **kwargs) -> None:
        super().__init__(directory=directory, **kwargs)
        self.call_log, self.delay = call_log, delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        import os
        import time

        time.sleep(self.delay)
        super().calculate(atoms, properties, system_changes)
        with open(self.call_log, "a") as log:
            log.write(f"{Path(self.directory).name} {os.getpid()}\n")
