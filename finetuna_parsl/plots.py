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
from .learner.recipes import DEFAULT_RECIPE, RECIPES  # noqa: E402
from .learner.reference import REFERENCE_METHODS  # noqa: E402
from .records import ResultRow, SystemResult, as_results  # noqa: E402
from .store import load_parent_energies, load_summary, open_h5, read_runs  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

#: The reference method's bars: grey, hatched, left of the others in each group.
REFERENCE_STYLE = {"color": "0.65", "hatch": "//", "edgecolor": "0.3", "linewidth": 0.5}
#: The reference method's line in trajectory plots.
REFERENCE_LINE = {"color": "0.45", "ls": "--", "lw": 1.2}
#: Energy tolerance of "accurate" (eV), shaded around the reference's relaxed energy.
TOLERANCE_EV = 0.02
#: Up to this many systems the trajectory figure has one panel per system; beyond, the median and spread.
MAX_PANELS = 30


def _integer_ticks(ax, axis: str = "both") -> None:
    """Whole-number ticks (parent calls are counted, never fractional)."""
    if axis in ("x", "both"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if axis in ("y", "both"):
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def store_method(store: str | Path) -> str:
    """The method a store holds, as a legend names it: a reference method's name, or `online (<query rule>)`
    from the run config stored with its last run."""
    import yaml

    with open_h5(store, "r") as f:
        method = str(f.attrs.get("method", "online"))
        runs = read_runs(f)
    if method != "online":
        return method
    try:
        learner = (yaml.safe_load(runs[-1]["run_config"]) or {}).get("learner") or {}
        return f"online ({learner.get('query') or RECIPES[learner.get('recipe', DEFAULT_RECIPE)].query})"
    except (yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError):
        return "online"


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


def per_system_bars(rows: Mapping[str, Sequence[ResultRow]], reference: str, path: str | Path,
                    matches: Mapping[str, Mapping[str, tuple[str, float]]] | None = None) -> Path:
    """Fig. 4: per-system parent calls of each method beside the reference's (grey, hatched), and each
    method's final parent energy minus the reference's (eV; the grey band is the 0.02 eV tolerance). On the
    energy bars: a ring where the method ended in another minimum than the reference's (`matches`, per method:
    metrics.minimum_matches), a red cross where its final structure has an OC20 anomaly (its .anomalies)."""
    rows = {method: as_results(method_rows) for method, method_rows in rows.items()}
    ref = {r.system_id: r for r in rows[reference]}
    ids = sorted(ref)
    methods = [reference] + [m for m in rows if m != reference]
    width = 0.8 / len(methods)
    x = np.arange(len(ids))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(ids) + 2), 7), dpi=120, sharex=True,
                                      layout="constrained")
    ref_total = sum(ref[s].parent_calls for s in ids)
    labels = {"other": "another minimum", "anomaly": "OC20 anomaly"}  # each legend entry once
    for i, method in enumerate(methods):
        by_id = {r.system_id: r for r in rows[method]}
        calls = [by_id[s].parent_calls if s in by_id else np.nan for s in ids]
        de = [by_id[s].final_energy - ref[s].final_energy if s in by_id else np.nan for s in ids]
        style = REFERENCE_STYLE if method == reference else {"color": f"C{i - 1}"}
        total = int(np.nansum(calls))
        if method == reference:
            label = f"{method} (reference): {total} calls"
        else:
            label = f"{method}: {total} calls" + (f", {total / ref_total:.0%} of {reference}" if ref_total else "")
        top.bar(x + i * width, calls, width, label=label, **style)
        if method != reference:
            bottom.bar(x + i * width, de, width, label=method, **style)
            kinds = {s: kind for s, (kind, _) in (matches or {}).get(method, {}).items()}
            other = [j for j, s in enumerate(ids) if kinds.get(s, "").startswith("other")]
            if other:
                bottom.scatter(x[other] + i * width, np.nan_to_num(np.array(de)[other]), s=28, facecolors="none",
                               edgecolors="k", linewidths=0.8, zorder=3, label=labels.pop("other", None))
        flagged = [j for j, s in enumerate(ids) if s in by_id and by_id[s].anomalies]
        if flagged:
            y = np.zeros(len(flagged)) if method == reference else np.nan_to_num(np.array(de)[flagged])
            bottom.scatter(x[flagged] + i * width, y, marker="x", s=30, color="red", zorder=4,
                           label=labels.pop("anomaly", None))
    top.set_ylabel("parent calls per system")
    _integer_ticks(top, "y")
    top.legend(fontsize=8, ncol=min(3, len(methods)), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
    top.set_title(f"Parent calls and final energy per system, {len(ids)} systems, against {reference}",
                  fontsize=11, pad=28)
    top.grid(axis="y", alpha=0.3)
    bottom.axhspan(-TOLERANCE_EV, TOLERANCE_EV, color="grey", alpha=0.2, label=f"±{TOLERANCE_EV} eV (accurate)")
    bottom.axhline(0, color="0.3", lw=0.8)
    bottom.set_ylabel(f"E − E({reference}) / eV")
    bottom.legend(fontsize=8, ncol=min(4, len(methods)), loc="lower left", bbox_to_anchor=(0, 1.01), frameon=False)
    bottom.set_xticks(x + 0.4 - width / 2, ids, rotation=60, ha="right", fontsize=7)
    bottom.set_xlabel("system")
    _save(fig, path)
    return Path(path)


def energy_trajectories(stores: Mapping[str, str | Path], system_id: str, path: str | Path,
                        reference: str | None = None) -> Path:
    """Fig. 2b: parent energy against parent-call number for one system, one line per method; the `reference`
    method (dashed grey) and its relaxed energy (the shaded ±0.02 eV band) beside the others."""
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120, layout="constrained")
    energies = {method: load_parent_energies(store).get(system_id) for method, store in stores.items()}
    order = ([reference] if reference in energies else []) + [m for m in energies if m != reference]
    colour = 0
    for method in order:
        e = energies[method]
        if e is None or not len(e):
            continue
        if method == reference:
            ax.axhspan(e[-1] - TOLERANCE_EV, e[-1] + TOLERANCE_EV, color="grey", alpha=0.2,
                       label=f"{reference}'s relaxed energy ±{TOLERANCE_EV} eV")
            ax.plot(np.arange(1, len(e) + 1), e, marker=".", label=f"{method} (reference): {len(e)} calls",
                    **REFERENCE_LINE)
        else:
            ax.plot(np.arange(1, len(e) + 1), e, marker=".", color=f"C{colour}", label=f"{method}: {len(e)} calls")
            colour += 1
    _integer_ticks(ax, "x")
    ax.set_xlabel("parent call")
    ax.set_ylabel("parent energy / eV")
    ax.set_title(f"Parent energy per parent call: {system_id}", fontsize=10)
    ax.legend(fontsize=8, title="method: parent calls", title_fontsize=8)
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
    unless `references` names them: {method: store}) and the parent energy trajectory of each system (beside
    the first reference's): `<stem>_parent_calls.png`, `<stem>_energy_trajectories.png`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = load_summary(store)
    refs = dict(reference_stores(store) if references is None else references)
    ref_rows = {method: {r.system_id: r for r in load_summary(path)} for method, path in refs.items()}
    name = Path(store).stem
    method = store_method(store)
    made = [out_dir / f"{name}_parent_calls.png", out_dir / f"{name}_energy_trajectories.png"]
    parent_calls_chart(rows, method, ref_rows, made[0])
    ref_energies = {m: load_parent_energies(p) for m, p in list(refs.items())[:1]}
    trajectories_figure(load_parent_energies(store), method, ref_energies, made[1])
    return made


def parent_calls_chart(rows: Sequence[ResultRow], method: str, ref_rows: Mapping[str, Mapping[str, ResultRow]],
                       path: str | Path) -> Path:
    """Parent calls per system: each reference method's bars (the first grey, hatched) left of the method's
    (green where a parent call confirmed it relaxed, red where not); totals in the legend and title."""
    rows = as_results(rows)
    ref_rows = {ref: {s: SystemResult.of(r) for s, r in by_id.items()} for ref, by_id in ref_rows.items()}
    ids = [r.system_id for r in rows]
    x = np.arange(len(ids))
    width = 0.8 / (1 + len(ref_rows))
    fig, ax = plt.subplots(figsize=(max(6.5, 0.45 * len(rows) + 2), 4.8), dpi=120, layout="constrained")
    totals = {}
    for j, (ref, by_id) in enumerate(ref_rows.items()):
        style = REFERENCE_STYLE if j == 0 else {"color": ("tab:blue", "tab:purple", "tab:orange")[(j - 1) % 3]}
        calls = [by_id[s].parent_calls if s in by_id else np.nan for s in ids]
        totals[ref] = int(np.nansum(calls))
        bars = ax.bar(x + j * width, calls, width, label=f"{ref} (reference): {totals[ref]} calls", **style)
        if len(ids) <= 30:
            ax.bar_label(bars, fontsize=6, padding=1)
    online = x + len(ref_rows) * width
    converged = np.array([r.converged for r in rows], dtype=bool)
    calls = np.array([r.parent_calls for r in rows], dtype=float)
    total = int(calls.sum())
    label = f"{method}: {total} calls, {int(converged.sum())}/{len(rows)} parent-confirmed relaxed"
    bars = [ax.bar(online[converged], calls[converged], width, color="tab:green", label=label)]
    if (~converged).any():
        bars.append(ax.bar(online[~converged], calls[~converged], width, color="tab:red",
                           label=f"{method}: not relaxed ({int((~converged).sum())})"))
    if len(ids) <= 30:
        for b in bars:
            ax.bar_label(b, fontsize=6, padding=1)
    title = f"Parent calls per system: {method}, {total} in all"
    if totals:
        first, ref_total = next(iter(totals.items()))
        title += f", against {first}'s {ref_total}" + (f" (ratio {total / ref_total:.2f})" if ref_total else "")
    ax.set_title(title, fontsize=10, pad=30)
    ax.set_ylabel("parent calls")
    ax.set_xlabel(f"system ({len(ids)})")
    _integer_ticks(ax, "y")
    ax.set_xticks(x + 0.4 - width / 2, ids, rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.01), ncol=2, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    return Path(path)


def trajectories_figure(energies: Mapping[str, np.ndarray], method: str,
                        references: Mapping[str, Mapping[str, np.ndarray]], path: str | Path) -> Path:
    """Parent energy per parent call of every system, relative to its relaxed energy: the reference method's
    final energy where there is one (the dashed grey line is the reference's own trajectory), else the method's
    own last energy. Up to MAX_PANELS systems one small panel each; beyond, the median and the 10-90 % spread
    over systems per call number."""
    ref_name, ref = next(iter(references.items()), (None, {}))
    energies = {sid: e for sid, e in energies.items() if len(e)}

    def zero(sid: str, e: np.ndarray) -> float:
        r = ref.get(sid)
        return float(r[-1]) if r is not None and len(r) else float(e[-1])

    against = f"E − E({ref_name}, relaxed)" if ref_name else "E − E(final)"
    if len(energies) > MAX_PANELS:
        return _trajectory_spread(energies, method, ref_name, ref, zero, against, path)
    n = max(1, len(energies))
    cols = min(5, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.1 * rows + 1.0), dpi=120, squeeze=False,
                             layout="constrained")
    for ax, (sid, e) in zip(axes.flat, energies.items()):
        e0 = zero(sid, e)
        ax.axhspan(-TOLERANCE_EV, TOLERANCE_EV, color="grey", alpha=0.2, lw=0)
        ax.axhline(0, color="0.3", lw=0.6)
        r = ref.get(sid)
        if r is not None and len(r):
            ax.plot(np.arange(1, len(r) + 1), r - e0, **REFERENCE_LINE)
        ax.plot(np.arange(1, len(e) + 1), e - e0, color="tab:green", marker=".", ms=4, lw=1.2)
        calls = f"{len(e)}" + (f" vs {len(r)}" if r is not None and len(r) else "")
        ax.set_title(f"{sid}\n{calls} calls", fontsize=7)
        ax.set_yscale("symlog", linthresh=TOLERANCE_EV / 2)
        _integer_ticks(ax, "x")
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat):
        if i >= len(energies):
            ax.set_visible(False)
        elif i + cols >= len(energies):  # the lowest panel of its column
            ax.set_xlabel("parent call", fontsize=8)
    fig.supylabel(f"{against} / eV (symlog)", fontsize=9)
    handles = [plt.Line2D([], [], color="tab:green", marker=".", label=method)]
    if ref_name:
        handles.append(plt.Line2D([], [], label=f"{ref_name} (reference)", **REFERENCE_LINE))
    handles.append(plt.Rectangle((0, 0), 1, 1, color="grey", alpha=0.2,
                                 label=f"±{TOLERANCE_EV} eV of {ref_name + chr(39) + 's' if ref_name else 'the'} "
                                       "relaxed energy"))
    fig.suptitle(f"Parent energy per parent call, {len(energies)} systems: {method}", fontsize=11)
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    _save(fig, path)
    return Path(path)


