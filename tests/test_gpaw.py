"""GPAW parent session: warm answers equal a fresh GPAW's, warm calls need fewer SCF iterations, bad input is refused."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc100
from ase.constraints import FixAtoms

from finetuna_parsl.config import load_config
from finetuna_parsl.records import SystemSpec
from finetuna_parsl.parents import ParentError, make_parent, parent_class
from finetuna_parsl.systems import load_systems

REPO = Path(__file__).resolve().parents[1]
#: Cheap enough for seconds per call: 3 atoms, 200 eV plane waves, 2x2x1 k-points.
OPTIONS = {"mode": "pw", "ecut": 200.0, "kpts": [2, 2, 1], "smearing": 0.1}


def gpaw_unusable() -> str | None:
    """Why GPAW cannot run here (not importable, or no PAW datasets for Al and H), or None."""
    try:
        import gpaw
    except ImportError as exc:
        return f"gpaw is not importable ({exc}); install with pip install 'finetuna-parsl[gpaw]'"
    found = {element for path in gpaw.setup_paths for element in ("Al", "H") if list(Path(path).glob(f"{element}.PBE*"))}
    if found != {"Al", "H"}:
        return f"no PBE PAW datasets for Al and H in gpaw.setup_paths={gpaw.setup_paths}; pip install gpaw-data"
    return None


needs_gpaw = pytest.mark.skipif(gpaw_unusable() is not None, reason=str(gpaw_unusable()))


@pytest.fixture(scope="module")
def system() -> SystemSpec:
    """H on top of a 2-layer Al(100) 1x1 slab, bottom Al fixed."""
    slab = fcc100("Al", size=(1, 1, 2), vacuum=4.0)
    add_adsorbate(slab, "H", 1.6, "ontop")
    slab.set_constraint(FixAtoms(indices=[0]))
    return SystemSpec.from_atoms("h-al100", slab)


def path(system: SystemSpec, n: int) -> list[np.ndarray]:
    """n positions of a short relaxation-like path: H and the top Al moving by 0.01-0.02 A a step."""
    points = []
    for i in range(n):
        positions = system.positions.copy()
        positions[2, 2] -= 0.02 * i
        positions[1, 2] += 0.01 * i
        points.append(positions)
    return points


def fresh_gpaw(system: SystemSpec, positions: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Energy, forces and SCF iterations of a brand-new GPAW calculator at `positions`."""
    from gpaw import GPAW

    atoms = system.to_atoms(positions)
    atoms.set_constraint()
    atoms.calc = GPAW(mode={"name": "pw", "ecut": 200.0}, xc="PBE", kpts=(2, 2, 1),
                      occupations={"name": "fermi-dirac", "width": 0.1}, txt=None)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.calc.get_number_of_iterations()


@needs_gpaw
def test_warm_session_matches_fresh_gpaw_and_saves_scf_iterations(system, tmp_path):
    session = make_parent("gpaw", workdir=tmp_path, **OPTIONS)
    session.start(system)
    results = [session.calculate(positions) for positions in path(system, 3)]
    for positions, result in zip(path(system, 3), results):
        energy, forces, _ = fresh_gpaw(system, positions)
        assert result.energy == pytest.approx(energy, abs=1e-4)
        np.testing.assert_allclose(result.forces, forces, atol=5e-3)
    assert abs(results[0].forces[0, 2]) > 0.1  # the fixed Al's force is reported: the parent ignores constraints
    _, _, cold_scf = fresh_gpaw(system, path(system, 3)[1])
    assert 0 < results[1].scf_cycles < cold_scf  # the warm call started from the previous wavefunctions
    assert results[0].scf_cycles == cold_scf  # the first warm call is itself a cold start
    assert all(r.wall_s > 0 for r in results)
    again = session.calculate(path(system, 3)[2])
    assert again.scf_cycles == 0 and again.energy == results[2].energy  # same positions: nothing recomputed
    session.close()
    log = (tmp_path / "gpaw.txt").read_text()
    assert log.count("Converged in") == 3 and log.count("Input parameters:") == 1  # one calculator, three SCFs


@needs_gpaw
def test_cold_session_starts_every_call_from_scratch(system, tmp_path):
    cold = make_parent("gpaw", workdir=tmp_path, warm=False, **OPTIONS)
    cold.start(system)
    first, second = (cold.calculate(positions) for positions in path(system, 2))
    _, _, fresh_scf = fresh_gpaw(system, path(system, 2)[1])
    assert second.scf_cycles == fresh_scf and first.scf_cycles > 0
    cold.close()
    log = (tmp_path / "gpaw.txt").read_text()
    assert log.count("Converged in") == 2 and log.count("Input parameters:") == 2  # two calculators, one log


