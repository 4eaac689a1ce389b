"""VASP in interactive mode as a parent session: one VASP process per relaxation, warm between calls.

The protocol is the one ulissigroup/vasp-interactive uses. start() writes INCAR (INTERACTIVE = .TRUE. and
the other keys of vasp_io.FORCED_INCAR), POSCAR (atoms grouped by species), KPOINTS and, when potentials
are configured, POTCAR, then launches the site's command. VASP computes the first ionic step at the
POSCAR positions, prints `POSITIONS: reading from stdin` (6.4.1+: `POSITIONS AND LATTICE: reading from
stdin`, which wants a POSCAR-like record) and waits. Each calculate() writes the new positions on stdin,
waits for the next prompt (the end of that ionic step), and reads energy and forces of exactly that step
from vasprun.xml, or from OUTCAR when vasprun.xml lags or is cut. close() writes STOPCAR with
`LABORT = .TRUE.` and feeds the positions once more so VASP reaches the check and exits cleanly.

Every wait has a deadline (a reader thread and a queue, no SIGALRM: sessions run off the main thread).
A VASP that exits, crashes or goes silent becomes a ParentError naming the system, the exit code and the
tails of stderr and stdout; the process group is then killed and the session refuses further calls.
stdout and stderr are also kept in the work folder as vasp.out and vasp.err; a later session in the same
folder (a retry, a resumed run) first moves them to vasp.out.N / vasp.err.N, so every attempt's output stays.
"""

from __future__ import annotations

import codecs
import errno
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import replace
from pathlib import Path
from tempfile import mkdtemp
from typing import IO, Any, Mapping, Sequence

import numpy as np

from ..records import SOURCE_PARENT, Evaluation, SystemSpec
from .base import ParentError, ParentSession, ParentSetupError, cell_problem
from .vasp_io import (
    PROMPT_POSITIONS,
    OutcarReader,
    StepOutput,
    VasprunReader,
    classify_prompt,
    format_incar,
    format_kpoints,
    interactive_incar,
    is_scf_line,
    max_displacement,
    ml_force_field_problem,
    per_species_problem,
    poscar_record,
    positions_record,
    potcar_files,
    species_blocks,
    species_incar,
    species_order,
)

#: Files of an earlier run in the same folder that would mislead this one (STOPCAR would stop it at once).
STALE_FILES = ("STOPCAR", "OUTCAR", "vasprun.xml", "OSZICAR", "CONTCAR", "WAVECAR", "CHGCAR")
#: VASP's stdout and stderr as kept in the work folder; an earlier attempt's are renamed <name>.N, not deleted.
LOG_FILES = ("vasp.out", "vasp.err")
#: Positions closer than this (A) to the step VASP already computed are answered from that step.
SAME_POSITIONS_A = 1e-6
#: VASP must report having computed within this distance (A) of the positions sent (OUTCAR prints 5 decimals).
SYNC_TOLERANCE_A = 1e-3
_SRUN = re.compile(r"^\s*(\S*/)?srun(\s|$)")
#: Words that start the program rather than being it: MPI and batch launchers and the wrappers run under them.
LAUNCHERS = frozenset({"srun", "mpirun", "mpiexec", "mpiexec.hydra", "orterun", "prterun", "aprun", "jsrun", "ibrun",
                       "env", "numactl", "taskset", "nice", "time", "stdbuf"})
#: Shell words that end the command proper (redirections, pipes, lists).
_SHELL_END = re.compile(r"^(\d?[<>]|\||;|&)")


