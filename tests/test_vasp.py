"""VASP interactive session against tests/fake_vasp.py: real subprocesses speaking VASP's stdin/stdout protocol.

The fake computes EMT, so every answer is checked against ASE's EMT at the same positions.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.optimize import BFGS

from conftest import TESTS_DIR
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.parents import ParentError, ParentSetupError, make_parent
from finetuna_parsl.parents.bridge import ParentServer, serve_session
from finetuna_parsl.parents.vasp import VaspInteractiveSession
from finetuna_parsl.parents.vasp_io import species_order

FAKE = str(TESTS_DIR / "fake_vasp.py")


def slab_system(system_id: str = "cu-o") -> SystemSpec:
    """Cu(111) 2x2x3 with an O adatom; the bottom two layers fixed (13 atoms)."""
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.set_constraint(FixAtoms(mask=[atom.tag >= 2 for atom in slab]))
    return SystemSpec.from_atoms(system_id, slab)


def mixed_system() -> SystemSpec:
    """Cu slab with CO and an O adatom, atoms shuffled so the species interleave (O C Cu O Cu ...)."""
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    add_adsorbate(slab, molecule("CO"), 1.9, "ontop", mol_index=1)
    add_adsorbate(slab, "O", 1.6, "fcc")
    order = np.random.default_rng(3).permutation(len(slab))
    shuffled = slab[order]
    shuffled.set_constraint(FixAtoms(mask=[atom.tag == 2 for atom in shuffled]))
    symbols = shuffled.get_chemical_symbols()
    assert species_order(symbols) != list(range(len(symbols)))  # VASP's order differs from ours
    return SystemSpec.from_atoms("cu-co-o", shuffled)


def emt(system: SystemSpec, positions: np.ndarray) -> tuple[float, np.ndarray]:
    atoms = system.to_atoms(positions)
    atoms.set_constraint()
    atoms.calc = EMT()
    return float(atoms.get_potential_energy()), atoms.get_forces()


def session(workdir: Path, **env: str | float) -> VaspInteractiveSession:
    options = {k: v for k, v in env.items() if k.endswith("_s")}
    fake_env = {k: str(v) for k, v in env.items() if not k.endswith("_s")}
    options.setdefault("step_timeout_s", 60.0)
    return VaspInteractiveSession(workdir=workdir, command=[sys.executable, FAKE], env=fake_env, **options)


def moved(system: SystemSpec, step: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    positions = system.positions.copy()
    free = ~system.fixed
    positions[free] += rng.normal(scale=step, size=(free.sum(), 3))
    return positions


class SessionCalculator(Calculator):
    """Drives a parent session from an ASE optimizer."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, parent: VaspInteractiveSession) -> None:
        super().__init__()
        self.parent = parent
        self.calls: list[tuple[np.ndarray, float, np.ndarray, int]] = []

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        result = self.parent.calculate(atoms.positions)
        self.calls.append((atoms.positions.copy(), result.energy, result.forces, result.scf_cycles))
        self.results = {"energy": result.energy, "forces": result.forces}


def test_bfgs_relaxation_through_the_interactive_protocol(tmp_path):
    system = slab_system()
    workdir = tmp_path / "vasp"
    workdir.mkdir()
    (workdir / "STOPCAR").write_text("LABORT = .TRUE.\n")  # left by an earlier run: must not stop this one
    (workdir / "OUTCAR").write_text("stale\n  energy  without entropy= -1.0  energy(sigma->0) = -1.0\n")
    parent = session(workdir)
    parent.start(system)
    atoms = system.to_atoms()
    atoms.calc = SessionCalculator(parent)
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.05, steps=60)
    calls = atoms.calc.calls
    parent.close()

    assert parent.returncode == 0 and (workdir / "STOPCAR").read_text().strip() == "LABORT = .TRUE."
    assert (workdir / "vasp.out").read_text().count("running on") == 1  # one VASP process for the whole relaxation
    assert len(calls) >= 5
    for positions, energy, forces, _ in calls:
        e_ref, f_ref = emt(system, positions)
        assert abs(energy - e_ref) < 1e-6
        np.testing.assert_allclose(forces, f_ref, atol=1e-6)
    scf = [c[3] for c in calls]
    assert scf[0] == 8 and max(scf[1:]) < 8  # warm steps need fewer SCF cycles than the cold first one
    # each call counts its own step's SCF lines: the fake's rule (4 / 5 / 7 by how far the atoms moved)
    moves = [np.abs(b[0] - a[0]).max() for a, b in zip(calls, calls[1:])]
    assert scf[1:] == [4 if d < 0.02 else 5 if d < 0.1 else 7 for d in moves]
    assert 4 in scf and scf[-1] < scf[0]
    assert (workdir / "vasprun.xml").read_text().count("<calculation>") == len(calls)
    assert "</modeling>" in (workdir / "vasprun.xml").read_text()  # VASP finished its files on STOPCAR


