"""Parent-call costs: GPAW warm vs cold, the socket bridge's overhead, and pausing the parent while learning.

    OMP_NUM_THREADS=1 python benchmarks/parents.py [--sections abcd] [--calls 10] [--bridge-calls 200]
        [--pause-rounds 3] [--pause-tasks 5] [--out benchmarks/parents.md]

(a) A 10-step BFGS path of a small slab is made once with EMT, then the same positions are sent to a GPAW
    session kept warm (one calculator) and to a cold one (a new calculator each call): SCF iterations and
    wall seconds per call. (b) EMTSession.calculate called directly vs the same calls through the
    driver <-> session bridge (ParentServer + serve_session, the session in another process), unix and tcp.
(c) parent.pause_while_learning: the wall time of a real learn task (propose(): fine-tune the shipped surrogate
    on one parent point, then its surrogate segment) run beside a CPU-busy fake VASP session (tests/fake_vasp.py
    with FAKE_VASP_SPIN = one busy rank per core) that sits between calls paused, or running, or beside no
    parent at all; the three interleaved in rounds in one run. Takes about two minutes on 2 cores.
(d) Warm vs cold at the same positions (finetuna_parsl/parents/verify.py, `finetuna-parsl verify-parent`) for EMT,
    SevenNet-0, CHGNet, GPAW and CP2K (kind ase, Debian's cp2k_shell), each where installed.

--sections runs only the sections named (e.g. `--sections c`) and replaces just those in --out, keeping the
others as they were; each section says the command, date and machine that made it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.calculators.emt import EMT
from ase.optimize import BFGS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small_slabs import small_slabs  # noqa: E402

from finetuna_parsl.learner.state import LearnerState  # noqa: E402
from finetuna_parsl.records import LearnerSettings, SystemSpec  # noqa: E402
from finetuna_parsl.parents import make_parent  # noqa: E402
from finetuna_parsl.parents.bridge import BridgeAddress, ParentServer, serve_session  # noqa: E402
from finetuna_parsl.systems import demo_systems  # noqa: E402

GPAW_OPTIONS = {"mode": "pw", "ecut": 350.0, "kpts": [2, 2, 1], "smearing": 0.1, "xc": "PBE"}
FAKE_VASP = Path(__file__).resolve().parents[1] / "tests" / "fake_vasp.py"
TITLE = "# Parent-call costs"
INTRO = ("Each section names the command, date and machine that made it. Wall seconds grow when the load exceeds "
         "the cores (other work shared this machine); the ratios within a section are the comparable numbers.")


@dataclass
class Replay:
    """One session's answers along the path: SCF iterations and wall seconds per call."""

    label: str
    scf: list[int]
    wall: list[float]
    energies: list[float]


def relaxation_path(n: int) -> tuple[SystemSpec, list[np.ndarray]]:
    """The first small slab and the positions of its first n BFGS steps with EMT (the path to replay)."""
    atoms = small_slabs()[0]
    system = SystemSpec.from_atoms("O-Al100", atoms)
    atoms.calc = EMT()
    points: list[np.ndarray] = []
    optimizer = BFGS(atoms, logfile=None, maxstep=0.1)
    optimizer.attach(lambda: points.append(atoms.positions.copy()))
    optimizer.run(fmax=1e-4, steps=n - 1)
    return system, points[:n]


def replay(system: SystemSpec, points: list[np.ndarray], warm: bool, workdir: Path) -> Replay:
    """Send every point of the path to one GPAW session (warm, or cold per call)."""
    session = make_parent("gpaw", workdir=workdir, warm=warm, **GPAW_OPTIONS)
    session.start(system)
    results = [session.calculate(p) for p in points]
    session.close()
    return Replay("warm (one live session)" if warm else "cold (new calculator per call)",
                  [r.scf_cycles for r in results], [r.wall_s for r in results], [r.energy for r in results])


