"""Anomaly flags and same-minimum counts where users read results: the store, inspect (--json), export, the run
summary, --compare's and bench's tables; and a store written before the flags existed."""

from __future__ import annotations

import json

import h5py
import numpy as np
from click.testing import CliRunner

from conftest import TESTS_DIR
from finetuna_parsl.bench import BenchResult, anomalies_text, markdown_table, minima_text
from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.cli import main
from finetuna_parsl.config import parse_config
from finetuna_parsl.learner.anomaly import detect
from finetuna_parsl.learner.metrics import (OTHER_HIGHER, OTHER_LOWER, SAME, compare, minimum_match,
                                            minimum_matches, table_row)
from finetuna_parsl.records import Evaluation, SystemSpec
from finetuna_parsl.report import comparison_table, summary_table
from finetuna_parsl.store import NOT_RECORDED, CampaignStore, iter_frames, load_summary
from finetuna_parsl.systems import build_demo_system, demo_systems

CONFIG = """
systems: {{source: demo, count: 2}}
parent: {{kind: emt}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, fmax: 0.1}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: {site}
"""


def inspect_json(path) -> dict:
    proc = CliRunner().invoke(main, ["inspect", "--json", str(path)])
    assert proc.exit_code == 0, proc.output
    return json.loads(proc.stdout)


def test_a_campaign_stores_the_flags_and_a_store_from_before_them_still_reads(tmp_path, toy_on_workers):
    output = tmp_path / "flags.h5"
    config = parse_config(CONFIG.format(output=output, site=TESTS_DIR / "threads_site.py"), where="flags.yaml")
    systems = demo_systems(2)
    _, result = run_campaign(config, systems)
    for row in result.rows:  # OC20-tagged demo systems: checked, with the driver's own DetectTrajAnomaly answer
        assert isinstance(row["anomalies"], list) and row["anomalies_unknown"] == ""
    seen = inspect_json(output)
    assert [r["anomalies"] for r in seen["systems"]] == [r["anomalies"] for r in result.rows]
    assert sum(seen["totals"]["anomalies"].values()) == 2
    assert "anomalies" in summary_table(result.rows).splitlines()[0]
    finals = {a.info["system_id"]: a.info["anomalies"] for a in iter_frames(output, final=True)}
    assert set(finals.values()) <= {"none", "dissociated", "desorbed", "surface_changed", "intercalated"}

    with h5py.File(output, "a") as f:  # as a store written before anomaly flags were kept
        for g in f["systems"].values():
            del g.attrs["anomalies"], g.attrs["anomalies_unknown"]
    old = load_summary(output)
    assert [r["anomalies"] for r in old] == [None, None] and old[0]["anomalies_unknown"] == NOT_RECORDED
    proc = CliRunner().invoke(main, ["inspect", str(output)])
    assert proc.exit_code == 0 and "unknown" in proc.output and "not recorded" in proc.output, proc.output
    assert inspect_json(output)["totals"]["anomalies"] == {"unknown": 2}
    assert {a.info["anomalies"] for a in iter_frames(output, final=True)} == {"unknown"}

    seen = []
    _, again = run_campaign(config, systems, on_progress=lambda p: seen.append((p.done, p.running)))
    # the same command again: nothing relaxed again, the flags filled in
    assert [r["anomalies"] for r in again.rows] == [r["anomalies"] for r in result.rows]
    assert again.parent_calls_this_run == 0 and seen[-1] == (2, 0) and max(done for done, _ in seen) == 2


def test_a_finished_reference_store_from_before_the_flags_gets_them_without_being_redone(tmp_path, toy_on_workers):
    output = tmp_path / "ref.h5"
    config = parse_config(CONFIG.format(output=output, site=TESTS_DIR / "threads_site.py"), where="ref.yaml")
    systems = demo_systems(1)
    path, first = run_campaign(config, systems, "bfgs")
    _, again = run_campaign(config, systems, "bfgs")  # finished, flags stored: nothing to do
    assert again.parent_calls_this_run == 0 and again.rows == first.rows
    with h5py.File(path, "a") as f:
        for g in f["systems"].values():
            del g.attrs["anomalies"], g.attrs["anomalies_unknown"]
    _, third = run_campaign(config, systems, "bfgs")
    assert third.parent_calls_this_run == 0  # a finished reference relaxation is not redone
    assert third.rows[0]["anomalies"] == first.rows[0]["anomalies"] is not None


def co_on_pt111() -> SystemSpec:
    return SystemSpec.from_atoms("co-pt111", build_demo_system("fcc111", "Pt", "CO", np.random.default_rng(3)))


def test_inspect_names_a_flagged_system_and_says_why_one_is_unknown(tmp_path):
    system = co_on_pt111()
    untagged = SystemSpec.from_atoms("untagged", system.to_atoms())
    untagged = type(system)(**{**untagged.__dict__, "tags": np.zeros_like(system.tags)})
    desorbed = system.positions + np.where(system.tags[:, None] == 2, [0.0, 0.0, 5.0], 0.0)
    with CampaignStore(tmp_path / "s.h5") as store:
        for s in (system, untagged):
            store.add_system(s)
            store.append_steps(s.system_id, [Evaluation(desorbed, -1.0, np.zeros_like(desorbed), reason="initial")])
            store.set_anomalies(s.system_id, *detect(s, desorbed))
            store.set_status(s.system_id, "done", outcome="converged")
    seen = {r["system_id"]: r for r in inspect_json(tmp_path / "s.h5")["systems"]}
    assert seen["co-pt111"]["anomalies"] == ["desorbed"] and seen["co-pt111"]["anomalies_unknown"] == ""
    assert seen["untagged"]["anomalies"] is None and "no adsorbate tags" in seen["untagged"]["anomalies_unknown"]
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "s.h5")]).output
    assert "1 of 2 systems: co-pt111 (desorbed); unknown for 1" in text
    assert "anomalies unknown for 1: no adsorbate tags" in text