@pytest.mark.parametrize("version", ["6.3.2", "6.4.2"])
def test_species_reordered_for_vasp_and_back_with_both_prompt_styles(tmp_path, monkeypatch, version):
    system = mixed_system()
    pp = tmp_path / "pp"
    for name in ("C", "O", "Cu_pv"):  # a POTCAR per species; the fake checks their order against POSCAR
        (pp / "potpaw_PBE" / name).mkdir(parents=True)
        (pp / "potpaw_PBE" / name / "POTCAR").write_text(f"  PAW_PBE {name} 08Apr2002\n   TITEL  = PAW_PBE {name} 08Apr2002\n")
    monkeypatch.setenv("VASP_PP_PATH", str(pp))
    parent = VaspInteractiveSession(
        workdir=tmp_path / "vasp", command=[sys.executable, FAKE], setups={"Cu": "_pv"}, kpoints=[2, 2, 1],
        step_timeout_s=60, env={"FAKE_VASP_VERSION": version},
    )
    parent.start(system)
    symbols = system.to_atoms().get_chemical_symbols()
    poscar = (tmp_path / "vasp" / "POSCAR").read_text().splitlines()
    seen = list(dict.fromkeys(symbols))
    assert poscar[5].split() == seen and poscar[6].split() == [str(symbols.count(s)) for s in seen]
    assert "TITEL  = PAW_PBE Cu_pv" in (tmp_path / "vasp" / "POTCAR").read_text()
    try:
        for k, positions in enumerate([system.positions, moved(system, 0.05, 1), moved(system, 0.02, 2)]):
            result = parent.calculate(positions)
            e_ref, f_ref = emt(system, positions)
            assert abs(result.energy - e_ref) < 1e-6
            np.testing.assert_allclose(result.forces, f_ref, atol=1e-6)  # caller's atom order, not VASP's
        with pytest.raises(ParentError, match="change of composition"):
            parent.calculate(system.positions[:-1])
        assert parent.calculate(system.positions).energy == pytest.approx(emt(system, system.positions)[0], abs=1e-6)
    finally:
        parent.close()
    assert parent.returncode == 0
    out = (tmp_path / "vasp" / "vasp.out").read_text()
    prompt = "POSITIONS AND LATTICE: reading from stdin" if version == "6.4.2" else "POSITIONS: reading from stdin"
    assert out.count(prompt) == 4


def test_missing_potcar_is_named(tmp_path):
    (tmp_path / "pp" / "potpaw_PBE" / "Cu").mkdir(parents=True)
    parent = VaspInteractiveSession(workdir=tmp_path / "vasp", command=[sys.executable, FAKE], potcar_dir=str(tmp_path / "pp"))
    with pytest.raises(ParentError, match=r"cu-o: no POTCAR for Cu at .*potpaw_PBE/Cu/POTCAR"):
        parent.start(slab_system())
    assert not (tmp_path / "vasp" / "fake_vasp.pid").exists()  # nothing was launched


