"""Command line: finetuna-parsl run CONFIG [--compare bfgs] ..."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .config import ConfigError, load_config, with_overrides
from .learner.reference import REFERENCE_METHODS
from .records import QUERY_RULES, STATUS_FAILED


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _end_stopped_run(code: int) -> None:
    """Exit with `code` once a run was stopped (its store closed, Parsl's processes killed by run_campaign).

    Without waiting on threads still alive: a Parsl thread can stay blocked for good on what died (a task sent to
    a killed interchange waits in zmq's send with no peer to take it), and the interpreter's exit joins every
    non-daemon thread, so the driver would print its line and never end. Streams and logs are flushed first.
    Where no such thread is left (a caller embedding the CLI), a normal SystemExit.
    """
    import logging
    import threading

    held = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if not held:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def _stopped(exc) -> None:
    """A run that stopped because what it runs on failed (campaign.CampaignStopped): one line, exit 1."""
    start = "\n" if sys.stderr.isatty() else ""
    click.echo(f"{start}error: {exc}", err=True)
    _end_stopped_run(1)


def _interrupted(exc) -> None:
    """One line saying how to resume, then exit 128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    start = "\n" if sys.stderr.isatty() else ""  # after the progress bar's line
    click.echo(f"{start}{exc}", err=True)
    _end_stopped_run(128 + exc.signum)



def world_text(config) -> str:
    """The world a bench table measured, in words: the parent (for `ase`, its calculator and keywords), the
    surrogate's prior (checkpoint name or factory) and the commit of the code that ran (when in a git checkout)."""
    import subprocess

    parent = config.parent.kind
    if config.parent.calculator:
        keywords = ", ".join(f"{k}={v}" for k, v in config.parent.options.items())
        parent += f": {config.parent.calculator}({keywords})"
    prior = f"factory `{config.surrogate.factory}`" if config.surrogate.factory else \
        f"checkpoint `{config.surrogate.checkpoint}`"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"parent `{parent}`, prior {prior}" + (f", code at commit `{commit}`" if commit else "")

@click.group()
@click.version_option(package_name="finetuna-parsl")
def main() -> None:
    """FINETUNA online-learning relaxations at scale, with Parsl."""


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--site", help="Site name (sites/NAME.py) or path to a site file; overrides the config.")
@click.option("--output", help="Store path (HDF5); overrides campaign.output.")
@click.option("--systems", "count", type=int, help="Relax only the first N systems.")
@click.option("--compare", "references", multiple=True, type=click.Choice(REFERENCE_METHODS),
              help="Also run this reference optimizer on the same systems and print parent-call totals and ratio.")
@click.option("--restart", is_flag=True, help="Delete existing stores and start over (default: resume them).")
@click.option("--accept-parent-change", is_flag=True,
              help="Resume stores last run with other parent settings (kind, options) instead of refusing.")
def run(config_path: str, site: str | None, output: str | None, count: int | None, references: tuple[str, ...],
        restart: bool, accept_parent_change: bool) -> None:
    """Relax the systems of CONFIG with online learning, writing an HDF5 store."""
    config = _load_run_config(config_path, site, output)
    from .campaign import CampaignInterrupted, CampaignStopped, run_campaign
    from .campaign.progress import ProgressLine
    from .campaign.site import SiteError, site_file
    from .learner.metrics import compare, minimum_matches
    from .report import comparison_table, summary_table

    try:
        site_file(config.site)
    except SiteError as exc:
        _fail(str(exc))
    systems, left_out = _load_systems(config_path, config, count)
    from .report import plural

    click.echo(f"{plural(len(systems), 'system')}, site {config.site}, query rule {config.learner.query}, "
               f"store {config.campaign.output}", err=True)
    from .parents import ParentSetupError
    from .store import StoreError, load_final_positions

    warn_once = WarnOnce()
    from .campaign.runner import end_leftovers, store_path

    for method in ("online", *references):
        for line in end_leftovers(store_path(config, method)):
            click.echo(f"note: {line}", err=True)
    if accept_parent_change and not restart:
        from .campaign.runner import parent_change

        for method in ("online", *references):
            changed = parent_change(store_path(config, method), config)
            if changed:
                click.echo(f"warning: parent settings changed since store {store_path(config, method)} last ran "
                           f"({changed}); continuing with the new ones (--accept-parent-change)", err=True)
    try:
        path, result = run_campaign(config, systems, "online", ProgressLine("online"), restart=restart,
                                    on_warning=warn_once, accept_parent_change=accept_parent_change)
    except CampaignInterrupted as exc:
        _interrupted(exc)
    except CampaignStopped as exc:
        _stopped(exc)
    # SiteError: a site file's declarations, read once the run starts; ParentSetupError: its program is missing
    except (StoreError, SiteError, ParentSetupError) as exc:
        _fail(str(exc))
    click.echo(summary_table(result.rows))
    click.echo(f"store: {path}")
    comparisons = []
    for method in references:
        try:
            ref_path, ref = run_campaign(config, systems, method, ProgressLine(method), restart=restart,
                                         accept_parent_change=accept_parent_change)
        except CampaignInterrupted as exc:
            _interrupted(exc)
        except CampaignStopped as exc:
            _stopped(exc)
        except (StoreError, SiteError, ParentSetupError) as exc:
            _fail(str(exc))
        click.echo(f"\nreference {method}: store {ref_path}")
        click.echo(summary_table(ref.rows))
        matches = minimum_matches({s.system_id: s for s in systems}, result.rows, load_final_positions(path), ref.rows,
                                  load_final_positions(ref_path))
        comparisons.append(compare("online", result.rows, method, ref.rows, matches))
    if comparisons:
        click.echo("\n" + comparison_table(comparisons))
    failed = sum(r.status == STATUS_FAILED for r in result.rows)
    listed = _write_left_out(path, config_path, left_out)
    if failed or left_out:
        click.echo(_closing_line(path, failed, left_out, listed), err=True)
        sys.exit(1)


def _write_left_out(store, config_path: str, left_out: list[tuple[str, str]]):
    """The systems left out of this run, one `<id>: <reason>` line each, in '<store stem>.left_out.txt' beside the
    store (removed when none were); returns its path, or None."""
    from pathlib import Path

    listed = Path(store).with_name(f"{Path(store).stem}.left_out.txt")
    if not left_out:
        listed.unlink(missing_ok=True)
        return None
    listed.write_text(f"# systems of {config_path} left out of the run of {store} (not relaxed), and why\n"
                      + "".join(f"{sid}: {reason}\n" for sid, reason in left_out))
    return listed


def _closing_line(store, failed: int, left_out: list[tuple[str, str]], listed) -> str:
    """Why the run exits 1, in one line: the systems left out (and the file listing them) and the ones failed."""
    from .report import plural

    why = []
    if left_out:
        why.append(f"{plural(len(left_out), 'system')} left out before the run (listed in {listed}, and above)")
    if failed:
        why.append(f"{plural(failed, 'system')} failed (the reasons: finetuna-parsl inspect {store})")
    return "exit 1: " + "; ".join(why)


def _load_systems(config_path: str, config, count: int | None):
    """The systems to run and those left out as (id, reason): unreadable or with a constraint other than FixAtoms
    (skipped), or a structure the parent cannot compute (unusable); one stderr line for each, and why."""
    from .parents import ParentError, check_systems, parent_class
    from .systems import SystemsError, load_systems

    if count is not None and count < 1:
        _fail(f"--systems must be >= 1, got {count}")
    try:
        systems, skipped = load_systems(config.systems.source, count or config.systems.count, config.systems.seed)
    except SystemsError as exc:
        _fail(str(exc))
    for s in skipped:
        click.echo(f"skipped system {s.system_id}: {s.reason}", err=True)
    try:
        problem = parent_class(config.parent.kind).check_options(config.parent.session_options())
        if problem is not None:
            _fail(f"{config_path}: parent.options: {problem}")
        systems, unusable = check_systems(config.parent.kind, config.parent.session_options(), systems)
    except ParentError as exc:
        _fail(str(exc))
    for system_id, reason in unusable:
        click.echo(f"unusable system {system_id}: {config.parent.kind} parent: {reason}", err=True)
    if not systems:
        _fail(f"{config_path}: systems.source {config.systems.source!r} gave no usable systems")
    left_out = [(s.system_id, s.reason) for s in skipped]
    return systems, left_out + [(sid, f"{config.parent.kind} parent: {reason}") for sid, reason in unusable]


class WarnOnce:
    """Print a warning raised on a worker once per kind (its text with the system id taken out) on stderr."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, system_id: str, message: str) -> None:
        kind = message.replace(system_id, "<system>")
        if kind in self.seen:
            return
        self.seen.add(kind)
        start = "\n" if sys.stderr.isatty() else ""
        click.echo(f"{start}warning: {message} (shown once; every system it concerns has it in its 'warnings' "
                   "attribute in the store)", err=True)


def _load_run_config(config_path: str, site: str | None, output: str | None):
    import dataclasses

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    if site:
        config = dataclasses.replace(config, site=site)
    from .config import shadowed_settings

    for warning in shadowed_settings(config):
        click.echo(f"warning: {warning}", err=True)
    return with_overrides(config, campaign={"output": output} if output else {})


@main.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--methods", default=",".join((*REFERENCE_METHODS, *QUERY_RULES)), show_default=True,
              help="Comma-separated methods to compare.")
@click.option("--reference", default="bfgs", type=click.Choice(REFERENCE_METHODS), show_default=True,
              help="The reference optimizer that speed and accuracy are measured against.")
@click.option("--out", "out_dir", default=None, help="Folder for the table and figures (default: beside the stores).")
@click.option("--site", help="Site name or file; overrides the config.")
@click.option("--output", help="Base store path; each method writes '<stem>.<method>.h5'.")
@click.option("--systems", "count", type=int, help="Use only the first N systems.")
@click.option("--trajectory-system", help="System for the energy-vs-parent-call figure (default: the first).")
@click.option("--restart", is_flag=True, help="Delete existing stores and start over (default: resume them).")
@click.option("--repeats", default=1, show_default=True, type=click.IntRange(min=1),
              help="Run every method this many times and report the spread of parent-call totals (for GPUs).")
@click.option("--accept-parent-change", is_flag=True,
              help="Resume stores that ran with other parent settings, continuing with the new ones.")
def bench(config_path: str, methods: str, reference: str, out_dir: str | None, site: str | None,
          output: str | None, count: int | None, trajectory_system: str | None, restart: bool, repeats: int,
          accept_parent_change: bool) -> None:
    """Compare methods on the same systems: the paper's Table 1 (Markdown + CSV) and figures."""
    from pathlib import Path

    from .bench import (ALL_METHODS, MINIMA_NOTE, anomalies_text, breakdown_table, markdown_table, minima_text,
                        missed_text, repeatability_text, run_bench, write_csv)
    from .campaign.progress import ProgressLine
    from .plots import accuracy_vs_speed, energy_trajectories, per_system_bars
    from .reproducible import HOW

    config = _load_run_config(config_path, site, output)
    chosen = [m.strip() for m in methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in ALL_METHODS]
    if unknown:
        _fail(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(ALL_METHODS)})")
    systems, unusable = _load_systems(config_path, config, count)
    from .campaign import CampaignInterrupted, CampaignStopped
    from .campaign.site import SiteError
    from .parents import ParentSetupError
    from .store import StoreError

    try:
        result = run_bench(config, systems, chosen, reference, progress=lambda m: ProgressLine(m), restart=restart,
                           repeats=repeats, accept_parent_change=accept_parent_change)
    except CampaignInterrupted as exc:
        _interrupted(exc)
    except CampaignStopped as exc:
        _stopped(exc)
    except (StoreError, SiteError, ParentSetupError) as exc:
        _fail(str(exc))
    folder = Path(out_dir) if out_dir else Path(config.campaign.output).parent
    folder.mkdir(parents=True, exist_ok=True)
    table = markdown_table(result)
    calls = breakdown_table(result)
    calls_note = ("Parent calls by the reason each was made (the query rule's; a reference method's name for its "
                  "calls), and how many came after the parent fmax first fell below 0.1 eV/A.")
    command = " ".join(["finetuna-parsl", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else "finetuna-parsl bench"
    missed = missed_text(result)
    minima, anomalies = minima_text(result), anomalies_text(result)
    repeatable = repeatability_text(result)
    (folder / "paper_table.md").write_text(
        f"# Speed and accuracy against {reference}\n\n{len(systems)} systems from `{config.systems.source}`, "
        f"{world_text(config)}, site `{config.site}`, seed {config.surrogate.seed}.\n\n"
        f"Made by: `{command}`; {HOW} (see Repeatability).\n\n{table}\n\n"
        "dE = final parent energy minus the reference's; accurate = parent-confirmed fmax <= "
        f"{config.learner.fmax} eV/A and dE <= 0.02 eV. {MINIMA_NOTE}\n\nNot accurate:\n\n{missed}\n\n"
        f"In another minimum than {reference}:\n\n{minima}\n\nAnomalies:\n\n{anomalies}\n\n"
        f"## Where the parent calls went\n\n{calls_note}\n\n{calls}\n\n## Repeatability\n\n{repeatable}\n"
    )
    write_csv(result, folder / "paper_table.csv")
    accuracy_vs_speed(result.table, reference, folder / "accuracy_vs_speed.png")
    per_system_bars(result.rows, reference, folder / "per_system.png", result.matches)
    sid = trajectory_system or systems[0].system_id
    energy_trajectories(result.stores, sid, folder / "energy_trajectory.png", reference=reference)
    click.echo(table)
    click.echo(f"\n{MINIMA_NOTE}")
    click.echo(f"\nNot accurate:\n{missed}")
    click.echo(f"\nIn another minimum than {reference}:\n{minima}")
    click.echo(f"\nAnomalies:\n{anomalies}")
    click.echo(f"\n{calls_note}\n\n{calls}")
    click.echo(f"\n{repeatable}")
    click.echo(f"\nwrote {folder / 'paper_table.md'}, paper_table.csv and figures accuracy_vs_speed.png, "
               f"per_system.png, energy_trajectory.png ({sid}) in {folder}")


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", default=None, help="Folder for the figures (default: beside the store).")
def plot(store_path: str, out_dir: str | None) -> None:
    """Per-system figures of a campaign: parent calls (beside the reference stores `run --compare` or `bench`
    wrote next to it) and parent-energy trajectories."""
    from pathlib import Path

    from .plots import plot_store, reference_stores
    from .store import StoreError

    references = reference_stores(store_path)
    if references:
        click.echo(f"beside reference stores: {', '.join(p.name for p in references.values())}")
    try:
        made = plot_store(store_path, out_dir or Path(store_path).parent, references)
    except StoreError as exc:
        _fail(str(exc))
    for path in made:
        click.echo(f"wrote {path}")


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the rows and totals as JSON instead of a table.")
def inspect(store_path: str, as_json: bool) -> None:
    """Per-system status, outcome, parent calls by reason, surrogate steps, final energy (eV) and fmax (eV/A),
    errors in full, and campaign totals; also of a store a running campaign is writing (from its live summary)."""
    import json
    from pathlib import Path

    from .inspection import inspect_store, report, totals
    from .store import StoreError

    if not Path(store_path).exists() and not Path(store_path).with_suffix(".summary.json").exists():
        _fail(f"no such store: {store_path}")
    try:
        ins = inspect_store(store_path)
    except StoreError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps({"store": str(ins.store), "source": ins.source, "note": ins.note, "method": ins.method,
                               "systems": [r.as_dict() for r in ins.rows], "totals": totals(ins.rows)}, indent=1, default=str))
    else:
        click.echo(report(ins))


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["extxyz", "traj", "db", "aselmdb"]), default="extxyz",
              show_default=True, help="aselmdb: ASE's LMDB database, which fairchem's AseDBDataset trains on.")
