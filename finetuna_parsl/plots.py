"""Figures of the paper from stores: accuracy vs speed (Fig. 3), per-system calls and dE (Fig. 4),
parent energy vs parent call (Fig. 2b). Uses matplotlib's non-interactive Agg backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .learner.metrics import MethodRow  # noqa: E402
from .store import load_parent_energies, load_summary  # noqa: E402


def accuracy_vs_speed(table: Sequence[MethodRow], reference: str, path: str | Path) -> Path:
    """Fig. 3: accuracy (%) against parent calls as % of the reference, one point per method."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    markers = "osD^vP*X"
    for i, row in enumerate(table):
        ax.errorbar(row.percent_of_reference_mean, 100 * row.accurate, xerr=row.percent_of_reference_sem,
                    fmt=markers[i % len(markers)], color=f"C{i}", capsize=3, label=row.method, alpha=0.85)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(f"parent calls, % of {reference} (mean ± SEM)")
    ax.set_ylabel("accurate: relaxed and dE ≤ 0.02 eV (%)")
    ax.set_xlim(left=0)
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs speed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def per_system_bars(rows: Mapping[str, Sequence[dict]], reference: str, path: str | Path) -> Path:
    """Fig. 4: per-system parent calls of each method, and its energy difference to the reference."""
    ref = {r["system_id"]: r for r in rows[reference]}
    ids = sorted(ref)
    methods = list(rows)
    width = 0.8 / len(methods)
    x = np.arange(len(ids))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(ids) + 2), 6.5), dpi=120, sharex=True)
    for i, method in enumerate(methods):
        by_id = {r["system_id"]: r for r in rows[method]}
        calls = [by_id[s]["parent_calls"] if s in by_id else np.nan for s in ids]
        de = [by_id[s]["final_energy"] - ref[s]["final_energy"] if s in by_id else np.nan for s in ids]
        top.bar(x + i * width, calls, width, label=method, color=f"C{i}")
        if method != reference:
            bottom.bar(x + i * width, de, width, label=method, color=f"C{i}")
    top.set_ylabel("parent calls")
    top.legend(fontsize=7, ncol=3)
    bottom.axhspan(-0.02, 0.02, color="grey", alpha=0.2)
    bottom.set_ylabel(f"E - E({reference}) / eV")
    bottom.set_xticks(x + 0.4 - width / 2, [s[:18] for s in ids], rotation=75, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def energy_trajectories(stores: Mapping[str, str | Path], system_id: str, path: str | Path) -> Path:
    """Fig. 2b: parent energy against parent-call number for one system, one line per method."""
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for method, store in stores.items():
        energies = load_parent_energies(store).get(system_id)
        if energies is not None and len(energies):
            ax.plot(np.arange(1, len(energies) + 1), energies, marker=".", label=f"{method} ({len(energies)})")
    ax.set_xlabel("parent call")
    ax.set_ylabel("parent energy / eV")
    ax.set_title(system_id, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_store(store: str | Path, out_dir: str | Path) -> list[Path]:
    """Per-system figures of one finished campaign: parent calls per system and energy trajectories."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_summary(store)
    name = Path(store).stem
    made = []
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(rows) + 2), 4), dpi=120)
    ax.bar([r["system_id"][:18] for r in rows], [r["parent_calls"] for r in rows],
           color=["tab:green" if r["outcome"] == "converged" else "tab:red" for r in rows])
    ax.set_ylabel("parent calls (green: parent-confirmed relaxed)")
    ax.tick_params(axis="x", rotation=75, labelsize=7)
    fig.tight_layout()
    made.append(out_dir / f"{name}_parent_calls.png")
    fig.savefig(made[-1])
    plt.close(fig)
    energies = load_parent_energies(store)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for sid, e in energies.items():
        if len(e):
            ax.plot(np.arange(1, len(e) + 1), e - e[-1], lw=1)
    ax.set_xlabel("parent call")
    ax.set_ylabel("E - E(final) / eV")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_title(f"{name}: parent energy per call, each system")
    fig.tight_layout()
    made.append(out_dir / f"{name}_energy_trajectories.png")
    fig.savefig(made[-1])
    plt.close(fig)
    return made