def test_incar_forces_interactive_keys_and_warns(tmp_path):
    user = {"encut": 350, "IBRION": 2, "NSW": 5, "EDIFFG": -0.03, "ISMEAR": 1, "SIGMA": 0.2, "LWAVE": False,
            "ISYM": 0, "KSPACING": 0.5}
    parent = session(tmp_path / "vasp")
    parent.incar = user
    with pytest.warns(UserWarning, match=r"INCAR IBRION, EDIFFG, NSW overridden"):
        parent.start(slab_system())
    try:
        incar = dict(line.replace(" ", "").split("=") for line in (tmp_path / "vasp" / "INCAR").read_text().splitlines()
                     if "=" in line)
        assert incar == {"ENCUT": "350", "IBRION": "-1", "NSW": "10000", "EDIFFG": "0", "ISMEAR": "1", "SIGMA": "0.2",
                         "LWAVE": ".FALSE.", "ISYM": "0", "KSPACING": "0.5", "INTERACTIVE": ".TRUE.", "POTIM": "0.0",
                         "IWAVPR": "11"}
        assert not (tmp_path / "vasp" / "KPOINTS").exists()  # KSPACING alone: VASP makes the mesh
        assert parent.calculate(slab_system().positions).scf_cycles == 8
    finally:
        parent.close()


def test_slow_start_prompt_without_newline_and_a_different_first_geometry(tmp_path):
    system = slab_system()
    parent = session(tmp_path / "vasp", FAKE_VASP_SLOW_START=2, FAKE_VASP_NO_NEWLINE="1", startup_timeout_s=20)
    parent.start(system)
    try:
        first = moved(system, 0.05)  # not the POSCAR geometry: VASP's first step is discarded, these are fed
        result = parent.calculate(first)
        assert result.wall_s > 1.5
        assert abs(result.energy - emt(system, first)[0]) < 1e-6
        result = parent.calculate(system.positions)
        assert abs(result.energy - emt(system, system.positions)[0]) < 1e-6
    finally:
        parent.close()
    assert parent.returncode == 0
    assert (tmp_path / "vasp" / "vasprun.xml").read_text().count("<calculation>") == 3


def test_startup_timeout(tmp_path):
    parent = session(tmp_path / "vasp", FAKE_VASP_SLOW_START=30, startup_timeout_s=1.5)
    parent.start(slab_system())
    t0 = time.monotonic()
    with pytest.raises(ParentError, match=r"cu-o: VASP printed nothing within startup_timeout_s = 1.5 s"):
        parent.calculate(slab_system().positions)
    assert time.monotonic() - t0 < 15
    parent.close()


@pytest.mark.parametrize("calls", [0, 2])
def test_close_stops_vasp_through_stopcar(tmp_path, calls):
    system = slab_system()
    parent = session(tmp_path / "vasp")
    parent.start(system)
    for k in range(calls):
        parent.calculate(moved(system, 0.03, k))
    t0 = time.monotonic()
    parent.close()
    assert time.monotonic() - t0 < 15
    assert parent.returncode == 0  # VASP stopped itself: not killed
    assert (tmp_path / "vasp" / "STOPCAR").read_text() == "LABORT = .TRUE.\n"
    assert "LABORT found in STOPCAR" in (tmp_path / "vasp" / "vasp.out").read_text()
    with pytest.raises(ParentError):
        parent.calculate(system.positions)


def test_crash_mid_step_is_a_clear_error(tmp_path):
    system = slab_system()
    parent = session(tmp_path / "vasp", FAKE_VASP_CRASH_AT=2)
    parent.start(system)
    parent.calculate(system.positions)
    with pytest.raises(ParentError) as info:
        parent.calculate(moved(system, 0.03))
    message = str(info.value)
    assert "vasp parent for cu-o: VASP exited with code 174 during ionic step 2" in message
    assert "forrtl: severe (174): SIGSEGV, segmentation fault occurred" in message
    assert "RMM:" in message or "DAV:" in message  # the stdout tail
    with pytest.raises(ParentError, match="no longer usable"):
        parent.calculate(system.positions)
    parent.close()
    assert parent.returncode == 174