def gpaw_section(calls: int, workdir: Path) -> list[str]:
    """Markdown lines for (a): per-call and total SCF iterations and wall seconds, warm vs cold."""
    system, points = relaxation_path(calls)
    steps = [float(np.abs(b - a).max()) for a, b in zip(points, points[1:])]
    cold = replay(system, points, warm=False, workdir=workdir / "cold")
    warm = replay(system, points, warm=True, workdir=workdir / "warm")
    max_de = max(abs(a - b) for a, b in zip(warm.energies, cold.energies))
    lines = [
        f"## (a) GPAW warm session vs cold start, {len(points)} calls on one replayed path",
        "",
        f"System: {system.formula} ({system.n_atoms} atoms, 2x2x2 Al(100), bottom layer fixed; "
        "`benchmarks/small_slabs.py`). Path: the first "
        f"{len(points)} positions of an EMT BFGS relaxation (largest atom move per step "
        f"{min(steps):.3f}-{max(steps):.3f} A), replayed identically to both sessions.",
        f"GPAW {_gpaw_version()}: {GPAW_OPTIONS}. Warm and cold energies agree to {max_de:.1e} eV.",
        "",
        "| call | SCF warm | SCF cold | wall s warm | wall s cold |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for i in range(len(points)):
        lines.append(f"| {i + 1} | {warm.scf[i]} | {cold.scf[i]} | {warm.wall[i]:.2f} | {cold.wall[i]:.2f} |")
    lines.append(f"| **total** | **{sum(warm.scf)}** | **{sum(cold.scf)}** | **{sum(warm.wall):.1f}** | "
                 f"**{sum(cold.wall):.1f}** |")
    rest = slice(1, None)  # calls 2..n: where warm can differ from cold (call 1 is a cold start for both)
    lines += [
        "",
        f"Warm/cold ratio, all calls: SCF iterations {sum(warm.scf) / sum(cold.scf):.2f}, "
        f"wall time {sum(warm.wall) / sum(cold.wall):.2f}. Calls 2-{len(points)} only: SCF "
        f"{sum(warm.scf[rest]) / sum(cold.scf[rest]):.2f}, wall {sum(warm.wall[rest]) / sum(cold.wall[rest]):.2f}.",
        "",
    ]
    return lines


def _gpaw_version() -> str:
    import gpaw

    return gpaw.__version__


def _serve(system: SystemSpec, address: BridgeAddress) -> None:
    """Child process: one EMT session answering over the bridge until the driver says exit."""
    serve_session(make_parent("emt"), system, address, timeout_s=120)


def bridge_timing(mode: str, system: SystemSpec, points: list[np.ndarray], warmup: int) -> tuple[float, float]:
    """Seconds to connect + first answer, and mean seconds per call after `warmup` calls, via the bridge."""
    server = ParentServer(mode=mode, timeout_s=120)
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(system, server.bridge_address))
    t0 = time.perf_counter()
    process.start()
    server.call(points[0], system.cell)
    first = time.perf_counter() - t0
    for p in points[1:warmup]:
        server.call(p, system.cell)
    t0 = time.perf_counter()
    for p in points[warmup:]:
        server.call(p, system.cell)
    per_call = (time.perf_counter() - t0) / len(points[warmup:])
    server.stop()
    process.join(timeout=30)
    return first, per_call