def command_programs(command: str | Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The programs `command` (parent.options.command) runs: its first word, and where that is a launcher
    (srun, mpirun, ...; LAUNCHERS) the program it launches, taken as the last word that is neither an option,
    a number nor a VAR=value (`srun -n 64 --cpu-bind=cores vasp_std` -> [srun, vasp_std]). Shell variables
    are expanded from `environ` (default os.environ; unset ones to nothing, as the shell does); a word still
    holding a `$` (`${X:-y}`) is left out (unknown here)."""
    environ = os.environ if environ is None else environ
    if isinstance(command, str):
        text = re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: environ.get(m.group(1) or m.group(2), ""), command)
        try:
            words = shlex.split(text)
        except ValueError:
            return []
    else:
        words = [str(w) for w in command]
    for i, word in enumerate(words):
        if _SHELL_END.match(word):
            words = words[:i]
            break
    while words and re.match(r"^\w+=", words[0]):  # VAR=value before the command
        words = words[1:]
    if not words:
        return []
    programs = [words[0]]
    if Path(words[0]).name in LAUNCHERS:
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w and not re.fullmatch(r"[\d.:,-]+", w)]
        if rest:
            programs.append(rest[-1])
    return [p for p in programs if "$" not in p]


def missing_command_program(command: str | Sequence[str], environ: Mapping[str, str] | None = None) -> str | None:
    """The first program of `command` (command_programs) that cannot be run with environ's PATH, as one line
    naming it and that PATH; None when all are there. A relative path with a `/` is left to the launch (it is
    taken in the system's folder)."""
    environ = os.environ if environ is None else environ
    path = environ.get("PATH", os.defpath)
    for program in command_programs(command, environ):
        if "/" in program:
            if os.path.isabs(program) and not (os.path.isfile(program) and os.access(program, os.X_OK)):
                return f"{program}: no such executable (from parent.options.command {command!r})"
            continue
        if shutil.which(program, path=path) is None:
            return f"{program}: not found on PATH={path} (from parent.options.command {command!r})"
    return None

#: Commands that start VASP's ranks and pass signals on to them.
MPI_LAUNCHERS = ("srun", "mpirun", "mpiexec", "mpiexec.hydra", "aprun", "jsrun", "ibrun", "flux")


def _own_group_dying_with_parent(death: int):
    """preexec_fn for the VASP launch: a process group of its own, and `death` sent to it by the kernel when the
    thread that started it ends (Linux prctl PR_SET_PDEATHSIG; elsewhere only the group)."""
    libc = None
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            libc = None
    parent = os.getpid()

    def preexec() -> None:
        os.setpgrp()
        if libc is not None:
            libc.prctl(1, int(death), 0, 0, 0)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), int(death))

    return preexec


