"""Parent-call costs: GPAW warm session vs cold start on one replayed path, and the socket bridge's overhead.

    OMP_NUM_THREADS=1 python benchmarks/parents.py [--calls 10] [--bridge-calls 200] [--out benchmarks/parents.md]

(a) A 10-step BFGS path of a small slab is made once with EMT, then the same positions are sent to a GPAW
    session kept warm (one calculator) and to a cold one (a new calculator each call): SCF iterations and
    wall seconds per call. (b) EMTSession.calculate called directly vs the same calls through the
    driver <-> session bridge (ParentServer + serve_session, the session in another process), unix and tcp.
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

from finetuna_parsl.records import SystemSpec  # noqa: E402
from finetuna_parsl.parents import make_parent  # noqa: E402
from finetuna_parsl.parents.bridge import BridgeAddress, ParentServer, serve_session  # noqa: E402
from finetuna_parsl.systems import demo_systems  # noqa: E402

GPAW_OPTIONS = {"mode": "pw", "ecut": 350.0, "kpts": [2, 2, 1], "smearing": 0.1, "xc": "PBE"}


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
    """Run both sections, print the tables and write the markdown file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10, help="GPAW calls on the replayed path")
    parser.add_argument("--bridge-calls", type=int, default=200, help="timed EMT calls per bridge mode")
    parser.add_argument("--out", default=str(Path(__file__).with_name("parents.md")))
    parser.add_argument("--workdir", default="runs/bench-parents", help="GPAW logs go here")
    parser.add_argument("--skip-gpaw", action="store_true", help="only the bridge section")
    args = parser.parse_args(argv)
    command = "OMP_NUM_THREADS=1 python benchmarks/parents.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["# Parent-call costs", "", f"Made by `{command.strip()}` on {started}."]
    body = [] if args.skip_gpaw else gpaw_section(args.calls, Path(args.workdir))
    body += bridge_section(args.bridge_calls)
    lines += [f"Machine: {machine()}.", "Wall seconds grow when the load exceeds the cores (other work shared this "
              "machine); the warm/cold ratios are the comparable numbers.", "", *body]
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