@click.option("--out", "out",
              help="Output file (default: STORE with the format's suffix; '.final' added with --final).")
@click.option("--parent-only/--all-frames", default=True, show_default=True,
              help="Only parent-labelled frames (the training data), or surrogate frames too.")
@click.option("--final", is_flag=True,
              help="Only the last parent-confirmed structure of each system, with its parent energy and forces.")
def export(store_path: str, fmt: str, out: str | None, parent_only: bool, final: bool) -> None:
    """Write a campaign store's frames to an ASE format, with energies (eV), forces (eV/A) and metadata
    (system_id, parent_call, reason, status, outcome, source, method, parent)."""
    from pathlib import Path

    from .store import StoreError
    from .store import export as export_store

    store = Path(store_path)
    target = out or str(store.with_name(f"{store.stem}{'.final' if final else ''}.{fmt}"))
    try:
        count = export_store(store_path, target, fmt, parent_only=parent_only, final=final)
    except StoreError as exc:
        _fail(str(exc))
    what = "final parent-confirmed" if final else ("parent" if parent_only else "")
    click.echo(f"wrote {count} {what} frames to {target}".replace("  ", " "))


@main.command("verify-parent")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--system", "system_id", help="System id to check (default: the first usable system of CONFIG).")
@click.option("--displacement", default=0.02, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="How far (A) every free atom moves between the warm session's two calls.")
@click.option("--energy-tol", default=None, type=float, help="Largest |warm - cold| energy accepted, eV [1e-3].")
@click.option("--force-tol", default=None, type=float, help="Largest |warm - cold| force component accepted, eV/A [0.01].")
def verify_parent(config_path: str, system_id: str | None, displacement: float, energy_tol: float | None,
                  force_tol: float | None) -> None:
    """Check that CONFIG's parent, kept warm between calls, answers as a cold calculation does.

    Runs the parent here (in this process: run it where the parent can run, e.g. inside an allocation): one
    session at the system's start and then at positions moved by DISPLACEMENT, one new session at the moved
    positions only. Prints both answers' differences and SCF cycles; exits 1 when they differ beyond the
    tolerances (do not use that parent warm), 0 when they agree.
    """
    import tempfile
    from pathlib import Path

    from .parents import ParentError, make_parent
    from .parents.verify import ENERGY_TOL, FORCE_TOL, warm_vs_cold

    config = _load_run_config(config_path, None, None)
    systems, _ = _load_systems(config_path, config, None)
    if system_id is not None:
        systems = [s for s in systems if s.system_id == system_id]
        if not systems:
            _fail(f"--system {system_id}: no usable system of that id in {config.systems.source}")
    system = systems[0]
    base = Path(config.parent.workdir) if config.parent.workdir else Path(tempfile.mkdtemp(prefix="verify-parent-"))
    options = config.parent.session_options()
    try:
        check = warm_vs_cold(lambda label: make_parent(config.parent.kind, workdir=base / "verify" / label, **options),
                             system, displacement=displacement,
                             energy_tol=ENERGY_TOL if energy_tol is None else energy_tol,
                             force_tol=FORCE_TOL if force_tol is None else force_tol)
    except ParentError as exc:
        _fail(f"{config.parent.kind} parent: {str(exc).splitlines()[0]}")
    click.echo(f"{config.parent.kind} parent ({config.parent.calculator or 'options from ' + config_path}): "
               f"{check.line()}")
    if not check.ok:
        click.echo("error: the warm session's answer differs from a cold calculation's: do not use this parent warm "
                   "(for kind ase, a calculator that restarts from scratch every call, or a different code)", err=True)
        sys.exit(1)


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", help="The new store (default: STORE with '.salvaged' before its suffix).")
def salvage(store_path: str, out: str | None) -> None:
    """Copy every readable system of a damaged store (a full disk, a copy cut short) into a new store.

    The damaged store is only read. Run the campaign with --output NEW (or move NEW in place of STORE) to resume:
    the systems that could not be read are run again. Exit 1 when a system was lost, 2 when nothing could be read.
    """
    from pathlib import Path

    from .store import StoreError
    from .store import salvage as salvage_store

    store = Path(store_path)
    target = Path(out) if out else store.with_name(f"{store.stem}.salvaged{store.suffix or '.h5'}")
    try:
        saved, lost = salvage_store(store, target)
    except StoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write {target}: {exc.strerror or exc}")
    for system_id, why in lost:
        click.echo(f"lost system {system_id}: {why}", err=True)
    click.echo(f"salvaged {len(saved)} of {len(saved) + len(lost)} systems from {store} into {target}")
    if lost:
        sys.exit(1)


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
def cleanup(store_path: str) -> None:
    """End the Parsl interchanges and worker pools, and remove the bridge socket files, that a run of STORE left
    behind when its driver was killed (SIGKILL, a crashed node). Only that run's: recorded by pid and start time.
    The next `run` of the same store does this by itself."""
    from .campaign.runner import end_leftovers

    lines = end_leftovers(store_path)
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo(f"nothing left behind by a killed run of {store_path}")


if __name__ == "__main__":
    main()