def test_hang_mid_step_times_out_and_kills(tmp_path):
    system = slab_system()
    # The limit also bounds step 1, which must finish: 6 s leaves room for a loaded 2-core machine (2 s did not,
    # with a benchmark running beside the suite).
    parent = session(tmp_path / "vasp", FAKE_VASP_HANG_AT=2, step_timeout_s=6)
    parent.start(system)
    parent.calculate(system.positions)
    pid = int((tmp_path / "vasp" / "fake_vasp.pid").read_text())
    t0 = time.monotonic()
    with pytest.raises(ParentError, match=r"cu-o: ionic step 2 did not finish within step_timeout_s = 6 s"):
        parent.calculate(moved(system, 0.03))
    assert 5.5 < time.monotonic() - t0 < 30
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    parent.close()


@pytest.mark.parametrize(
    "env, sources",
    [
        ({"FAKE_VASP_TRUNCATE_XML_AT": "2"}, ["vasprun.xml", "OUTCAR", "vasprun.xml"]),
        ({"FAKE_VASP_XML_LAG": "1"}, ["OUTCAR", "OUTCAR", "OUTCAR"]),
        ({"FAKE_VASP_TRUNCATE_OUTCAR_AT": "2"}, ["vasprun.xml", "vasprun.xml", "vasprun.xml"]),
    ],
)
def test_results_fall_back_to_outcar(tmp_path, env, sources):
    system = slab_system()
    parent = session(tmp_path / "vasp", result_wait_s=1.0, **env)
    parent.start(system)
    seen = []
    try:
        for k in range(3):
            positions = moved(system, 0.03, k) if k else system.positions
            result = parent.calculate(positions)
            e_ref, f_ref = emt(system, positions)
            assert abs(result.energy - e_ref) < 1e-6
            np.testing.assert_allclose(result.forces, f_ref, atol=1e-5)  # OUTCAR prints 6 decimals
            seen.append(parent.last_source)
    finally:
        parent.close()
    assert seen == sources


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_pause_and_resume_signal_the_launcher(tmp_path):
    system = slab_system()
    log = tmp_path / "signals.log"
    parent = session(tmp_path / "vasp", FAKE_VASP_SIGNAL_LOG=str(log))
    parent.start(system)
    try:
        parent.calculate(system.positions)
        pid = int((tmp_path / "vasp" / "fake_vasp.pid").read_text())
        parent.pause()
        assert _wait_for(lambda: _state(pid) == "T")
        assert log.read_text() == f"{pid} TSTP\n"
        parent.resume()
        assert _wait_for(lambda: _state(pid) != "T")
        assert _wait_for(lambda: log.read_text() == f"{pid} TSTP\n{pid} CONT\n")
        parent.pause()
        assert _wait_for(lambda: _state(pid) == "T")
        result = parent.calculate(moved(system, 0.03))  # a call on a paused session resumes it first
        assert abs(result.energy - emt(system, moved(system, 0.03))[0]) < 1e-6
    finally:
        parent.close()
    assert parent.returncode == 0
    assert log.read_text().split() == [str(pid), "TSTP", str(pid), "CONT"] * 2


def test_no_pause_while_vasp_still_computes_its_first_step(tmp_path):
    """A resumed relaxation's first call may be answered from the journal while VASP computes step 1; pausing
    it then would stall a step that startup_timeout_s is counting. The pause waits for a read step."""
    system = slab_system()
    log = tmp_path / "signals.log"
    parent = session(tmp_path / "vasp", FAKE_VASP_SIGNAL_LOG=str(log))
    parent.start(system)
    try:
        parent.pause()  # step 1 not read yet
        assert not log.exists() or log.read_text() == ""
        parent.calculate(system.positions)
        parent.pause()
        assert _wait_for(lambda: log.exists() and "TSTP" in log.read_text())
    finally:
        parent.close()


