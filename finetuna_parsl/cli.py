"""Command line: finetuna-parsl run CONFIG [--compare bfgs] ..."""

from __future__ import annotations

import sys

import click

from .config import ConfigError, load_config, with_overrides
from .learner.reference import REFERENCE_METHODS


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


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
def run(config_path: str, site: str | None, output: str | None, count: int | None, references: tuple[str, ...],
        restart: bool) -> None:
    """Relax the systems of CONFIG with online learning, writing an HDF5 store."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    if site:
        import dataclasses

        config = dataclasses.replace(config, site=site)
    config = with_overrides(config, campaign={"output": output} if output else {})
    from .campaign import run_campaign
    from .campaign.progress import ProgressLine
    from .campaign.site import SiteError, site_file
    from .learner.metrics import compare
    from .report import comparison_table, summary_table
    from .systems import load_systems

    try:
        site_file(config.site)
    except SiteError as exc:
        _fail(str(exc))
    systems, skipped = load_systems(config.systems.source, count or config.systems.count, config.systems.seed)
    for s in skipped:
        click.echo(f"skipped system {s.system_id}: {s.reason}", err=True)
    if not systems:
        _fail(f"{config_path}: systems.source {config.systems.source!r} gave no usable systems")
    click.echo(f"{len(systems)} systems, site {config.site}, query rule {config.learner.query}, "
               f"store {config.campaign.output}", err=True)
    path, result = run_campaign(config, systems, "online", ProgressLine("online"), restart=restart)
    click.echo(summary_table(result.rows))
    click.echo(f"store: {path}")
    comparisons = []
    for method in references:
        ref_path, ref = run_campaign(config, systems, method, ProgressLine(method), restart=restart)
        click.echo(f"\nreference {method}: store {ref_path}")
        click.echo(summary_table(ref.rows))
        comparisons.append(compare("online", result.rows, method, ref.rows))
    if comparisons:
        click.echo("\n" + comparison_table(comparisons))
    failed = sum(r["status"] == "failed" for r in result.rows)
    if failed:
        sys.exit(1)


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["extxyz", "traj", "db"]), default="extxyz", show_default=True)
@click.option("--out", "out", help="Output file (default: STORE with the format's suffix).")
@click.option("--parent-only/--all-frames", default=True, show_default=True,
              help="Only parent-labelled frames (the training data), or surrogate frames too.")
def export(store_path: str, fmt: str, out: str | None, parent_only: bool) -> None:
    """Write a campaign store's frames to an ASE format, with energies and forces."""
    from pathlib import Path

    from .store import StoreError
    from .store import export as export_store

    target = out or str(Path(store_path).with_suffix("." + fmt))
    try:
        count = export_store(store_path, target, fmt, parent_only=parent_only)
    except StoreError as exc:
        _fail(str(exc))
    click.echo(f"wrote {count} {'parent' if parent_only else ''} frames to {target}".replace("  ", " "))


if __name__ == "__main__":
    main()
