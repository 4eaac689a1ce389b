"""benchmarks/learner.py's rows: chosen by a stable name, every learner setting pinned (issue 29 item 5)."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import fields
from pathlib import Path

import click
import pytest

from finetuna_parsl.records import LearnerSettings

ROOT = Path(__file__).resolve().parents[1]


def _learner_bench():
    spec = importlib.util.spec_from_file_location("benchmarks_learner", ROOT / "benchmarks" / "learner.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_every_learner_setting_is_pinned_and_every_row_builds() -> None:
    """A new LearnerSettings field must be pinned in BASELINE, or its default would change every row."""
    bench = _learner_bench()
    assert set(bench.BASELINE) == {f.name for f in fields(LearnerSettings)}
    resolved = [json.dumps(bench.row_settings(row.name), sort_keys=True) for row in bench.ROWS]
    assert len(set(resolved)) == len(resolved), "two rows name the same lever combination"
    assert len(bench.ROW_NAMES) == len(bench.ROWS)


def test_rows_are_chosen_by_name_and_positions_are_refused() -> None:
    bench = _learner_bench()
    assert [r.name for r in bench.parse_rows("all-exact-damped, baseline")] == ["all-exact-damped", "baseline"]
    assert bench.parse_rows("") == list(bench.ROWS)
    for bad in ("7,11", "baseline,nope"):
        with pytest.raises(click.ClickException) as err:
            bench.parse_rows(bad)
        assert "\n" not in err.value.message and "all-exact-damped" in err.value.message


def test_a_result_stored_before_a_lever_was_removed_is_reused_only_at_its_as_now_value() -> None:
    """Removing a lever changes every row's pinned settings; results stored while it existed were measured as the
    code now behaves only where the lever held its as-now value (REMOVED), and only those are reused."""
    bench = _learner_bench()
    now = bench.row_settings("demo-config")
    for name, value in bench.REMOVED.items():
        assert name not in now and name not in {f.name for f in fields(LearnerSettings)}
        assert bench.as_now({**now, name: value}) == now
        assert bench.as_now({**now, name: "another value"}) is None
    assert bench.as_now(now) == now


def test_benchmarks_readme_lists_every_table_and_every_history_record():
    """Issue 29 item 5: a table in benchmarks/ is current (listed with its command) or a dated history record;
    one the README does not name is a table nobody can re-make."""
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    current = [p.name for p in (ROOT / "benchmarks").glob("*.md") if p.name != "README.md"]
    assert current and all(f"`{name}`" in readme for name in current), [n for n in current if f"`{n}`" not in readme]
    history = [p.name + ("/" if p.is_dir() else "") for p in (ROOT / "benchmarks" / "history").iterdir()
               if not (p.suffix == "" and (ROOT / "benchmarks" / "history" / f"{p.name}.md").exists())]
    missing = [name for name in history if f"`{name}" not in readme]
    assert not missing, f"benchmarks/README.md does not list {missing}"
    assert all(name[:10].count("-") == 2 for name in history), history  # dated: YYYY-MM-DD-...