def test_a_command_the_shell_cannot_find_is_a_setup_error(tmp_path):
    """A missing program is a setup error (not retried) at start(), naming it, before any input is written; a
    command the shell still cannot run (exit 127) is one too, and VASP's inputs (POTCAR) are not blamed."""
    system = slab_system()
    parent = VaspInteractiveSession(workdir=tmp_path / "vasp", command="/nonexistent/bin/vasp_std -n 4")
    with pytest.raises(ParentSetupError, match="/nonexistent/bin/vasp_std: no such executable"):
        parent.start(system)
    assert not (tmp_path / "vasp" / "INCAR").exists()
    parent = VaspInteractiveSession(workdir=tmp_path / "vasp", command="sh -c 'exit 127'")
    parent.start(system)
    try:
        with pytest.raises(ParentSetupError, match="exited with code 127") as info:
            parent.calculate(system.positions)
        assert "POTCAR" not in str(info.value).splitlines()[0]
    finally:
        parent.close()


@pytest.mark.parametrize("pausing", [True, False], ids=["pausing", "not-pausing"])
def test_a_served_vasp_is_stopped_between_calls_only_when_pausing(tmp_path, pausing):
    """serve_session(pause_between_calls=True) stops VASP once each answer is sent (state T: its MPI ranks would
    otherwise spin while the learner works); the next call runs it again. Off, it is never signalled."""
    system = slab_system()
    log = tmp_path / "signals.log"
    parent = session(tmp_path / "vasp", FAKE_VASP_SIGNAL_LOG=str(log))
    server = ParentServer(mode="unix", timeout_s=60)
    out: dict = {}

    def serve():
        try:
            out["served"] = serve_session(parent, system, server.bridge_address, timeout_s=60,
                                          pause_between_calls=pausing)
        except Exception as exc:  # noqa: BLE001 - reported to the test through session_alive
            out["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    server.session_alive = lambda: f"session raised {out['error']!r}" if "error" in out else None
    states = []
    try:
        for seed in range(3):
            positions = moved(system, 0.02, seed=seed)
            point = server.call(positions, system.cell)
            assert abs(point.energy - emt(system, positions)[0]) < 1e-6  # VASP ran for this call: it computed it
            pid = int((tmp_path / "vasp" / "fake_vasp.pid").read_text())
            stopped = lambda p=pid: _state(p) == "T"
            if pausing:
                assert _wait_for(stopped), "not stopped after the answer was sent"
            else:
                assert not _wait_for(stopped, timeout=0.5), "stopped although pausing is off"
            states.append(_state(pid))
    finally:
        server.stop()
        thread.join(timeout=60)
    assert out == {"served": 3} and parent.returncode == 0  # close() resumed it before STOPCAR
    signals = log.read_text().split() if log.exists() else []
    if pausing:
        assert states == ["T"] * 3
        assert signals == [str(pid), "TSTP", str(pid), "CONT"] * 3  # stopped after each answer, run for each call
    else:
        assert "T" not in states and signals == []


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_pause_under_srun_goes_through_scancel_on_our_step(tmp_path, monkeypatch):
    """Fake srun/squeue/scancel on PATH: the session names its step, finds it with squeue, signals it with scancel."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    state.mkdir()
    _script(bin_dir / "srun", f"""#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in
    --job-name=*) echo "${{1#--job-name=}}" > {state}/step_name ;;
    -n) shift ;;
    -*) ;;
    *) break ;;
  esac
  shift
done
exec "$@"
""")
    _script(bin_dir / "squeue", f"""#!/bin/sh
echo "$@" >> {state}/squeue_args
echo "777.0 batch-step"
echo "777.3 $(cat {state}/step_name)"
""")
    _script(bin_dir / "scancel", f"""#!/bin/sh