def _trajectory_spread(energies, method, ref_name, ref, zero, against, path) -> Path:
    """Median and 10-90 % spread over systems of the energy above the relaxed one, per parent-call number, for the
    method and the reference; the count of systems still relaxing at each call below."""
    fig, (ax, count_ax) = plt.subplots(2, 1, figsize=(7, 5.5), dpi=120, sharex=True, height_ratios=(3, 1),
                                       layout="constrained")
    series = [(method, {sid: e - zero(sid, e) for sid, e in energies.items()}, {"color": "tab:green"})]
    if ref_name:
        series.append((f"{ref_name} (reference)", {sid: r - zero(sid, energies[sid]) for sid, r in ref.items()
                                                    if sid in energies and len(r)}, {"color": "0.45", "ls": "--"}))
    for label, curves, style in series:
        longest = max(len(c) for c in curves.values())
        grid = np.full((len(curves), longest), np.nan)
        for i, c in enumerate(curves.values()):
            grid[i, :len(c)] = c
            grid[i, len(c):] = c[-1]  # a finished relaxation stays at its last energy
        calls = np.arange(1, longest + 1)
        ax.plot(calls, np.median(grid, axis=0), label=f"{label}: median of {len(curves)}, "
                f"{sum(len(c) for c in curves.values())} calls", **style)
        ax.fill_between(calls, np.percentile(grid, 10, axis=0), np.percentile(grid, 90, axis=0), alpha=0.2,
                        color=style["color"], label=f"{label}: 10-90 % of systems")
        count_ax.step(calls, [(np.array([len(c) for c in curves.values()]) >= k).sum() for k in calls], where="mid",
                      **style)
    ax.axhspan(-TOLERANCE_EV, TOLERANCE_EV, color="grey", alpha=0.2, lw=0, label=f"±{TOLERANCE_EV} eV")
    ax.set_yscale("symlog", linthresh=TOLERANCE_EV)
    ax.set_ylabel(f"{against} / eV")
    ax.set_title(f"Parent energy per parent call, {len(energies)} systems: {method}", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    count_ax.set_ylabel("systems still\nrelaxing", fontsize=8)
    count_ax.set_xlabel("parent call")
    _integer_ticks(count_ax, "both")
    count_ax.grid(alpha=0.3)
    _save(fig, path)
    return Path(path)