@needs_gpaw
def test_composition_change_and_failed_scf_are_parent_errors(system, tmp_path):
    session = make_parent("gpaw", workdir=tmp_path, **OPTIONS)
    session.start(system)
    with pytest.raises(ParentError, match="change of composition is not allowed"):
        session.calculate(system.positions[:-1])
    session.close()
    starved = make_parent("gpaw", workdir=tmp_path, parameters={"maxiter": 2}, **OPTIONS)
    starved.start(system)
    with pytest.raises(ParentError, match="gpaw parent for h-al100: call 1 failed"):
        starved.calculate(system.positions)
    starved.close()


def test_bad_options_are_refused_before_any_gpaw_import():
    with pytest.raises(ParentError, match="mode must be one of pw, lcao, fd"):
        make_parent("gpaw", mode="planewave")
    with pytest.raises(ParentError, match="smearing or occupations, not both"):
        make_parent("gpaw", smearing=0.1, occupations={"name": "fermi-dirac", "width": 0.1})
    with pytest.raises(ParentError, match="set kpts, xc as session options"):
        make_parent("gpaw", parameters={"xc": "LDA", "kpts": [1, 1, 1], "spinpol": True})


def test_missing_gpaw_is_a_clear_parent_error(system, monkeypatch):
    monkeypatch.setitem(sys.modules, "gpaw", None)  # import gpaw now raises ImportError
    session = make_parent("gpaw")
    assert isinstance(session, parent_class("gpaw"))
    with pytest.raises(ParentError, match=r"gpaw is not importable .*finetuna-parsl\[gpaw\]"):
        session.start(system)


def test_gpaw_keywords_follow_the_options():
    session = make_parent("gpaw", mode="lcao", basis="dzp", h=0.18, xc="RPBE", kpts=[3, 3, 1],
                          convergence={"energy": 1e-4}, parameters={"spinpol": True})
    assert session.gpaw_keywords() == {
        "mode": "lcao", "xc": "RPBE", "kpts": (3, 3, 1), "occupations": {"name": "fermi-dirac", "width": 0.1},
        "convergence": {"energy": 1e-4}, "h": 0.18, "basis": "dzp", "spinpol": True,
    }
    assert make_parent("gpaw", ecut=300, occupations={"name": "marzari-vanderbilt", "width": 0.2}).gpaw_keywords() == {
        "mode": {"name": "pw", "ecut": 300.0}, "xc": "PBE", "occupations": {"name": "marzari-vanderbilt", "width": 0.2},
    }


def test_gpaw_bench_config_loads_and_builds_sessions(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config names its systems file relative to the repository root
    config = load_config(REPO / "configs" / "gpaw-bench.yaml")
    assert config.parent.kind == "gpaw" and config.parent.options["warm"] is True
    session = make_parent("gpaw", workdir=tmp_path, **config.parent.options)  # every option is one the session knows
    assert session.gpaw_keywords()["mode"] == {"name": "pw", "ecut": 350.0}
    systems, skipped = load_systems(config.systems.source, config.systems.count)
    assert not skipped and len(systems) == 4
    assert all(s.n_atoms <= 10 and s.fixed.sum() == 4 for s in systems)  # small slabs, bottom layer fixed


CAMPAIGN = """
systems: {{source: "{systems}"}}
parent: {{kind: gpaw, options: {{mode: pw, ecut: 200, kpts: [2, 2, 1], smearing: 0.1}}}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3, fmax: 0.05, max_parent_calls: 4}}
campaign: {{output: "{output}", max_concurrent: 1}}
"""


@needs_gpaw
def test_gpaw_session_in_a_parsl_campaign_stays_warm(system, tmp_path, toy_on_workers):
    import h5py
    from ase.io import write

    from finetuna_parsl.campaign import run_campaign
    from finetuna_parsl.config import parse_config

    write(tmp_path / "h-al100.extxyz", system.to_atoms())
    config = parse_config(CAMPAIGN.format(systems=tmp_path / "h-al100.extxyz", output=tmp_path / "g.h5"))
    systems, _ = load_systems(config.systems.source)
    path, result = run_campaign(config, systems)
    with h5py.File(path, "r") as f:
        (group,) = f["systems"].values()
        parent = group["steps/kind"][()] == 1
        scf = group["steps/scf_cycles"][()][parent]
    assert len(scf) >= 2 and (scf > 0).all()  # SCF counts crossed the bridge into the store
    (log,) = (tmp_path / "g-parent").rglob("gpaw.txt")
    text = log.read_text()
    assert text.count("Converged in") == len(scf)  # every parent call ran in this session's one log
    assert text.count("Input parameters:") == 1  # by one GPAW calculator, alive in the worker throughout
    assert result.rows[0]["status"] != "failed"
