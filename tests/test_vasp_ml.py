"""VASP's machine-learned force field (ML_LMLFF) is refused up front, in one line, by every way a run starts.

VASP 6.4 writes its force-field steps in another OUTCAR layout (`free  energy ML TOTEN`, `TOTAL-FORCE (eV/Angst)
(ML)`, vasp-interactive #47) and its vasprun.xml outside the <calculation> hierarchy: read as nothing, every call
failed with the generic 'neither vasprun.xml nor OUTCAR holds its energy', after paying for the launch.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import TESTS_DIR
from finetuna_parsl.parents import ParentSetupError, make_parent
from finetuna_parsl.parents.vasp import VaspInteractiveSession


@pytest.mark.parametrize("value", [True, ".TRUE.", "T", "true"])
def test_ml_lmlff_is_refused_when_the_options_are_checked(value):
    problem = VaspInteractiveSession.check_options({"incar": {"ml_lmlff": value, "ENCUT": 400}})
    assert problem is not None and "ML_LMLFF" in problem and "force field" in problem
    with pytest.raises(ParentSetupError, match="ML_LMLFF"):
        make_parent("vasp", command="vasp_std", incar={"ML_LMLFF": value})


@pytest.mark.parametrize("value", [False, ".FALSE.", "F"])
def test_ml_lmlff_off_is_fine(value):
    assert VaspInteractiveSession.check_options({"incar": {"ML_LMLFF": value}}) is None


def test_the_cli_refuses_it_before_any_work(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""
systems: {{source: demo, count: 1}}
parent: {{kind: vasp, options: {{command: vasp_std, incar: {{ML_LMLFF: true, ML_MODE: run}}}}}}
campaign: {{output: "{tmp_path / 's.h5'}"}}
""")
    env = {**os.environ, "PYTHONPATH": f"{TESTS_DIR}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "finetuna_parsl.cli", "run", str(cfg)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "ML_LMLFF" in line and "parent.options" in line, line
    assert not (tmp_path / "s.h5").exists()
