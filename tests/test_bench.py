"""The benchmark: Table 1 arithmetic, and the bench/plot commands end to end on a small set."""

from __future__ import annotations

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TESTS_DIR
from finetuna_parsl.learner.metrics import call_breakdown, calls_after_settled, compare, table_row


def row(sid, calls, energy, outcome="converged", scf=0):
    return {"system_id": sid, "parent_calls": calls, "final_energy": energy, "outcome": outcome,
            "scf_cycles": scf, "parent_wall_s": 0.5}


def test_table_row_matches_hand_computed_figures():
    reference = [row("a", 100, 0.0), row("b", 50, 1.0), row("c", 20, 2.0), row("d", 10, 3.0)]
    method = [row("a", 10, -0.05), row("b", 10, 1.01), row("c", 5, 2.03), row("d", 5, 3.0, outcome="parent_budget")]
    t = table_row("k-steps", method, reference)
    percents = [10.0, 20.0, 25.0, 50.0]
    mean = sum(percents) / 4
    sem = math.sqrt(sum((p - mean) ** 2 for p in percents) / 3 / 4)
    assert t.systems == 4 and t.parent_calls == 30
    assert t.percent_of_reference_mean == pytest.approx(mean) and t.percent_of_reference_sem == pytest.approx(sem)
    assert t.lower == 0.25  # a: found a lower minimum
    assert t.same == 0.5  # b and d
    assert t.accurate == 0.5  # a and b (c is 0.03 eV higher, d not parent-confirmed)
    assert t.relaxed == 0.75
    c = compare("k-steps", method, "bfgs", reference)
    assert c.ratio == pytest.approx(30 / 180) and c.accurate == 2
    assert c.missed == ("c (dE +0.030 eV)", "d (not relaxed: parent_budget)")  # named, with why
    from finetuna_parsl.report import comparison_table

    assert "k-steps: not accurate on 2 of 4: c (dE +0.030 eV), d (not relaxed: parent_budget)" in comparison_table([c])


def test_repeatability_section_states_how_and_the_spread_over_repeats():
    from finetuna_parsl.bench import BenchResult, repeatability_text
    from finetuna_parsl.reproducible import HOW

    once = BenchResult(reference="bfgs", repeats={"bfgs": [40], "k-steps": [12]})
    assert repeatability_text(once).startswith(HOW) and "--repeats N" in repeatability_text(once)
    twice = BenchResult(reference="bfgs", repeats={"bfgs": [40, 40], "k-steps": [12, 15]})
    assert "Made on" not in repeatability_text(twice)  # nothing recorded: nothing claimed
    lines = repeatability_text(twice).splitlines()
    assert "| bfgs | 40, 40 | 0 | 0.0% |" in lines and "| k-steps | 12, 15 | 3 | 22.2% |" in lines


def test_a_bench_table_names_the_machine_and_versions_it_ran_on():
    """Counts move across CPUs and library versions (reproducible.py): the table says where it was made."""
    from importlib import metadata

    import torch

    from finetuna_parsl.bench import BenchResult, repeatability_text
    from finetuna_parsl.reproducible import environment

    line = environment("ase.calculators.emt:EMT")
    for name in ("numpy", "scipy", "torch", "ase", "fairchem-core"):
        assert f"{name} {metadata.version(name)}" in line
    assert f"({torch.backends.cpu.get_cpu_capability()} kernels)" in line
    assert line.count("ase ") == 1  # the calculator's own distribution is named once
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    family = re.search(r"^cpu family\s*:\s*(\S+)", cpuinfo, re.M)
    if family:  # a VM may name only 'AMD EPYC': the family tells two hosts so named apart
        assert f"family {family.group(1)}" in line
    text = repeatability_text(BenchResult(reference="bfgs", repeats={"bfgs": [40]}, environment=line))
    assert f"Made on: {line}." in text and "not across installs" in text


def test_call_breakdown_counts_reasons_and_calls_after_fmax_first_fell_below_0_1():
    assert calls_after_settled([0.9, 0.5, 0.08, 0.2, 0.05, 0.02]) == 3  # the 0.08 call, then three more
    assert calls_after_settled([0.9, 0.02]) == 0
    assert calls_after_settled([0.9, 0.5]) == 0  # never below: none spent settling
    assert calls_after_settled([]) == 0
    calls = {
        "a": (["initial", "k-steps", "k-steps", "relaxed"], [1.0, 0.5, 0.09, 0.01]),
        "b": (["initial", "backoff", "relaxed"], [0.05, 0.2, 0.02]),
        "c": ([], []),
    }
    b = call_breakdown("k-steps", calls)
    assert b.method == "k-steps" and b.systems == 3 and b.parent_calls == 7
    assert b.by_reason == {"initial": 2, "k-steps": 2, "relaxed": 2, "backoff": 1}
    assert b.after_settled == 1 + 2
    assert call_breakdown("x", calls, threshold=0.6).after_settled == 2 + 2


