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
from .learner.reference import REFERENCE_METHODS  # noqa: E402
from .records import OUTCOME_CONVERGED  # noqa: E402
from .store import load_parent_energies, load_summary  # noqa: E402

#: The reference method's bars: grey, hatched, left of the others in each group.
REFERENCE_STYLE = {"color": "0.65", "hatch": "//", "edgecolor": "0.3", "linewidth": 0.5}


def _save(fig, path: str | Path) -> None:
    """Save with every label inside the picture (tight bounding box), then free the figure."""
    fig.savefig(path, bbox_inches="tight", pad_inches=0.1)
    plt.close(fig)


def accuracy_vs_speed(table: Sequence[MethodRow], reference: str, path: str | Path) -> Path:
    """Fig. 3: accuracy (%) against parent calls as % of the reference, one point per method."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120, layout="constrained")
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
    _save(fig, path)
    return Path(path)


def per_system_bars(rows: Mapping[str, Sequence[dict]], reference: str, path: str | Path,
                    matches: Mapping[str, Mapping[str, tuple[str, float]]] | None = None) -> Path:
    """Fig. 4: per-system parent calls of each method beside the reference's (grey, hatched), and each
    method's final parent energy minus the reference's (eV; the grey band is the 0.02 eV tolerance). On the
    energy bars: a ring where the method ended in another minimum than the reference's (`matches`, per method:
    metrics.minimum_matches), a red cross where its final structure has an OC20 anomaly (row["anomalies"])."""
    ref = {r["system_id"]: r for r in rows[reference]}
    ids = sorted(ref)
    methods = [reference] + [m for m in rows if m != reference]
    width = 0.8 / len(methods)
    x = np.arange(len(ids))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(ids) + 2), 7), dpi=120, sharex=True,
                                      layout="constrained")
    labels = {"other": "another minimum", "anomaly": "OC20 anomaly"}  # each legend entry once
    for i, method in enumerate(methods):
        by_id = {r["system_id"]: r for r in rows[method]}
        calls = [by_id[s]["parent_calls"] if s in by_id else np.nan for s in ids]
        de = [by_id[s]["final_energy"] - ref[s]["final_energy"] if s in by_id else np.nan for s in ids]
        style = REFERENCE_STYLE if method == reference else {"color": f"C{i - 1}"}
        label = f"{method} (reference)" if method == reference else method
        top.bar(x + i * width, calls, width, label=label, **style)
        if method != reference:
            bottom.bar(x + i * width, de, width, label=method, **style)
            kinds = {s: kind for s, (kind, _) in (matches or {}).get(method, {}).items()}
            other = [j for j, s in enumerate(ids) if kinds.get(s, "").startswith("other")]
            if other:
                bottom.scatter(x[other] + i * width, np.nan_to_num(np.array(de)[other]), s=28, facecolors="none",
                               edgecolors="k", linewidths=0.8, zorder=3, label=labels.pop("other", None))
        flagged = [j for j, s in enumerate(ids) if by_id.get(s, {}).get("anomalies")]
        if flagged:
            y = np.zeros(len(flagged)) if method == reference else np.nan_to_num(np.array(de)[flagged])
            bottom.scatter(x[flagged] + i * width, y, marker="x", s=30, color="red", zorder=4,
                           label=labels.pop("anomaly", None))
    top.set_ylabel("parent calls")
    top.legend(fontsize=7, ncol=min(4, len(methods)), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
    top.grid(axis="y", alpha=0.3)
    bottom.axhspan(-0.02, 0.02, color="grey", alpha=0.2, label="±0.02 eV")
    bottom.axhline(0, color="0.3", lw=0.8)
    bottom.set_ylabel(f"E − E({reference}) / eV")
    bottom.legend(fontsize=7, ncol=min(4, len(methods)), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
    bottom.set_xticks(x + 0.4 - width / 2, ids, rotation=60, ha="right", fontsize=7)
    _save(fig, path)
    return Path(path)


def energy_trajectories(stores: Mapping[str, str | Path], system_id: str, path: str | Path) -> Path:
    """Fig. 2b: parent energy against parent-call number for one system, one line per method."""
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120, layout="constrained")
    for method, store in stores.items():
        energies = load_parent_energies(store).get(system_id)
        if energies is not None and len(energies):
            ax.plot(np.arange(1, len(energies) + 1), energies, marker=".", label=f"{method} ({len(energies)})")
    ax.set_xlabel("parent call")
    ax.set_ylabel("parent energy / eV")
    ax.set_title(system_id, fontsize=9)
    ax.legend(fontsize=8, title="method (parent calls)", title_fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return Path(path)


def reference_stores(store: str | Path) -> dict[str, Path]:
    """Reference-method stores beside `store` (as `run --compare` and `bench` name them), by method."""
    store = Path(store)
    suffix = store.suffix or ".h5"
    stems = dict.fromkeys([store.stem, store.stem.rsplit(".", 1)[0]])  # run: demo.bfgs.h5; bench: b.k-steps -> b
    found = {}
    for method in REFERENCE_METHODS:
        for stem in stems:
            candidate = store.with_name(f"{stem}.{method}{suffix}")
            if candidate.is_file() and candidate != store and method not in found:
                found[method] = candidate
    return found


def plot_store(store: str | Path, out_dir: str | Path,
               references: Mapping[str, str | Path] | None = None) -> list[Path]:
    """Figures of one campaign: parent calls per system (beside each reference method's, found beside the store
    unless `references` names them: {method: store}) and the parent energy trajectory of each system."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_summary(store)
    refs = dict(reference_stores(store) if references is None else references)
    ref_rows = {method: {r["system_id"]: r for r in load_summary(path)} for method, path in refs.items()}
    name = Path(store).stem
    made = []
    ids = [r["system_id"] for r in rows]
    x = np.arange(len(ids))
    width = 0.8 / (1 + len(refs))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4.5), dpi=120, layout="constrained")
    for j, (method, by_id) in enumerate(ref_rows.items()):
        style = REFERENCE_STYLE if j == 0 else {"color": ("tab:blue", "tab:purple", "tab:orange")[(j - 1) % 3]}
        ax.bar(x + j * width, [by_id[s]["parent_calls"] if s in by_id else np.nan for s in ids], width,
               label=f"{method} (reference)", **style)
    online = x + len(refs) * width
    converged = np.array([r["outcome"] == OUTCOME_CONVERGED for r in rows])
    calls = np.array([r["parent_calls"] for r in rows], dtype=float)
    ax.bar(online[converged], calls[converged], width, color="tab:green", label=f"{name}: parent-confirmed relaxed")
    if (~converged).any():
        ax.bar(online[~converged], calls[~converged], width, color="tab:red", label=f"{name}: not relaxed")
    ax.set_ylabel("parent calls")
    ax.set_xticks(x + 0.4 - width / 2, ids, rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    made.append(out_dir / f"{name}_parent_calls.png")
    _save(fig, made[-1])
    energies = load_parent_energies(store)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120, layout="constrained")
    for i, (sid, e) in enumerate(energies.items()):
        if len(e):
            ax.plot(np.arange(1, len(e) + 1), e - e[-1], lw=1, color=plt.cm.tab20(i % 20), label=f"{sid} ({len(e)})")
    ax.set_xlabel("parent call")
    ax.set_ylabel("E − E(final) / eV")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.grid(alpha=0.3)
    ax.set_title(f"{name}: parent energy per call")
    ax.legend(fontsize=6, title="system (parent calls)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
              ncol=1 + len(energies) // 25)
    made.append(out_dir / f"{name}_energy_trajectories.png")
    _save(fig, made[-1])
    return made