echo "$@" >> {state}/scancel_args
kill -s "$2" "$(cat {tmp_path}/vasp/fake_vasp.pid)"
""")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    log = tmp_path / "signals.log"
    system = slab_system()
    parent = VaspInteractiveSession(
        workdir=tmp_path / "vasp", command=f"srun -n 1 --cpu-bind=cores {sys.executable} {FAKE}",
        env={"FAKE_VASP_SIGNAL_LOG": str(log)}, step_timeout_s=60,
    )
    parent.start(system)
    try:
        parent.calculate(system.positions)
        parent.pause()
        parent.resume()
        assert parent.calculate(system.positions).scf_cycles == 2
    finally:
        parent.close()
    assert parent.returncode == 0
    name = (state / "step_name").read_text().strip()
    assert name.startswith("finetuna-cu-o-")
    assert (state / "scancel_args").read_text() == "-s TSTP 777.3\n-s CONT 777.3\n"
    assert (state / "squeue_args").read_text().split() == ["-h", "-s", "-o", "%i", "%j", "-j", "777"]
    pid = (tmp_path / "vasp" / "fake_vasp.pid").read_text().strip()
    assert _wait_for(lambda: log.read_text().split() == [pid, "TSTP", pid, "CONT"])


def test_registry_builds_a_vasp_session_from_config_options(tmp_path):
    parent = make_parent("vasp", workdir=tmp_path, command="vasp_std", incar={"ENCUT": 400}, kpoints=[4, 4, 1])
    assert isinstance(parent, VaspInteractiveSession) and parent.kpoints == [4, 4, 1]
    with pytest.raises(ParentError, match="calculate\\(\\) before start\\(\\)"):
        parent.calculate(np.zeros((1, 3)))
    with pytest.raises(ParentSetupError, match="incarr"):  # a misspelt option: a setup error, never retried
        make_parent("vasp", workdir=tmp_path, incarr={})


CAMPAIGN = """
systems: {{source: demo, count: 1}}
parent:
  kind: vasp
  options:
    command: ["{python}", "{fake}"]
    incar: {{ENCUT: 350, ISMEAR: 1, SIGMA: 0.2}}
    kpoints: [2, 2, 1]
    step_timeout_s: 60
    env: {{FAKE_VASP_SIGNAL_LOG: "{signals}"}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 1}}
site: laptop
"""


def test_campaign_with_the_vasp_parent_through_parsl(tmp_path, toy_on_workers):
    """The run config's parent.options reach the session on a Parsl worker; one VASP process per relaxation,
    paused after each answer (parent.pause_while_learning: auto on the laptop site, where learning shares its node)."""
    import h5py

    from finetuna_parsl.campaign import run_campaign
    from finetuna_parsl.config import parse_config
    from finetuna_parsl.systems import demo_systems

    output = tmp_path / "vasp.h5"
    signals = tmp_path / "signals.log"
    config = parse_config(CAMPAIGN.format(python=sys.executable, fake=FAKE, output=output, signals=signals),
                          where="vasp.yaml")
    assert config.parent.pause_while_learning == "auto"
    (system,) = demo_systems(1)
    _, result = run_campaign(config, [system])
    (row,) = result.rows
    assert row["parent_calls"] >= 2
    workdir = tmp_path / "vasp-parent" / system.system_id
    out = (workdir / "vasp.out").read_text()
    assert out.count("running on") == 1 and "LABORT found in STOPCAR" in out  # one process, stopped gracefully
    with h5py.File(output, "r") as f:
        g = f["systems"][system.system_id]
        assert g.attrs["status"] == "done" and g.attrs["outcome"] == "converged"
        steps = g["steps"]
        parent_rows = np.flatnonzero(steps["kind"][()] == 1)
        assert len(parent_rows) == row["parent_calls"]
        assert (workdir / "vasprun.xml").read_text().count("<calculation>") >= len(parent_rows)
        for i in parent_rows:
            assert abs(steps["energy"][i] - emt(system, steps["positions"][i])[0]) < 1e-6
        scf = steps["scf_cycles"][()][parent_rows]
        assert scf[0] == 8 and (scf[1:] < 8).all()
    pid = (workdir / "fake_vasp.pid").read_text().strip()
    assert signals.read_text().split() == [pid, "TSTP", pid, "CONT"] * row["parent_calls"]  # stopped while learning