def parse_markdown(text: str, first_header: str) -> dict[str, dict[str, str]]:
    """Rows of the Markdown table whose header starts with `first_header`, by their first cell."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_bench_and_plot_commands(tmp_path):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text(
        "systems: {source: demo, count: 2}\nparent: {kind: emt}\nsurrogate: {factory: 'toy_surrogate:make'}\n"
        f"learner: {{recipe: paper, k: 3}}\ncampaign: {{output: '{tmp_path / 'b.h5'}', max_concurrent: 2}}\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = lambda *args: subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", *args], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, timeout=600)
    proc = run("bench", str(cfg), "--methods", "bfgs,warm-start,k-steps,gpmin", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    for name in ("paper_table.md", "paper_table.csv", "accuracy_vs_speed.png", "per_system.png",
                 "energy_trajectory.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "paper_table.csv") as handle:
        table = {r["method"]: r for r in csv.DictReader(handle)}
    assert list(table) == ["bfgs", "warm-start", "k-steps", "gpmin"]
    assert float(table["bfgs"]["percent_of_reference_mean"]) == 100.0
    assert float(table["k-steps"]["percent_of_reference_mean"]) < 100.0
    assert float(table["k-steps"]["accurate"]) == 1.0
    paper = (out / "paper_table.md").read_text()
    assert "Made by: `finetuna-parsl bench" in paper
    assert "## Repeatability\n\nrepeatable on CPU on the same machine and library versions: each" in paper
    assert "\nMade on: CPU " in paper  # the machine and versions the counts hold for
    assert "Not accurate:\n\n- warm-start: " in paper and "- k-steps: accurate on every system" in paper
    # same minimum as the reference and anomalies: columns of the table, systems named below it
    assert table["bfgs"]["same_minimum"] == "2" and table["bfgs"]["other_lower"] == "0"
    for method in ("warm-start", "k-steps", "gpmin"):
        minima = [int(table[method][k]) for k in ("same_minimum", "other_lower", "other_higher")]
        assert sum(minima) == 2 and int(table[method]["anomalies_unknown"]) == 0, table[method]
    assert ("| same minimum | other, lower | other, higher | anomalies | anomalies unknown "
            "| accurate where bfgs ended without anomaly |") in paper
    assert "In another minimum than bfgs:\n\n- warm-start: " in paper and "Anomalies:\n\n- bfgs: " in paper
    for method in ("bfgs", "warm-start", "k-steps", "gpmin"):
        assert (tmp_path / f"b.{method}.h5").exists()
    assert float(table["gpmin"]["relaxed"]) == 1.0  # ASE's GPMin, on the same parent, store and budget

    # where the parent calls went, per method: by the query rule's reason, and after fmax first fell below 0.1
    header = "method | systems | parent calls | initial"
    breakdown = parse_markdown(proc.stdout, header)
    assert breakdown == parse_markdown((out / "paper_table.md").read_text(), header)
    assert list(breakdown) == ["bfgs", "warm-start", "k-steps", "gpmin"]
    for method, r in breakdown.items():
        assert int(r["parent calls"]) == int(table[method]["parent_calls"]) > 0
        by_reason = {k: int(v) for k, v in r.items() if k not in ("method", "systems", "parent calls") and
                     not k.startswith("after")}
        assert sum(by_reason.values()) == int(r["parent calls"]), r
        assert 0 <= int(r["after fmax < 0.1 eV/A"]) < int(r["parent calls"])
    assert int(breakdown["k-steps"]["initial"]) == 2  # one per system
    assert int(breakdown["bfgs"]["bfgs"]) == int(breakdown["bfgs"]["parent calls"])
    assert int(breakdown["gpmin"]["gpmin"]) == int(breakdown["gpmin"]["parent calls"])
    assert int(breakdown["bfgs"]["after fmax < 0.1 eV/A"]) > 0

    proc = run("plot", str(tmp_path / "b.k-steps.h5"), "--out", str(tmp_path / "plots"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "beside reference stores: b.bfgs.h5, b.warm-start.h5, b.gpmin.h5" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "b.k-steps_energy_trajectories.png", "b.k-steps_parent_calls.png"]
