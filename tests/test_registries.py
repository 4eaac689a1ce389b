"""Registries: a query rule is one registered function; a parent kind can come from another package through the
entry-point group finetuna_parsl.parents (a real dist-info on sys.path here, as pip would install it)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from finetuna_parsl.config import ConfigError, parse_config
from finetuna_parsl.learner.rules import get_rule, query_rule, rule_names
from finetuna_parsl.records import QUERY_RULES, LearnerSettings

NO_CHECKPOINT = "surrogate: {factory: 'toy_surrogate:make'}\n"


# --- query rules ---------------------------------------------------------------------------------------------------
@pytest.fixture
def two_steps():
    """A rule from outside the package, in one function: call the parent after every 2 surrogate steps."""

    @query_rule("two-steps", ceiling=lambda settings: 2)
    def fires(settings, step):
        return step.steps_in_segment >= 2

    yield "two-steps"
    QUERY_RULES.pop("two-steps", None)


def test_the_built_in_rules_are_registered_in_their_order():
    assert rule_names()[:3] == ("relaxed-only", "k-steps", "uncertainty")
    assert get_rule("uncertainty").needs_ensemble and not get_rule("k-steps").needs_ensemble
    with pytest.raises(ValueError, match="unknown query rule 'never'; known: relaxed-only, k-steps"):
        get_rule("never")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        query_rule("k-steps")(lambda settings, step: True)


def test_a_query_rule_from_one_function_is_accepted_by_config_and_used_by_the_learner(two_steps):
    from test_learner import SYSTEMS, relax

    config = parse_config(f"learner: {{recipe: paper, query: {two_steps}}}\n{NO_CHECKPOINT}", where="cfg.yaml")
    assert config.learner.query == two_steps
    state, proposals = relax(SYSTEMS[0], config.learner)
    reasons = {p.reason for p in proposals[1:]}
    assert two_steps in reasons, reasons
    assert all(len(p.segment) <= 2 for p in proposals)
    assert state.done


def test_an_unregistered_rule_is_one_line_listing_the_known_ones():
    with pytest.raises(ConfigError) as info:
        parse_config(f"learner: {{recipe: paper, query: two-steps}}\n{NO_CHECKPOINT}", where="cfg.yaml")
    assert str(info.value).startswith("cfg.yaml: learner.query: must be one of relaxed-only, k-steps, uncertainty")


def test_bench_runs_a_registered_rule_as_a_method(two_steps):
    from finetuna_parsl.bench import method_config

    config = parse_config(NO_CHECKPOINT, where="cfg.yaml")
    run, method = method_config(config, two_steps)
    assert method == "online" and run.learner.query == two_steps and run.surrogate.ensemble_size == 1
    assert method_config(config, "uncertainty")[0].surrogate.ensemble_size == 3


# --- parent kinds from other packages --------------------------------------------------------------------------------
@pytest.fixture
def lab_package(tmp_path, monkeypatch):
    """An installed package 'labparent' (a module and its dist-info, as pip lays them out) whose entry point
    registers the parent kind 'lab-emt'."""
    (tmp_path / "labparent.py").write_text(textwrap.dedent('''
        from finetuna_parsl.parents.emt import EMTSession

        class LabSession(EMTSession):
            """EMT under another name, with one option of its own."""

            kind = "lab-emt"

            def __init__(self, workdir=None, scale=1.0, **options):
                super().__init__(workdir=workdir, **options)
                self.scale = scale
    '''))
    info = tmp_path / "labparent-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labparent\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[finetuna_parsl.parents]\nlab-emt = labparent:LabSession\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "labparent", raising=False)  # each test's own package, imported afresh
    yield "lab-emt"
    sys.modules.pop("labparent", None)


def test_a_parent_kind_from_an_entry_point_is_accepted_by_config_and_built(lab_package):
    from finetuna_parsl.parents import check_systems, make_parent, parent_kinds
    from finetuna_parsl.systems import demo_systems

    assert parent_kinds()[lab_package] == "labparent:LabSession"
    config = parse_config(f"parent: {{kind: {lab_package}, options: {{scale: 2.0}}}}\n{NO_CHECKPOINT}",
                          where="cfg.yaml")
    session = make_parent(config.parent.kind, **config.parent.session_options())
    assert type(session).__name__ == "LabSession" and session.scale == 2.0
    system = demo_systems(1, seed=0)[0]
    usable, unusable = check_systems(config.parent.kind, config.parent.options, [system])
    assert usable == [system] and unusable == []
    session.start(system)
    point = session.calculate(system.positions)
    assert np.isfinite(point.energy) and point.forces.shape == (system.n_atoms, 3)
    session.close()


def test_without_the_package_the_kind_is_unknown():
    with pytest.raises(ConfigError, match="cfg.yaml: parent.kind: unknown parent 'lab-emt'"):
        parse_config(f"parent: {{kind: lab-emt}}\n{NO_CHECKPOINT}", where="cfg.yaml")


def test_an_entry_point_that_is_not_a_parent_session_is_a_setup_error(lab_package, tmp_path):
    from finetuna_parsl.parents import ParentSetupError, parent_class

    (tmp_path / "labparent-0.1.dist-info" / "entry_points.txt").write_text(
        "[finetuna_parsl.parents]\nlab-emt = labparent:textwrap\nemt = labparent:LabSession\n")
    (tmp_path / "labparent.py").write_text("import textwrap\n")
    with pytest.raises(ParentSetupError, match="is not a ParentSession subclass"):
        parent_class(lab_package)
    assert parent_class("emt").__name__ == "EMTSession"  # a built-in name wins over an entry point's