def bridge_section(calls: int, warmup: int = 10) -> list[str]:
    """Markdown lines for (b): ms per EMT call direct vs through the bridge (unix, tcp)."""
    os.environ.setdefault("FINETUNA_DRIVER_ADDRESS", "127.0.0.1")  # tcp over loopback only
    system = demo_systems(1)[0]
    rng = np.random.default_rng(0)
    points = [system.positions + rng.normal(0, 0.02, system.positions.shape) for _ in range(calls + warmup)]
    direct = make_parent("emt")
    direct.start(system)
    for p in points[:warmup]:
        direct.calculate(p)
    t0 = time.perf_counter()
    for p in points[warmup:]:
        direct.calculate(p)
    direct_ms = 1e3 * (time.perf_counter() - t0) / calls
    rows = [("direct `EMTSession.calculate` (same process)", None, direct_ms)]
    for mode in ("unix", "tcp"):
        first, per_call = bridge_timing(mode, system, points, warmup)
        rows.append((f"bridge, {mode} socket, session in another process", first, 1e3 * per_call))
    lines = [
        f"## (b) Socket bridge round trip per call (EMT, {system.formula}, {system.n_atoms} atoms)",
        "",
        f"{calls} calls timed after {warmup} warm-up calls; the same positions on every path.",
        "",
        "| path | ms per call | overhead ms per call | start + first call s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, first, ms in rows:
        overhead = "-" if first is None else f"{ms - direct_ms:.2f}"
        start = "-" if first is None else f"{first:.2f}"
        lines.append(f"| {label} | {ms:.2f} | {overhead} | {start} |")
    lines += ["", "Start + first call includes spawning the session's Python process and importing the package.",
              "Before the bridge set TCP_NODELAY (commit 58ec4a6) the tcp path cost ~95 ms per call: the protocol's",
              "small header/data writes waited on delayed ACKs (Nagle).", ""]
    return lines


# ------------------------------------------------------------------------- (c) pause while learning

#: The three conditions of (c): what the parent does while the learn task runs (None: there is no parent).
PAUSE_CONDITIONS = {"none": "no parent session", "running": "fake VASP running between calls (pausing off)",
                    "paused": "fake VASP paused between calls (pausing on)"}


@dataclass
class LearnTimes:
    """Per learn task: wall and own CPU seconds, the parent's CPU seconds meanwhile, the parent call after it (s)."""

    wall: list[float]
    cpu: list[float]
    parent_cpu: list[float]
    call: list[float]


def _serve_fake_vasp(system: SystemSpec, address: BridgeAddress, workdir: str, spin: int, pausing: bool) -> None:
    """Child process (a parent worker): a fake VASP session with `spin` busy ranks, answering over the bridge."""
    from finetuna_parsl.parents.vasp import VaspInteractiveSession

    session = VaspInteractiveSession(workdir=workdir, command=[sys.executable, str(FAKE_VASP)],
                                     env={"FAKE_VASP_SPIN": str(spin)}, step_timeout_s=300)
    serve_session(session, system, address, timeout_s=600, pause_between_calls=pausing)


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of process group `pgid` (from /proc)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def learn_state(model) -> LearnerState:
    """The first demo system after its first parent (EMT) point: the next propose() fine-tunes on that point."""
    from finetuna_parsl.learner.online import propose, record_parent

    system = demo_systems(1)[0]
    state = LearnerState(system=system, settings=LearnerSettings())
    first = propose(state, model)
    parent = make_parent("emt")
    parent.start(system)
    answer = parent.calculate(first.positions)
    return record_parent(state, first, answer)


def time_learn_tasks(condition: str, state: LearnerState, model, tasks: int, workdir: Path, spin: int,
                     times: LearnTimes) -> None:
    """`tasks` learn tasks beside the parent of `condition`, each followed by a parent call; appends to `times`.

    The session is served in another process as on a parent worker; after its first answer it sits between
    calls (paused or running) while this process runs propose(), exactly as the driver alternates them.
    """
    from finetuna_parsl.learner.online import propose

    server = process = pgid = None
    if condition != "none":
        server = ParentServer(mode="unix", timeout_s=600)
        process = multiprocessing.get_context("spawn").Process(
            target=_serve_fake_vasp, args=(state.system, server.bridge_address, str(workdir), spin,
                                           condition == "paused"))
        process.start()
        server.call(state.parent_points[-1].positions, state.system.cell)
        pgid = int((workdir / "fake_vasp.pid").read_text())  # the session starts it in its own process group
    try:
        for _ in range(tasks):
            parent0 = group_cpu_s(pgid) if pgid else 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            proposal = propose(state, model)
            times.wall.append(time.perf_counter() - t0)
            times.cpu.append(time.process_time() - c0)
            times.parent_cpu.append(group_cpu_s(pgid) - parent0 if pgid else 0.0)
            if server is not None:
                t0 = time.perf_counter()
                server.call(proposal.positions, state.system.cell)  # resumes the paused parent first
                times.call.append(time.perf_counter() - t0)
    finally:
        if server is not None:
            server.stop()
            process.join(timeout=60)


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def pause_section(rounds: int, tasks: int, workdir: Path) -> list[str]:
    """Markdown lines for (c): learn-task wall time beside no parent, a running and a paused fake VASP."""
    import torch

    from finetuna_parsl.surrogate import load_surrogate

    torch.set_num_threads(1)  # as a learn worker on the shipped sites (OMP_NUM_THREADS=1)
    spin = os.cpu_count() or 1  # a VASP launched on every core of the node, as `mpirun -np <cores>` would
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    model = load_surrogate("shipped", device="cpu")
    state = learn_state(model)
    from finetuna_parsl.learner.online import propose

    warm = propose(state, model)  # the first fine-tune also computes the point's embeddings; not timed
    times = {c: LearnTimes([], [], [], []) for c in PAUSE_CONDITIONS}
    order = list(PAUSE_CONDITIONS)
    for r in range(rounds):  # interleaved, alternating the order, so a change of load hits every condition
        for condition in order if r % 2 == 0 else order[::-1]:
            time_learn_tasks(condition, state, model, tasks, workdir / f"{condition}-{r}", spin, times[condition])
    base = _median(times["none"].wall)
    system = state.system
    lines = [
        "## (c) Pausing the parent while learning (parent.pause_while_learning)",
        "",
        f"Learn task: `propose()` as the learn executor runs it: fine-tune the shipped surrogate on {system.formula}'s "
        f"({system.n_atoms} atoms, demo system 0) first parent point ({LearnerSettings().k}-step k-steps rule, "
        f"{model.settings.epochs} epochs), then its surrogate segment ({len(warm.segment)} steps); 1 torch thread. "
        f"Parent: `tests/fake_vasp.py` with FAKE_VASP_SPIN={spin} (one busy rank per core, as VASP's MPI ranks "
        "busy-poll while VASP waits at its stdin prompt), served by `serve_session` in another process, paused or "
        "not by `pause_between_calls`. Each learn task is followed by a parent call (which resumes a paused "
        f"parent), as in a relaxation. {rounds} rounds x {tasks} tasks per condition, interleaved; load average "
        f"before: {load_before}.",
        "",
        "| parent between calls | learn task wall s, median (min-max) | vs no parent | learn task CPU s | "
        "parent CPU s during the task | parent call s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for condition, label in PAUSE_CONDITIONS.items():
        t = times[condition]
        call = f"{_median(t.call):.3f}" if t.call else "-"
        parent_cpu = f"{_median(t.parent_cpu):.2f}" if condition != "none" else "-"
        lines.append(f"| {label} | {_median(t.wall):.2f} ({min(t.wall):.2f}-{max(t.wall):.2f}) | "
                     f"{_median(t.wall) / base:.2f}x | {_median(t.cpu):.2f} | {parent_cpu} | {call} |")
    running, paused = _median(times["running"].wall), _median(times["paused"].wall)
    cpu_running, cpu_paused = _median(times["running"].cpu), _median(times["paused"].cpu)
    lines += [
        "",
        f"Pausing cut the learn task's median wall time from {running:.2f} s to {paused:.2f} s "
        f"({running / paused:.2f}x faster) on {spin} cores. The learn task does the same work in every row; beside a "
        "running parent it gets a share of the cores only, and even its own CPU seconds grow "
        f"({cpu_running:.2f} vs {cpu_paused:.2f} s: time-shared cores lose their caches, and a VM's vCPUs may be "
        "SMT siblings). A paused parent used no CPU during the task (its ranks stopped, state T); a running one spun "
        "on every core it could get. The parent-call column includes the SIGCONT before and the SIGTSTP after each "
        "call when pausing. Other work shared this machine (load average above): it slows every row alike.",
        "",
    ]
    return lines


# ------------------------------------------------------------------------------------------ output


#: Parents checked warm against cold in section (d): label -> (kind, session options), each skipped with its reason
#: when its code is not installed here. CP2K: Debian's cp2k + cp2k-data, Gamma point, PBE, MOLOPT basis.
def warm_cold_parents() -> dict[str, tuple[str, dict]]:
    cp2k_data = "/usr/share/cp2k"
    return {
        "EMT (kind emt)": ("emt", {}),
        "EMT (kind ase)": ("ase", {"calculator": "ase.calculators.emt:EMT", "options": {}}),
        "SevenNet-0 (kind ase)": ("ase", {"calculator": "sevenn.calculator:SevenNetCalculator",
                                          "options": {"model": "7net-0", "device": "cpu"}, "threads": 1}),
        "CHGNet 0.4 (kind ase)": ("ase", {"calculator": "chgnet.model.dynamics:CHGNetCalculator",
                                          "options": {"use_device": "cpu"}, "threads": 1}),
        "GPAW pw 350 eV (kind gpaw)": ("gpaw", dict(GPAW_OPTIONS)),
        "CP2K cp2k_shell (kind ase)": ("ase", {"calculator": "ase.calculators.cp2k:CP2K", "options": {
            "command": "env OMP_NUM_THREADS=1 cp2k_shell", "basis_set_file": f"{cp2k_data}/BASIS_MOLOPT",
            "potential_file": f"{cp2k_data}/GTH_POTENTIALS", "basis_set": "DZVP-MOLOPT-SR-GTH",
            "pseudo_potential": "auto", "xc": "PBE", "cutoff": 3400.0, "max_scf": 300,
            "inp": ("&FORCE_EVAL\n&DFT\n&SCF\nEPS_SCF 1.0E-7\nADDED_MOS 40\n&SMEAR ON\n"
                    "METHOD FERMI_DIRAC\nELECTRONIC_TEMPERATURE [K] 500\n&END SMEAR\n&MIXING\n"
                    "METHOD BROYDEN_MIXING\nALPHA 0.2\nNBROYDEN 8\n&END MIXING\n&END SCF\n&END DFT\n&END FORCE_EVAL")}}),
    }


def warm_cold_section(workdir: Path, displacement: float = 0.02) -> list[str]:
    """(d) finetuna_parsl.parents.verify.warm_vs_cold (what `finetuna-parsl verify-parent` runs) for each parent
    of warm_cold_parents() on the first small slab (pbc all True, as OC20 slabs), every free atom moved
    `displacement` A between the warm session's two calls."""
    from finetuna_parsl.parents import ParentError
    from finetuna_parsl.parents.verify import warm_vs_cold

    atoms = small_slabs()[0]
    atoms.pbc = True
    system = SystemSpec.from_atoms("O-Al100", atoms)
    rows = []
    for label, (kind, options) in warm_cold_parents().items():
        folder = workdir / "warm-cold" / label.split()[0].lower()
        t0 = time.perf_counter()
        try:
            check = warm_vs_cold(lambda tag: make_parent(kind, workdir=folder / tag, **options), system,
                                 displacement=displacement)
        except (ParentError, ImportError) as exc:
            rows.append(f"| {label} | not run here: {str(exc).splitlines()[0][:120]} | | | | |")
            continue
        verdict = "agree" if check.ok else "**differ**"
        rows.append(f"| {label} | {verdict} | {check.energy_diff:.1e} | {check.max_force_diff:.1e} | "
                    f"{check.warm_first_scf} / {check.warm_scf} / {check.cold_scf} | {time.perf_counter() - t0:.1f} |")
        print(rows[-1], flush=True)
    return [
        "## (d) Warm session vs cold calculation at the same positions (`finetuna-parsl verify-parent`)",
        "",
        f"System: {system.system_id} (Al8O, 2x2x2 Al(100), bottom layer fixed, pbc all True). A warm session answers "
        f"at the start and after every free atom moved {displacement} A; a new (cold) session answers at the moved "
        "positions; verify-parent refuses a parent whose answers there differ by more than 1e-3 eV or 0.01 eV/A. "
        "SCF cycles as the parent reports them (0: none reported).",
        "",
        "| parent | warm vs cold | abs dE (eV) | max abs dF (eV/A) | SCF: warm 1st / warm 2nd / cold | wall s (3 calls) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ]


def merge_sections(old: str, new: dict[str, list[str]]) -> str:
    """The markdown with sections `## (x) ...` of `new` (keyed by x) replacing or joining those of `old`."""
    sections: dict[str, list[str]] = {}
    key = None
    for line in old.splitlines():
        if line.startswith("## (") and ")" in line:
            key = line[4:line.index(")")]
            sections[key] = []
        if key is not None:
            sections[key].append(line)
    sections.update(new)
    body = ["\n".join(sections[k]).strip("\n") for k in sorted(sections)]
    return "\n\n".join([TITLE, INTRO, *body]) + "\n"


def machine() -> str:
    """nproc, CPU model and load: what the numbers were measured on."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, Python "
            f"{platform.python_version()}, OMP_NUM_THREADS={threads}, load average at the end {load}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections, print their tables and write them into the markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10, help="GPAW calls on the replayed path")
    parser.add_argument("--bridge-calls", type=int, default=200, help="timed EMT calls per bridge mode")
    parser.add_argument("--out", default=str(Path(__file__).with_name("parents.md")))
    parser.add_argument("--workdir", default="runs/bench-parents", help="GPAW logs go here")
    parser.add_argument("--sections", default="abc", help="which sections to run: a GPAW, b bridge, c pause, d warm vs cold")
    parser.add_argument("--pause-rounds", type=int, default=3, help="(c) interleaved rounds of the three conditions")
    parser.add_argument("--pause-tasks", type=int, default=5, help="(c) learn tasks per condition and round")
    args = parser.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/parents.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    workdir = Path(args.workdir).resolve()
    runs = {
        "a": lambda: gpaw_section(args.calls, workdir),
        "b": lambda: bridge_section(args.bridge_calls),
        "c": lambda: pause_section(args.pause_rounds, args.pause_tasks, workdir / "pause"),
        "d": lambda: warm_cold_section(workdir),
    }
    unknown = set(args.sections) - set(runs)
    if unknown:
        parser.error(f"--sections: unknown {''.join(sorted(unknown))} (known: abcd)")
    new = {}
    for key in sorted(set(args.sections)):
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        heading, *rest = runs[key]()
        new[key] = [heading, "", f"Made by `{command.strip()}` on {started}. Machine: {machine()}.", *rest]
        print("\n".join(new[key]), flush=True)
    out = Path(args.out)
    out.write_text(merge_sections(out.read_text() if out.exists() else "", new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
