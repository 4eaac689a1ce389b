"""What a new user following the README tripped on (issue 27): a store shared by two campaigns, a parent program
that is not there, pending work that inspect hid, a non-zero exit without a closing reason, and the small things."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111
from ase.constraints import FixAtoms
from ase.io import write

from conftest import TESTS_DIR

CONFIG = """
systems: {{source: "{source}"}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: {site}
"""


def cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def config(path: Path, source: str, output: Path, site: str | Path = TESTS_DIR / "threads_site.py",
           count: int | None = None) -> Path:
    text = CONFIG.format(source=source, output=output, site=site)
    if count is not None:
        text = text.replace(f'source: "{source}"', f'source: "{source}", count: {count}')
    path.write_text(text)
    return path


def own_structures(path: Path, n: int = 2) -> Path:
    frames = []
    for i in range(n):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, "H", 1.5, "fcc" if i == 0 else "hcp")
        slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
        slab.pbc = True
        frames.append(slab)
    write(path, frames)
    return path


def test_a_store_is_one_campaigns_and_a_copied_config_with_other_systems_is_refused(tmp_path):
    store = tmp_path / "runs" / "demo.h5"
    demo = config(tmp_path / "demo.yaml", "demo", store, count=3)
    first = cli(tmp_path, "run", str(demo), "--systems", "1")  # a first try on one system ...
    assert first.returncode == 0, first.stderr[-3000:]
    more = cli(tmp_path, "run", str(demo))  # ... then the rest: the same campaign, the store grows
    assert more.returncode == 0, more.stderr[-3000:]
    with h5py.File(store, "r") as f:
        demo_ids = list(f["systems"])
        runs = f["runs"].shape[0]
    assert len(demo_ids) == 3

    # "Your own structures", followed literally: a copy of the demo config with systems.source changed
    mine = config(tmp_path / "mine.yaml", str(own_structures(tmp_path / "mine.extxyz")), store)
    proc = cli(tmp_path, "run", str(mine))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and ", site " in lines[0], proc.stderr  # the run's first line, then why it stops
    line = lines[1]
    assert line.startswith(f"error: store {store} belongs to another campaign: it holds 3 systems from "
                           "systems.source 'demo'"), line
    assert "mine-0000, mine-0001 are not among them" in line, line
    assert "campaign.output in" in line and "mine.yaml" in line and "--output" in line and "runs/mine.h5" in line
    with h5py.File(store, "r") as f:  # refused before anything was written, not even a run line
        assert list(f["systems"]) == demo_ids and f["runs"].shape[0] == runs

    # --output gives the own structures their own store
    proc = cli(tmp_path, "run", str(mine), "--output", str(tmp_path / "runs" / "mine.h5"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(tmp_path / "runs" / "mine.h5", "r") as f:
        assert list(f["systems"]) == ["mine-0000", "mine-0001"]

    # the same ids with other structures (the file edited in place) are another campaign too
    frames = own_structures(tmp_path / "mine.extxyz")
    from ase.io import read
    atoms = read(frames, ":")
    atoms[1].positions[-1] += [0.3, 0.0, 0.0]
    write(frames, atoms)
    proc = cli(tmp_path, "run", str(mine), "--output", str(tmp_path / "runs" / "mine.h5"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "this run's mine-0001 are other structures under the same ids" in proc.stderr, proc.stderr


VASP_CONFIG = """
systems: {{source: demo, count: 2}}
parent:
  kind: vasp
  options: {{command: "{command}", kpoints: gamma}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: {site}
"""


def test_which_programs_a_vasp_command_runs():
    from finetuna_parsl.parents.vasp import command_programs, missing_command_program

    assert command_programs("srun --exact -n 64 --cpu-bind=cores vasp_std") == ["srun", "vasp_std"]
    assert command_programs("mpirun -np 8 --hostfile hosts vasp_gam > out.txt") == ["mpirun", "vasp_gam"]
    assert command_programs("OMP_NUM_THREADS=1 /opt/vasp/bin/vasp_std") == ["/opt/vasp/bin/vasp_std"]
    assert command_programs("$PREFIX vasp_std", {"PREFIX": "srun -n 4"}) == ["srun", "vasp_std"]
    assert command_programs("$PREFIX vasp_std", {}) == ["vasp_std"]  # unset: nothing, as in the shell
    assert command_programs(["srun", "-n", "2", "numactl", "-C", "0-1", "vasp_ncl"]) == ["srun", "vasp_ncl"]
    assert missing_command_program("env OMP_NUM_THREADS=1 sh", {"PATH": os.defpath}) is None
    line = missing_command_program("env -u X no-such-vasp-27", {"PATH": "/usr/bin:/bin"})
    assert line.startswith("no-such-vasp-27: not found on PATH=/usr/bin:/bin"), line
    assert "srun: not found" in missing_command_program("srun -n 4 sh", {"PATH": str(TESTS_DIR)})
    assert "no such executable" in missing_command_program("/nonexistent/bin/vasp_std", {"PATH": os.defpath})


def test_a_missing_vasp_is_one_line_before_any_worker_starts(tmp_path):
    """Workers on this machine (the threads site): the driver looks the program up and stops at once."""
    cfg = tmp_path / "vasp.yaml"
    cfg.write_text(VASP_CONFIG.format(command="env OMP_NUM_THREADS=1 no-such-vasp-27",
                                      output=tmp_path / "v.h5", site=TESTS_DIR / "threads_site.py"))
    proc = cli(tmp_path, "run", str(cfg))
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {cfg}: vasp parent: no-such-vasp-27: not found on PATH="), last
    assert os.environ["PATH"] in last and "no worker was started" in last and "POTCAR" not in proc.stderr
    assert not (tmp_path / "v.h5").exists() and not (tmp_path / "v-parent").exists()


def test_a_vasp_missing_where_the_workers_run_fails_each_system_at_once_naming_it(tmp_path, monkeypatch):
    """Workers elsewhere (a batch job): the driver cannot see their PATH, so each session checks at its start:
    a setup error naming the program and PATH, never retried, no inputs written, nothing else blamed."""
    import time

    from click.testing import CliRunner

    import finetuna_parsl.campaign.runner as runner
    from finetuna_parsl.cli import main

    monkeypatch.syspath_prepend(str(TESTS_DIR))
    monkeypatch.setattr(runner, "on_driver_machine", lambda executor: False)
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "vasp.yaml"
    cfg.write_text(VASP_CONFIG.format(command="no-such-vasp-27", output=tmp_path / "w.h5",
                                      site=TESTS_DIR / "threads_site.py"))
    t0 = time.monotonic()
    result = CliRunner().invoke(main, ["run", str(cfg)])
    assert result.exit_code == 1, result.output
    assert time.monotonic() - t0 < 60
    # the run ends saying why it exits 1
    assert result.output.strip().splitlines()[-1] == (
        f"exit 1: 2 systems failed (the reasons: finetuna-parsl inspect {tmp_path / 'w.h5'})"), result.output[-2000:]
    with h5py.File(tmp_path / "w.h5", "r") as f:
        errors = {sid: str(g.attrs["error"]) for sid, g in f["systems"].items()}
    assert len(errors) == 2
    for sid, error in errors.items():
        assert error.startswith(f"parent setup failed (not retried): vasp parent for {sid}: no-such-vasp-27: "
                                f"not found on PATH={os.environ['PATH']}"), error
        assert "POTCAR" not in error
        assert not (tmp_path / "w-parent" / sid / "INCAR").exists()


def test_inspect_and_the_live_summary_show_every_system_pending_included_and_how_many_are_left(tmp_path):
    import re
    import signal
    import time

    from finetuna_parsl import live

    store = tmp_path / "p.h5"
    cfg = config(tmp_path / "p.yaml", "demo", store, count=10)
    cfg.write_text(cfg.read_text().replace("max_concurrent: 2", "max_concurrent: 1"))
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    writer = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and writer.poll() is None:
            summary = live.read(store)
            if first is None and summary is not None:
                first = summary  # the first summary the driver wrote: every system is in it, pending or not
            if summary and any(r["status"] == "done" for r in summary["systems"]):
                break
            time.sleep(0.05)
        assert first is not None, writer.communicate()[1][-3000:]
        assert len(first["systems"]) == 10
        assert [r["status"] for r in first["systems"]].count("pending") >= 8, first["systems"]
        from click.testing import CliRunner

        from finetuna_parsl.cli import main

        during = json.loads(CliRunner().invoke(main, ["inspect", "--json", str(store)]).stdout)  # in-process: quick
        assert during["source"] == "live summary" and during["totals"]["systems"] == 10
        assert during["totals"]["left"] == 10 - during["totals"]["status"].get("done", 0) > 0
    finally:
        writer.send_signal(signal.SIGINT)
        writer.communicate(timeout=120)
    assert writer.returncode in (0, 130)

    text = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "inspect", str(store)], env=env,
                          capture_output=True, text=True, timeout=120).stdout
    after = json.loads(subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "inspect", "--json", str(store)],
                                      env=env, capture_output=True, text=True, timeout=120).stdout)
    totals = after["totals"]
    assert totals["systems"] == 10 and len(after["systems"]) == 10
    pending = totals["status"].get("pending", 0)
    assert pending >= 1, totals  # concurrency 1, stopped after the first finished: the last ones never started
    assert totals["left"] == 10 - totals["status"].get("done", 0) - totals["status"].get("failed", 0)
    line = next(x for x in text.splitlines() if x.startswith("10 systems: "))
    assert f"{pending} pending" in line and f"; {totals['left']} left to do;" in line, line
    assert re.search(r"^demo-\S+ +pending ", text, re.M), text


def test_a_run_that_exits_1_ends_saying_why_and_where_the_left_out_systems_are_listed(tmp_path):
    from ase.build import bulk
    from ase.constraints import FixBondLengths

    folder = tmp_path / "mine"
    folder.mkdir()
    write(folder / "a-good.traj", read_frames(own_structures(tmp_path / "one.extxyz", 1))[0])
    iron = bulk("Fe", "bcc", a=2.87, cubic=True)  # an element EMT has no potential for: unusable
    write(folder / "b-iron.traj", iron)
    bonded = read_frames(tmp_path / "one.extxyz")[0]
    bonded.set_constraint(FixBondLengths([[0, 1]]))  # a constraint other than FixAtoms: skipped
    write(folder / "c-bond.traj", bonded)
    store = tmp_path / "runs" / "mine.h5"
    cfg = config(tmp_path / "mine.yaml", str(folder), store)
    proc = cli(tmp_path, "run", str(cfg))
    assert proc.returncode == 1, proc.stderr[-3000:]
    listed = tmp_path / "runs" / "mine.left_out.txt"
    assert proc.stderr.strip().splitlines()[-1] == (
        f"exit 1: 2 systems left out before the run (listed in {listed}, and above)"), proc.stderr[-3000:]
    lines = listed.read_text().splitlines()
    assert lines[0].startswith(f"# systems of {cfg} left out")
    assert [line.split(":")[0] for line in lines[1:]] == ["c-bond", "b-iron"], lines
    assert "FixBondLengths" in lines[1] and "emt parent: " in lines[2]
    with h5py.File(store, "r") as f:
        assert list(f["systems"]) == ["a-good"] and f["systems/a-good"].attrs["status"] == "done"


def read_frames(path):
    from ase.io import read

    return read(path, ":")


def _captured_figures(monkeypatch) -> dict:
    """The figures plots.py saves, by file name, kept open for the test to read (titles, labels, legends)."""
    from finetuna_parsl import plots

    figures = {}

    def keep(fig, path):
        fig.savefig(path)
        figures[Path(path).name] = fig

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _legend_texts(fig) -> list[str]:
    found = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    for ax in fig.axes:
        if ax.get_legend() is not None:
            found += [t.get_text() for t in ax.get_legend().get_texts()]
    return found


def _integer_ticks(ticks) -> bool:
    return all(float(t).is_integer() for t in ticks)


def test_plot_names_methods_gives_totals_and_shows_the_reference_beside_the_online_method(tmp_path, monkeypatch):
    store = tmp_path / "runs" / "fig.h5"
    cfg = config(tmp_path / "fig.yaml", "demo", store, count=3)
    proc = cli(tmp_path, "run", str(cfg), "--compare", "bfgs")
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = _captured_figures(monkeypatch)
    from finetuna_parsl.plots import plot_store
    from finetuna_parsl.store import load_summary

    made = plot_store(store, tmp_path / "plots")
    assert [p.name for p in made] == ["fig_parent_calls.png", "fig_energy_trajectories.png"]
    online = sum(r["parent_calls"] for r in load_summary(store))
    bfgs = sum(r["parent_calls"] for r in load_summary(store.with_name("fig.bfgs.h5")))

    calls = figures["fig_parent_calls.png"]
    ax = calls.axes[0]
    assert ax.get_title() == (f"Parent calls per system: online (k-steps), {online} in all, against bfgs's {bfgs} "
                              f"(ratio {online / bfgs:.2f})")
    assert ax.get_xlabel() == "system (3)" and ax.get_ylabel() == "parent calls"
    legend = _legend_texts(calls)
    assert legend[0] == f"bfgs (reference): {bfgs} calls"  # the reference first, beside the online method
    assert legend[1].startswith(f"online (k-steps): {online} calls, ")
    assert not any("fig" in text for text in legend)  # the method, not the store file
    assert _integer_ticks(ax.get_yticks())

    trajectories = figures["fig_energy_trajectories.png"]
    panels = [a for a in trajectories.axes if a.get_visible()]
    assert len(panels) == 3  # one small panel per system
    for panel in panels:
        assert _integer_ticks(panel.get_xticks())
        assert len(panel.get_lines()) >= 3  # zero line, the reference's trajectory, the method's
    assert trajectories._suptitle.get_text() == "Parent energy per parent call, 3 systems: online (k-steps)"
    assert _legend_texts(trajectories)[:2] == ["online (k-steps)", "bfgs (reference)"]
    for name in ("fig_parent_calls.png", "fig_energy_trajectories.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 10_000

    # the bench's figures: the same conventions
    from finetuna_parsl.plots import energy_trajectories, per_system_bars

    stores = {"bfgs": store.with_name("fig.bfgs.h5"), "k-steps": store}
    per_system_bars({m: load_summary(p) for m, p in stores.items()}, "bfgs", tmp_path / "per_system.png")
    top, bottom = figures["per_system.png"].axes
    assert top.get_title() == "Parent calls and final energy per system, 3 systems, against bfgs"
    assert [t.get_text() for t in top.get_legend().get_texts()] == [
        f"bfgs (reference): {bfgs} calls", f"k-steps: {online} calls, {online / bfgs:.0%} of bfgs"]
    assert bottom.get_xlabel() == "system" and _integer_ticks(top.get_yticks())
    sid = load_summary(store)[0]["system_id"]
    energy_trajectories(stores, sid, tmp_path / "trajectory.png", reference="bfgs")
    (ax,) = figures["trajectory.png"].axes
    assert ax.get_title() == f"Parent energy per parent call: {sid}" and _integer_ticks(ax.get_xticks())
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "bfgs's relaxed energy ±0.02 eV" and legend[1].startswith("bfgs (reference): ")


def test_the_trajectory_figure_of_many_systems_is_their_median_and_spread(tmp_path, monkeypatch):
    from finetuna_parsl.plots import MAX_PANELS, trajectories_figure
    from finetuna_parsl.records import Evaluation
    from finetuna_parsl.store import CampaignStore, load_parent_energies
    from finetuna_parsl.systems import demo_systems

    system = demo_systems(1)[0]
    rng = np.random.default_rng(0)
    with CampaignStore(tmp_path / "many.h5", run_config="learner: {query: relaxed-only}\n") as store:
        for i in range(MAX_PANELS + 6):
            s = type(system)(**{**system.__dict__, "system_id": f"s{i:02d}"})
            store.add_system(s)
            calls = int(rng.integers(3, 9))
            store.append_steps(s.system_id, [Evaluation(s.positions, float(e), np.zeros_like(s.positions))
                                             for e in np.geomspace(1.0, 1e-3, calls) - 5.0])
    figures = _captured_figures(monkeypatch)
    trajectories_figure(load_parent_energies(tmp_path / "many.h5"), "online (relaxed-only)", {},
                        tmp_path / "many.png")
    fig = figures["many.png"]
    energy, count = fig.axes
    assert energy.get_title() == f"Parent energy per parent call, {MAX_PANELS + 6} systems: online (relaxed-only)"
    assert any(text.startswith(f"online (relaxed-only): median of {MAX_PANELS + 6}, ") for text in _legend_texts(fig))
    assert count.get_xlabel() == "parent call" and _integer_ticks(count.get_xticks())


def test_on_a_terminal_the_finished_progress_bar_is_printed_once(tmp_path):
    """stderr a terminal (a pseudo-terminal here): the bar is redrawn in place and its finished line ends it once."""
    import pty

    cfg = config(tmp_path / "tty.yaml", "demo", tmp_path / "tty.h5", count=2)
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg), "--compare", "bfgs"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal's other end closed: the run ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0, seen.decode()[-3000:]
    text = seen.decode().replace("\r\n", "\n")
    for label in ("online", "bfgs"):
        finished = [part for line in text.split("\n") for part in line.split("\r") if part.startswith(f"{label} [")
                    and " 2/2 " in part]
        assert len(finished) == 1, text[-3000:]
    assert "\n2 systems, site" in "\n" + text, text[:500]



@pytest.mark.parametrize("text, line, shown", [
    ("systems:\n  source: demo\n  count 3\nparent:\n  kind: emt\nlearner:\n  k: 3\n", 3, "count 3"),  # no colon
    ('systems:\n  source: "demo\nparent:\n  kind: emt\nlearner:\n  k: 3\n', 2, 'source: "demo'),  # quote not closed
    ("systems: {source: demo, count: 3\nparent:\n  kind: emt\n", 1, "systems: {source: demo, count: 3"),  # no }
    ("systems:\n  source: demo\n count: 3\nparent:\n  kind: emt\n", 3, "count: 3"),  # indented wrong
], ids=["colon", "quote", "brace", "indent"])
def test_a_yaml_mistake_is_reported_at_its_own_line(tmp_path, text, line, shown):
    from click.testing import CliRunner

    from finetuna_parsl.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    result = CliRunner().invoke(main, ["run", str(cfg)])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {cfg}: not valid YAML at line {line} (`{shown}`): "), result.output
    assert result.output.count("\n") == 1


def test_one_system_is_one_system_surr_is_explained_and_a_parent_without_scf_has_no_scf_count(tmp_path):
    store = tmp_path / "one.h5"
    cfg = config(tmp_path / "one.yaml", "demo", store, count=1)
    proc = cli(tmp_path, "run", str(cfg))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.startswith("1 system, site "), proc.stderr[:300]
    assert "\n1 system, 1 parent-confirmed relaxed, " in proc.stdout
    explained = "surr. = surrogate steps (optimizer steps on the surrogate, no parent call)"
    assert explained in proc.stdout
    shown = cli(tmp_path, "inspect", str(store)).stdout
    assert "\n1 system: 1 done; 0 left to do; outcomes: 1 converged\n" in shown, shown
    assert "SCF" not in shown and "systems" not in shown.split("\n", 1)[1] and explained in shown

    # a parent with SCF (VASP, GPAW) reports its cycles
    from finetuna_parsl.records import Evaluation
    from finetuna_parsl.store import CampaignStore
    from finetuna_parsl.systems import demo_systems

    system = demo_systems(1)[0]
    with CampaignStore(tmp_path / "scf.h5", run_config="parent: {kind: vasp}\n") as s:
        s.add_system(system)
        s.append_steps(system.system_id, [Evaluation(system.positions, -1.0, np.zeros_like(system.positions),
                                                     scf_cycles=12, reason="initial")])
    shown = cli(tmp_path, "inspect", str(tmp_path / "scf.h5")).stdout
    assert "1 parent call (initial:1), 0 surrogate steps, 12 SCF cycles, " in shown, shown


def test_the_production_vasp_example_learns_with_the_demos_measured_recipe():
    """configs/vasp-example.yaml is what users copy for production: it had k: 3, which caps the saving at 1/3."""
    from finetuna_parsl.config import load_config

    repo = TESTS_DIR.parent
    vasp = load_config(repo / "configs" / "vasp-example.yaml").learner
    demo = load_config(repo / "configs" / "demo.yaml").learner
    assert vasp == demo and vasp.k == 100 and vasp.surrogate_fmax == 0.02