class VaspInteractiveSession(ParentSession):
    """A live VASP process (interactive mode) bound to one system for its whole relaxation.

    Options (the run config's `parent.options`):
      command          the launch command, one command line: `srun -n 64 vasp_std`, `mpiexec -n 32 vasp_std`,
                       `$PARSL_MPI_PREFIX vasp_std` (shell variables are expanded; the shell `exec`s it, so
                       the launcher is the process this session signals); or an argv list
      incar            INCAR settings; the interactive keys are forced, with a warning when that changes one;
                       per-species tags (LDAUL/LDAUU/LDAUJ, RWIGS, ...) and MAGMOM as a mapping by element
                       ({LDAUU: {Ni: 6.0}}), written in each POSCAR's species order; a bare list is refused
      kpoints          [a, b, c] mesh, "gamma" (Gamma point only), or None (Gamma only, or none with KSPACING)
      gamma            Gamma-centred mesh (True) or Monkhorst-Pack (False)
      potcar_dir       folder laid out like ASE's VASP_PP_PATH (potpaw_PBE/<element>/POTCAR); default
                       $VASP_PP_PATH; with neither, no POTCAR is written (put one in the work folder yourself)
      xc, setups       functional folder (PBE, LDA, PW91) and per-element setups ({"Cu": "_pv"})
      startup_timeout_s  longest wait for VASP's first output line after launch
      step_timeout_s   longest time one ionic step may take (from its start to the next prompt)
      stop_timeout_s   how long close() waits for VASP to stop after STOPCAR before killing it
      result_wait_s    how long results may lag behind the prompt in vasprun.xml/OUTCAR (file buffering)
      env              extra environment variables for the command
    """

    kind = "vasp"

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> str | None:
        """Per-species INCAR tags given as anything but a mapping by element (see vasp_io.per_species_problem)."""
        if not isinstance(options.get("setups") or {}, Mapping):
            return "setups must be a mapping by element, e.g. setups: {Cu: _pv}"
        return ml_force_field_problem(options.get("incar")) or per_species_problem(options.get("incar"))

    @classmethod
    def missing_program(cls, options: Mapping[str, Any]) -> str | None:
        """The launcher or VASP of `command` not found on PATH here (`env`'s PATH if it sets one)."""
        env = {str(k): str(v) for k, v in (options.get("env") or {}).items()}
        return missing_command_program(options.get("command") or "vasp_std", {**os.environ, **env})

    @classmethod
    def unusable(cls, system: SystemSpec, options: Mapping[str, Any]) -> str | None:
        """A cell VASP refuses (none, left-handed), per-species INCAR settings missing a species, a species
        without a POTCAR.

        POTCARs are looked up like start() does (potcar_dir, else $VASP_PP_PATH) when that folder exists here.
        """
        problem = cell_problem(system, what="VASP")
        if problem is not None:
            return problem
        if np.linalg.det(np.asarray(system.cell, dtype=float)) < 0:
            return ("the cell is left-handed (negative triple product of the cell vectors): VASP refuses it; "
                    "exchange two cell vectors")
        symbols = list(dict.fromkeys(system.to_atoms().get_chemical_symbols()))
        try:
            species_incar(options.get("incar") or {}, [(s, 1) for s in symbols])
        except ValueError as exc:
            return str(exc)
        root = options.get("potcar_dir") or os.environ.get("VASP_PP_PATH")
        if root and Path(root).is_dir():
            species = list(dict.fromkeys(system.to_atoms().get_chemical_symbols()))
            try:
                potcar_files(species, root, str(options.get("xc", "PBE")), options.get("setups") or {})
            except (FileNotFoundError, ValueError) as exc:
                return str(exc)
        return None

    def __init__(
        self,
        workdir: str | Path | None = None,
        command: str | Sequence[str] = "vasp_std",
        incar: Mapping[str, Any] | None = None,
        kpoints: Sequence[int] | str | None = None,
        gamma: bool = True,
        potcar_dir: str | None = None,
        xc: str = "PBE",
        setups: Mapping[str, str] | None = None,
        startup_timeout_s: float = 600.0,
        step_timeout_s: float = 3600.0,
        stop_timeout_s: float = 60.0,
        result_wait_s: float = 30.0,
        env: Mapping[str, Any] | None = None,
        tail_lines: int = 40,
    ) -> None:
        super().__init__(workdir)
        if not command:
            raise ParentSetupError("vasp parent: option 'command' is empty (e.g. 'srun -n 64 vasp_std')")
        problem = ml_force_field_problem(incar) or per_species_problem(incar)
        if problem is not None:
            raise ParentSetupError(f"vasp parent: {problem}")
        self.command = command
        self.incar = dict(incar or {})
        self.kpoints = kpoints
        self.gamma = gamma
        self.potcar_dir = potcar_dir
        self.xc = xc
        self.setups = dict(setups or {})
        self.startup_timeout_s = float(startup_timeout_s)
        self.step_timeout_s = float(step_timeout_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.result_wait_s = float(result_wait_s)
        self.env = {str(k): str(v) for k, v in (env or {}).items()}
        self.tail_lines = tail_lines
        self._proc: subprocess.Popen | None = None
        self._dead: str | None = None
        self.attempt = 1  # sessions that have run in this work folder, this one included (see keep_earlier_logs)
        self.returncode: int | None = None  # VASP's exit status once close() has stopped it
        self.last_source: str | None = None  # where the last call's numbers were read: vasprun.xml or OUTCAR

    # ------------------------------------------------------------------------------------------ start

    def start(self, system: SystemSpec) -> None:
        """Write the inputs into the work folder and launch VASP; it starts on the initial positions at once."""
        if self._proc is not None:
            raise ParentSetupError(f"vasp parent for {system.system_id}: start() twice without close()")
        missing = missing_command_program(self.command, {**os.environ, **self.env})
        if missing is not None:  # before any file is written: nothing else (no POTCAR, no input) gets the blame
            raise ParentSetupError(f"vasp parent for {system.system_id}: {missing}")
        super().start(system)
        if self.workdir is None:
            self.workdir = Path(mkdtemp(prefix=f"finetuna-vasp-{system.system_id}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in STALE_FILES:
            (self.workdir / name).unlink(missing_ok=True)
        self.attempt = keep_earlier_logs(self.workdir)
        symbols = system.to_atoms().get_chemical_symbols()
        self._order = np.array(species_order(symbols), dtype=int)  # VASP atom i is the caller's atom _order[i]
        self._blocks = species_blocks([symbols[i] for i in self._order])
        self._cell = np.asarray(system.cell, dtype=float)
        self._inv_cell = np.linalg.inv(self._cell)
        self._potcar = self._write_inputs(system)

        self._events: queue.Queue = queue.Queue()
        self._stdout_tail: deque[str] = deque(maxlen=self.tail_lines)
        self._stderr_tail: deque[str] = deque(maxlen=self.tail_lines)
        self._xml = VasprunReader(self.workdir / "vasprun.xml")
        self._outcar = OutcarReader(self.workdir / "OUTCAR")
        self._step = 1  # ionic steps VASP has been given (the first one by POSCAR)
        self._step_positions = np.asarray(system.positions, dtype=float).copy()
        self._step_read = False  # whether step `_step` was waited for and read
        self._prompt: str | None = None  # the prompt VASP is blocked on, if any
        self._paused = False
        self._dead = None
        self._slurm_step_name = f"finetuna-{system.system_id}-{uuid.uuid4().hex[:8]}"
        self._slurm_step_id: str | None = None
        self._launch()

    def _write_inputs(self, system: SystemSpec) -> bool:
        """INCAR, POSCAR, KPOINTS (unless KSPACING alone) and POTCAR; returns whether a POTCAR was written."""
        settings, overridden = interactive_incar(self.incar)
        if overridden:
            warnings.warn(
                f"vasp parent for {system.system_id}: INCAR {', '.join(overridden)} overridden for interactive mode "
                f"({', '.join(f'{k} = {settings[k]}' for k in overridden)})", stacklevel=3,
            )
        try:
            settings = species_incar(settings, self._blocks)
        except ValueError as exc:
            raise ParentSetupError(f"vasp parent for {system.system_id}: {exc}") from None
        (self.workdir / "INCAR").write_text(format_incar(settings))
        scaled = np.asarray(system.positions, dtype=float)[self._order] @ self._inv_cell
        (self.workdir / "POSCAR").write_text(poscar_record(self._cell, self._blocks, scaled))
        if isinstance(self.kpoints, str):
            if self.kpoints.strip().lower() != "gamma":
                raise ParentSetupError(f"vasp parent: kpoints must be [a, b, c] or 'gamma', got {self.kpoints!r}")
            (self.workdir / "KPOINTS").write_text(format_kpoints(None, gamma=True))
        elif self.kpoints is not None or "KSPACING" not in settings:
            try:
                (self.workdir / "KPOINTS").write_text(format_kpoints(self.kpoints, gamma=self.gamma))
            except ValueError as exc:
                raise ParentSetupError(f"vasp parent: {exc}") from None
        root = self.potcar_dir or os.environ.get("VASP_PP_PATH")
        if not root:
            return (self.workdir / "POTCAR").is_file()
        try:
            paths = potcar_files([s for s, _ in self._blocks], root, self.xc, self.setups)
        except (FileNotFoundError, ValueError) as exc:
            raise ParentSetupError(f"vasp parent for {system.system_id}: {exc}") from None
        (self.workdir / "POTCAR").write_bytes(b"".join(p.read_bytes() for p in paths))
        return True

    def _argv(self) -> list[str]:
        """The command as run: a string goes through `/bin/sh -c 'exec ...'` (srun steps get our step name)."""
        if not isinstance(self.command, str):
            argv = [str(a) for a in self.command]
            if Path(argv[0]).name == "srun":
                argv.insert(1, f"--job-name={self._slurm_step_name}")
            return argv
        line = self.command
        if _SRUN.match(line):
            line = _SRUN.sub(lambda m: f"{m.group(0).rstrip()} --job-name={shlex.quote(self._slurm_step_name)} ", line, 1)
        return ["/bin/sh", "-c", f"exec {line}"]

    @property
    def _uses_launcher(self) -> bool:
        """Whether the command starts VASP through an MPI or Slurm launcher (it forwards signals to the ranks)."""
        first = shlex.split(self.command)[0] if isinstance(self.command, str) and self.command.strip() else (
            str(self.command[0]) if not isinstance(self.command, str) else "")
        return Path(first).name in MPI_LAUNCHERS or self._uses_srun

    @property
    def _uses_srun(self) -> bool:
        if isinstance(self.command, str):
            return bool(_SRUN.match(self.command))
        return Path(str(self.command[0])).name == "srun"

    def _launch(self) -> None:
        env = {**os.environ, **self.env}
        # Own process group (killed as a whole) in our session: a stop signal to an orphaned group is discarded.
        # That group is out of reach of Parsl's kill of the worker pool's group: the kernel ends the process
        # when the one that started it dies (parent-death signal), so a killed worker leaves no VASP running.
        death = signal.SIGTERM if self._uses_launcher else signal.SIGKILL  # srun/mpiexec pass SIGTERM on to ranks
        group: dict[str, Any] = {"preexec_fn": _own_group_dying_with_parent(death)}
        try:
            self._proc = subprocess.Popen(
                self._argv(), cwd=self.workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, **group,
            )
        except OSError as exc:
            # no such executable, not executable: the command as set up cannot run; EAGAIN, ENOMEM...: may pass
            error = ParentSetupError if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENOEXEC) else ParentError
            raise error(f"vasp parent for {self._sid}: cannot launch {self.command!r}: {exc}") from None
        self._launched = time.monotonic()
        self._threads = [
            threading.Thread(target=self._pump, args=(self._proc.stdout, "vasp.out", True), daemon=True),
            threading.Thread(target=self._pump, args=(self._proc.stderr, "vasp.err", False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump(self, stream: IO[bytes], log_name: str, is_stdout: bool) -> None:
        """Reader thread: log the stream, keep its tail and (stdout) put lines and prompts on the queue.

        A prompt printed without a newline is recognised from the partial line.
        """
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tail = self._stdout_tail if is_stdout else self._stderr_tail
        partial = ""
        with open(self.workdir / log_name, "a") as log:
            while True:
                try:
                    chunk = stream.read1(65536)
                except (OSError, ValueError):
                    chunk = b""
                if not chunk:
                    break
                text = decoder.decode(chunk)
                log.write(text)
                log.flush()
                *lines, partial = (partial + text).split("\n")
                if partial and is_stdout and classify_prompt(partial):
                    lines.append(partial)
                    partial = ""
                for line in lines:
                    tail.append(line)
                    if is_stdout:
                        self._events.put(("line", line))
            if partial:
                tail.append(partial)
                if is_stdout:
                    self._events.put(("line", partial))
        if is_stdout:
            self._events.put(("eof", None))

    # -------------------------------------------------------------------------------------- calculate

    def calculate(self, positions: np.ndarray) -> Evaluation:
        positions = self._check_positions(positions)
        if self._dead is not None:
            raise ParentError(f"vasp parent for {self._sid}: session is no longer usable: {self._dead}")
        if self._proc is None:
            raise ParentError(f"vasp parent for {self._sid}: calculate() after close()")
        if self._paused:
            self.resume()
        t0 = time.perf_counter()
        try:
            if not self._step_read:  # the first step, started by POSCAR
                result = self._finish_step()
                if max_displacement(positions, self._step_positions, self._cell) < SAME_POSITIONS_A:
                    return replace(result, positions=positions.copy(), wall_s=time.perf_counter() - t0)
            self._send(positions)
            result = self._finish_step()
        except ParentError as exc:
            self._dead = str(exc).splitlines()[0]
            self._kill()
            raise
        return replace(result, positions=positions.copy(), wall_s=time.perf_counter() - t0)

    def _send(self, positions: np.ndarray) -> None:
        """Write `positions` (caller order, Cartesian A) as the record the pending prompt asks for."""
        if self._prompt is None:
            raise ParentError(f"vasp parent for {self._sid}: internal error: VASP is not waiting for positions")
        scaled = positions[self._order] @ self._inv_cell
        if self._prompt == PROMPT_POSITIONS:
            record = positions_record(scaled)
        else:
            record = poscar_record(self._cell, self._blocks, scaled)
        try:
            self._proc.stdin.write(record.encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._exited_error("while positions were written to it") from None
        self._prompt = None
        self._step += 1
        self._step_positions = positions.copy()
        self._step_read = False

    def _finish_step(self) -> Evaluation:
        """Wait for the prompt that ends step `_step`, then read that step's numbers (caller's atom order)."""
        scf_lines = self._wait_prompt()
        output = self._read_step()
        expected = self._step_positions[self._order]
        if output.positions is not None:
            off = max_displacement(output.positions, expected, self._cell)
            if off > SYNC_TOLERANCE_A:
                raise ParentError(
                    f"vasp parent for {self._sid}: out of step: {output.source} step {self._step} was computed "
                    f"{off:.4f} A away from the positions sent (stdin records and ionic steps no longer match)"
                )
        self._step_read = True
        self.last_source = output.source
        forces = np.empty_like(output.forces)
        forces[self._order] = output.forces
        return Evaluation(self._step_positions.copy(), float(output.energy), forces, SOURCE_PARENT,
                          scf_cycles=scf_lines or output.scf_cycles)

    def _wait_prompt(self) -> int:
        """Block until VASP asks for positions; returns the SCF lines printed in the meantime.

        The first step may take startup_timeout_s to show any output, then step_timeout_s; later steps
        step_timeout_s from when their positions were sent.
        """
        first = self._step == 1
        started = not first
        deadline = (self._launched + self.startup_timeout_s) if first else time.monotonic() + self.step_timeout_s
        scf = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout_error(started)
            try:
                kind, line = self._events.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self._proc.poll() is not None and self._events.empty():
                    raise self._exited_error(f"during ionic step {self._step}") from None
                continue
            if kind == "eof":
                raise self._exited_error(f"during ionic step {self._step}")
            if not started:
                started = True
                deadline = time.monotonic() + self.step_timeout_s
            prompt = classify_prompt(line)
            if prompt is not None:
                self._prompt = prompt
                return scf
            if is_scf_line(line):
                scf += 1

    def _read_step(self) -> StepOutput:
        """Step `_step` from vasprun.xml, else OUTCAR; polls up to result_wait_s while files catch up."""
        deadline = time.monotonic() + self.result_wait_s
        n = self.system.n_atoms
        while True:
            output = self._xml.read(self._step, n) or self._outcar.read(self._step, n)
            if output is not None:
                return output
            if time.monotonic() > deadline:
                raise ParentError(
                    f"vasp parent for {self._sid}: VASP finished ionic step {self._step} but neither vasprun.xml "
                    f"nor OUTCAR in {self.workdir} holds its energy and forces after {self.result_wait_s:.0f} s"
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------------------------------ errors

    @property
    def _sid(self) -> str:
        return self.system.system_id if self.system is not None else "?"

    def _tails(self) -> str:
        return (f"\n--- stderr (last lines) ---\n" + "\n".join(self._stderr_tail)
                + "\n--- stdout (last lines) ---\n" + "\n".join(self._stdout_tail))

    def _exited_error(self, when: str) -> ParentError:
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # stdout closed but still running: treat as dead
            self._kill()
            code = self._proc.returncode
        for thread in self._threads:
            thread.join(timeout=2)  # the last stderr lines (forrtl ...) arrive with the exit
        # 126/127: the shell could not run the command (not executable / not found), before VASP said anything
        setup = code in (126, 127) and self._step == 1 and not self._step_read
        hint = ""
        if setup:  # VASP never ran: its inputs (POTCAR) are not to blame
            hint = " (the shell or launcher could not run the command: 127 = not found, 126 = not executable)"
        elif not self._potcar:
            hint = " (no POTCAR was written: set parent.options.potcar_dir or VASP_PP_PATH)"
        return (ParentSetupError if setup else ParentError)(
            f"vasp parent for {self._sid}: VASP exited with code {code} {when}{hint} "
            f"[command: {self.command}; workdir: {self.workdir}; {self._logs()}]" + self._tails()
        )

    def _logs(self) -> str:
        earlier = f"; earlier attempts' in {LOG_FILES[0]}.1..{self.attempt - 1}" if self.attempt > 1 else ""
        return f"output of attempt {self.attempt}: {', '.join(LOG_FILES)}{earlier}"

    def _timeout_error(self, started: bool) -> ParentError:
        self._kill()
        for thread in self._threads:
            thread.join(timeout=2)
        if not started:
            what = f"VASP printed nothing within startup_timeout_s = {self.startup_timeout_s:g} s of its launch"
        else:
            what = f"ionic step {self._step} did not finish within step_timeout_s = {self.step_timeout_s:g} s"
        return ParentError(
            f"vasp parent for {self._sid}: {what} (silent or hung; its process group was killed) "
            f"[command: {self.command}; workdir: {self.workdir}; {self._logs()}]" + self._tails()
        )

    # ------------------------------------------------------------------------------- pause and stop

    def pause(self) -> None:
        """Stop VASP between calls: SIGTSTP to the launcher, or `scancel -s TSTP <job>.<step>` for srun.

        Not while VASP still computes its first step (a call answered from the journal on resume): its
        startup_timeout_s would count the paused time. ParentError when the signal cannot be sent."""
        if self._proc is None or self._paused or self._proc.poll() is not None or not self._step_read:
            return
        self._signal("TSTP")
        self._paused = True

    def resume(self) -> None:
        """Undo pause(): SIGCONT (or `scancel -s CONT`)."""
        if self._proc is None or not self._paused:
            return
        if self._proc.poll() is None:
            self._signal("CONT")
        self._paused = False

    def _signal(self, name: str) -> None:
        """SIG<name> to VASP's launcher (or its srun step); ParentError whatever stops it (a process gone, no
        scancel/squeue, a Slurm controller that does not answer), so a failed pause stays a warning."""
        try:
            self._send_signal(name)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ParentError(
                f"vasp parent for {self._sid}: cannot send SIG{name}: {type(exc).__name__}: {exc}") from exc

    def _send_signal(self, name: str) -> None:
        if not self._uses_srun:
            os.kill(self._proc.pid, getattr(signal, f"SIG{name}"))
            return
        step = self._slurm_step()
        proc = subprocess.run(["scancel", "-s", name, step], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise ParentError(f"vasp parent for {self._sid}: scancel -s {name} {step} failed: {proc.stderr.strip()}")

    def _slurm_step(self) -> str:
        """`<jobid>.<stepid>` of our srun step, found by the step name we gave it (`--job-name`)."""
        if self._slurm_step_id is not None:
            return self._slurm_step_id
        argv = ["squeue", "-h", "-s", "-o", "%i %j"]
        if os.environ.get("SLURM_JOB_ID"):
            argv += ["-j", os.environ["SLURM_JOB_ID"]]
        deadline = time.monotonic() + 30
        while True:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            for line in proc.stdout.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[1] == self._slurm_step_name:
                    self._slurm_step_id = parts[0]
                    return parts[0]
            if time.monotonic() > deadline:
                raise ParentError(
                    f"vasp parent for {self._sid}: no Slurm step named {self._slurm_step_name} in `{' '.join(argv)}` "
                    f"(rc {proc.returncode}: {proc.stderr.strip()})"
                )
            time.sleep(1)

    def close(self) -> None:
        """Stop VASP gracefully (STOPCAR + one more position record), kill its process group if it lingers."""
        proc = self._proc
        if proc is None:
            super().close()
            return
        try:
            if proc.poll() is None and self._dead is None:
                if self._paused:
                    self.resume()
                (self.workdir / "STOPCAR").write_text("LABORT = .TRUE.\n")
                deadline = time.monotonic() + self.stop_timeout_s
                try:
                    self._feed_for_stop(deadline)
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except (ParentError, subprocess.TimeoutExpired):
                    pass
        finally:
            self._kill()
            self.returncode = proc.returncode
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    stream.close()
                except OSError:
                    pass
            for thread in self._threads:
                thread.join(timeout=2)
            self._proc = None
            super().close()

    def _feed_for_stop(self, deadline: float) -> None:
        """Let VASP reach its STOPCAR check: answer the pending prompt (waiting for it first if need be)."""
        if self._prompt is None:
            while time.monotonic() < deadline:
                try:
                    kind, line = self._events.get(timeout=min(0.5, max(0.01, deadline - time.monotonic())))
                except queue.Empty:
                    if self._proc.poll() is not None:
                        return
                    continue
                if kind == "eof":
                    return
                if classify_prompt(line):
                    self._prompt = classify_prompt(line)
                    break
            else:
                return
        self._send(self._step_positions)

    def _kill(self) -> None:
        """SIGCONT + SIGTERM, then SIGKILL, to the whole process group (ranks the launcher left behind too)."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is not None:
            _signal_group(proc.pid, signal.SIGKILL)  # stragglers of an exited launcher, if any
            return
        _signal_group(proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def keep_earlier_logs(workdir: Path) -> int:
    """Move an earlier attempt's vasp.out/vasp.err to vasp.out.N/vasp.err.N (N = 1, 2, ...); returns this attempt's number."""
    n = 1
    while any((workdir / f"{name}.{n}").exists() for name in LOG_FILES):
        n += 1
    current = [workdir / name for name in LOG_FILES if (workdir / name).exists()]
    if not current:
        return n
    for path in current:
        path.rename(path.with_name(f"{path.name}.{n}"))
    return n + 1


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