def test_same_minimum_under_periodic_images_and_lower_or_higher_otherwise():
    system = co_on_pt111()
    p = system.positions
    free = np.flatnonzero(~system.fixed)
    wrapped = p.copy()
    wrapped[free[0]] += system.cell[0]  # the same structure, one atom written one cell vector away
    assert minimum_match(system, wrapped, -1.0, p, -1.0) == (SAME, 0.0)
    nudged = p.copy()
    nudged[free[0]] += [0.25, 0.0, 0.0]
    assert minimum_match(system, nudged, -1.0, p, -1.0)[0] == SAME
    hopped = p.copy()
    hopped[system.tags == 2] += [1.4, 0.0, 0.0]  # the adsorbate on the next site
    kind, moved = minimum_match(system, hopped, -1.5, p, -1.0)
    assert kind == OTHER_LOWER and abs(moved - 1.4) < 1e-9
    assert minimum_match(system, hopped, -0.9, p, -1.0)[0] == OTHER_HIGHER
    fixed_moved = p.copy()
    fixed_moved[np.flatnonzero(system.fixed)[0]] += [2.0, 0.0, 0.0]  # fixed atoms do not count
    assert minimum_match(system, fixed_moved, -1.0, p, -1.0)[0] == SAME


def row(sid, calls, energy, anomalies=()):
    return {"system_id": sid, "parent_calls": calls, "final_energy": energy, "outcome": "converged",
            "scf_cycles": 0, "parent_wall_s": 0.1, "anomalies": list(anomalies), "anomalies_unknown": ""}


def test_compare_and_bench_tables_count_minima_and_anomalies_and_name_the_systems():
    system = co_on_pt111()
    systems = {sid: system for sid in "abc"}
    p = system.positions
    hopped = p + np.where(system.tags[:, None] == 2, [1.4, 0.0, 0.0], 0.0)
    reference = [row("a", 50, -1.0), row("b", 40, -1.0), row("c", 30, -1.0, ["intercalated"])]
    method = [row("a", 5, -1.0), row("b", 4, -1.5), row("c", 3, -0.5, ["desorbed"])]
    finals = {"a": p, "b": hopped, "c": hopped}
    matches = minimum_matches(systems, method, finals, reference, {s: p for s in "abc"})
    assert {s: kind for s, (kind, _) in matches.items()} == {"a": SAME, "b": OTHER_LOWER, "c": OTHER_HIGHER}

    text = comparison_table([compare("online", method, "bfgs", reference, matches)])
    header, line = text.splitlines()[0].split(), text.splitlines()[2].split()
    assert header[-6:] == ["same", "lower", "higher", "anomalies", "ref.", "anom."]
    assert line[-5:] == ["1", "1", "1", "1", "1"], text  # same, lower, higher; anomalies: the method's, bfgs's
    assert "online: another minimum than bfgs on 2 of 3: b (lower, 1.40 A), c (higher, 1.40 A)" in text
    assert "online: anomalies on 1 of 3: c (desorbed)" in text and "bfgs: anomalies on 1 of 3: c (intercalated)" in text

    result = BenchResult(reference="bfgs", rows={"bfgs": reference, "k-steps": method},
                         matches={"bfgs": {s: (SAME, 0.0) for s in "abc"}, "k-steps": matches})
    result.table = [table_row(m, result.rows[m], reference, matches=result.matches[m]) for m in ("bfgs", "k-steps")]
    table = markdown_table(result).splitlines()
    assert table[0].endswith("| same minimum | other, lower | other, higher | anomalies | anomalies unknown "
                             "| accurate where bfgs ended without anomaly |")
    assert table[2].endswith("| 3 | 0 | 0 | 1 | 0 | 2/2 |") and table[3].endswith("| 1 | 1 | 1 | 1 | 0 | 2/2 |")
    assert minima_text(result) == "- k-steps: b (lower, 1.40 A), c (higher, 1.40 A)"
    assert anomalies_text(result) == "- bfgs: c (intercalated)\n- k-steps: c (desorbed)"


def test_accuracy_where_the_reference_ended_without_anomaly_leaves_out_anomalous_and_unknown_references():
    """A reference that dissociated or rebuilt the surface sets an energy an intact adsorbate cannot reach; the
    table says how accurate a method is on the systems where the reference ended as OC20 would keep it."""
    reference = [row("a", 50, -1.0), row("b", 40, -1.0), row("c", 30, -2.0, ["dissociated"]),
                 {**row("d", 20, -1.0), "anomalies": None}]
    method = [row("a", 5, -1.0), row("b", 4, -0.9), row("c", 3, -1.0), row("d", 2, -1.0)]
    t = table_row("k-steps", method, reference)
    assert t.accurate == 0.5  # a and d
    assert (t.reference_clean, t.accurate_where_reference_clean) == (2, 1)  # a and b; only a accurate
    bare = table_row("k-steps", method, [{**r, "anomalies": None} for r in reference])
    assert (bare.reference_clean, bare.accurate_where_reference_clean) == (0, 0)
    result = BenchResult(reference="bfgs", rows={"bfgs": [{**r, "anomalies": None} for r in reference]})
    result.table = [bare]
    assert markdown_table(result).splitlines()[2].endswith("| - |")  # no reference anomalies known: no figure
