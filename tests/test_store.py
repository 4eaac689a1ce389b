"""The HDF5 store: layout readable with plain h5py, thinning, resume state, clear open errors."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

from finetuna_parsl.records import SOURCE_PARENT, SOURCE_SURROGATE, Evaluation, LearnerSettings, SystemResult
from finetuna_parsl.store import CampaignStore, StoreError, load_parent_calls, load_summary, read_runs
from finetuna_parsl.systems import demo_systems

SYSTEM = demo_systems(1)[0]


def rows(n_surrogate: int, n: int = SYSTEM.n_atoms, start: float = 0.0, reason: str = "k-steps") -> list[Evaluation]:
    out = [Evaluation(np.full((n, 3), start + i), start + i, np.full((n, 3), 0.1 * i), SOURCE_SURROGATE, 0.01 * i)
           for i in range(n_surrogate)]
    out.append(Evaluation(np.full((n, 3), start + 99.0), -1.5, np.zeros((n, 3)), SOURCE_PARENT, 0.0, 7, 0.25, reason,
                          fine_tune_s=1.25))
    return out


def test_layout_is_plain_h5py(tmp_path):
    path = tmp_path / "c.h5"
    with CampaignStore(path, run_config="learner: {recipe: paper, k: 3}\n") as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(3, reason="initial"))
        store.append_steps(SYSTEM.system_id, rows(2, start=10))
        store.save_head(SYSTEM.system_id, b"\x00head-bytes\xff", head_points=1)
        store.set_status(SYSTEM.system_id, "done", outcome="converged")
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 1
        assert "ase==" in f.attrs["package_versions"] and f.attrs["run_config"] == "learner: {recipe: paper, k: 3}\n"
        g = f["systems"][SYSTEM.system_id]
        n = SYSTEM.n_atoms
        assert g["steps/positions"].shape == (7, n, 3) and g["steps/forces"].shape == (7, n, 3)
        assert g["steps/positions"].chunks is not None and g["steps/positions"].maxshape[0] is None
        np.testing.assert_array_equal(g["steps/kind"][()], [0, 0, 0, 1, 0, 0, 1])
        np.testing.assert_array_equal(g["steps/scf_cycles"][()], [0, 0, 0, 7, 0, 0, 7])
        # why each parent call was made, beside kind (empty for surrogate rows)
        assert list(g["steps/reason"].asstr()[()]) == ["", "", "", "initial", "", "", "k-steps"]
        # the learner's fine-tuning time before each parent call (0 on surrogate rows)
        np.testing.assert_array_equal(g["steps/fine_tune_s"][()], [0, 0, 0, 1.25, 0, 0, 1.25])
        np.testing.assert_array_equal(g["numbers"][()], SYSTEM.numbers)
        np.testing.assert_array_equal(g["fixed"][()], SYSTEM.fixed)
        assert g.attrs["parent_calls"] == 2 and g.attrs["surrogate_steps"] == 5
        assert g.attrs["status"] == "done" and g.attrs["outcome"] == "converged"
        assert g.attrs["final_energy"] == -1.5 and g.attrs["final_fmax"] == 0.0
        assert g["head/weights"][()].tobytes() == b"\x00head-bytes\xff"


def test_a_systems_summary_row_is_one_frozen_record_with_the_dict_view_of_before(tmp_path):
    path = tmp_path / "c.h5"
    with CampaignStore(path) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(3, reason="initial"))
        store.append_steps(SYSTEM.system_id, rows(2, start=10))
        store.set_status(SYSTEM.system_id, "done", outcome="converged")
        store.set_anomalies(SYSTEM.system_id, ["desorbed"])
    (row,) = load_summary(path)
    assert isinstance(row, SystemResult) and row.converged and row.ended
    assert (row.parent_calls, row.surrogate_steps, row.scf_cycles) == (2, 5, 14)
    assert row.parent_calls_by_reason == {"initial": 1, "k-steps": 1} and row.anomalies == ("desorbed",)
    with pytest.raises(AttributeError):
        row.status = "failed"  # frozen
    plain = row.as_dict()  # the 17 keys the summary rows have always had, in their order; lists, not tuples
    assert list(plain) == ["system_id", "status", "outcome", "formula", "n_atoms", "parent_calls",
                           "parent_calls_by_reason", "surrogate_steps", "final_energy", "final_fmax", "error",
                           "warnings", "scf_cycles", "parent_wall_s", "fine_tune_s", "anomalies", "anomalies_unknown"]
    assert plain["anomalies"] == ["desorbed"] and plain["warnings"] == [] and dict(row) == plain
    assert row["parent_calls"] == 2 and row.get("anomalies") == ["desorbed"] and row.get("variant") is None
    assert SystemResult.of(plain) == row and SystemResult.of(row) is row
    partial = SystemResult.of({"system_id": "a", "parent_calls": 3, "variant": "x"})  # a hand-made row
    assert partial.parent_calls == 3 and partial.anomalies is None and partial.outcome == ""


def test_keep_every_nth_surrogate_step_but_every_parent_point(tmp_path):
    with CampaignStore(tmp_path / "c.h5", keep_surrogate_every=2) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(5))
        kinds = store.file["systems"][SYSTEM.system_id]["steps/kind"][()]
        energies = store.file["systems"][SYSTEM.system_id]["steps/energy"][()]
        assert list(kinds) == [0, 0, 1] and list(energies) == [1.0, 3.0, -1.5]
        assert store.file["systems"][SYSTEM.system_id].attrs["surrogate_steps"] == 5  # counted, not all kept
    with CampaignStore(tmp_path / "p.h5", keep_surrogate_every=0) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(5))
        assert list(store.file["systems"][SYSTEM.system_id]["steps/kind"][()]) == [1]


def test_thinning_carries_on_across_a_resume_as_if_never_stopped(tmp_path):
    """The every-Nth counter is the stored surrogate_steps, not a count that restarts when the store reopens."""
    with CampaignStore(tmp_path / "c.h5", keep_surrogate_every=2) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(3))  # surrogate steps 1, 2, 3: keeps 2
    with CampaignStore(tmp_path / "c.h5", keep_surrogate_every=2) as store:  # resumed
        store.append_steps(SYSTEM.system_id, rows(3, start=10))  # steps 4, 5, 6: keeps 4 and 6
    with CampaignStore(tmp_path / "once.h5", keep_surrogate_every=2) as store:  # the same rows, never stopped
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(3))
        store.append_steps(SYSTEM.system_id, rows(3, start=10))
    energies = []
    for name in ("c.h5", "once.h5"):
        with h5py.File(tmp_path / name, "r") as f:
            energies.append(list(f["systems"][SYSTEM.system_id]["steps/energy"][()]))
    assert energies[0] == energies[1] == [1.0, -1.5, 10.0, 12.0, -1.5]


def test_every_run_of_a_store_appends_its_config_and_versions(tmp_path):
    path = tmp_path / "c.h5"
    with CampaignStore(path, run_config="learner: {recipe: paper, k: 3}\n"):
        pass
    with CampaignStore(path, run_config="learner: {recipe: paper, k: 20}\n", method="online"):  # resumed with a changed config
        pass
    with h5py.File(path, "r") as f:
        runs = read_runs(f)
        assert [r["run_config"] for r in runs] == ["learner: {recipe: paper, k: 3}\n", "learner: {recipe: paper, k: 20}\n"]
        assert all("ase==" in r["package_versions"] and r["started"] and r["method"] == "online" for r in runs)
        assert f.attrs["run_config"] == "learner: {recipe: paper, k: 20}\n"  # the root attribute is the latest run's
        assert runs[0]["started"] == f.attrs["created"]


def test_a_store_from_before_runs_were_kept_keeps_its_first_config_when_resumed(tmp_path):
    path = tmp_path / "old.h5"
    with CampaignStore(path, run_config="learner: {recipe: paper, k: 3}\n"):
        pass
    with h5py.File(path, "a") as f:  # as written before /runs existed: the first run's config in the root only
        del f["runs"]
        f.attrs["run_config"] = "learner: {recipe: paper, k: 3}\n"
    with CampaignStore(path, run_config="learner: {recipe: paper, k: 20}\n"):
        pass
    with CampaignStore(path):  # opened without a config (a reader, a repair): not a run
        pass
    with h5py.File(path, "r") as f:
        assert [r["run_config"] for r in read_runs(f)] == ["learner: {recipe: paper, k: 3}\n", "learner: {recipe: paper, k: 20}\n"]
        assert f.attrs["run_config"] == "learner: {recipe: paper, k: 20}\n"


def test_load_state_gives_parent_points_and_head_for_resume(tmp_path):
    with CampaignStore(tmp_path / "c.h5") as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(3))
        store.save_head(SYSTEM.system_id, b"h1", head_points=0)
        store.append_steps(SYSTEM.system_id, rows(2, start=5))
        store.save_head(SYSTEM.system_id, b"h2", head_points=1)
    with CampaignStore(tmp_path / "c.h5") as store:  # reopened, as after a crash
        state = store.load_state(SYSTEM.system_id, LearnerSettings())
    assert state.parent_calls == 2 and state.surrogate_steps == 5
    assert state.head == b"h2" and state.head_points == 1
    assert [p.reason for p in state.parent_points] == ["k-steps", "k-steps"]
    assert [p.fine_tune_s for p in state.parent_points] == [1.25, 1.25]
    np.testing.assert_array_equal(state.parent_points[0].positions, np.full((SYSTEM.n_atoms, 3), 99.0))
    np.testing.assert_array_equal(state.system.positions, SYSTEM.positions)


def test_reasons_resume_and_read_back_per_parent_call(tmp_path):
    path = tmp_path / "c.h5"
    with CampaignStore(path) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(0, reason="initial"))
    with CampaignStore(path) as store:  # resumed: the next rows carry on beside the first
        store.append_steps(SYSTEM.system_id, rows(2, start=5, reason="relaxed"))
    calls = load_parent_calls(path)
    reasons, fmax = calls[SYSTEM.system_id]
    assert reasons == ["initial", "relaxed"]
    np.testing.assert_allclose(fmax, [0.0, 0.0])


def test_a_store_written_before_reasons_gets_them_on_resume(tmp_path):
    path = tmp_path / "old.h5"
    with CampaignStore(path) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(1))
    with h5py.File(path, "a") as f:  # as a store written before parent-call reasons were kept
        del f["systems"][SYSTEM.system_id]["steps/reason"]
    assert load_parent_calls(path)[SYSTEM.system_id][0] == [""]
    with CampaignStore(path) as store:
        store.append_steps(SYSTEM.system_id, rows(1, start=3, reason="backoff"))
    with h5py.File(path, "r") as f:
        assert list(f["systems"][SYSTEM.system_id]["steps/reason"].asstr()[()]) == ["", "", "", "backoff"]
    assert load_parent_calls(path)[SYSTEM.system_id][0] == ["", "backoff"]


def test_open_failure_names_the_file_and_the_process_holding_it(tmp_path):
    path = tmp_path / "locked.h5"
    CampaignStore(path).close()
    holder = subprocess.Popen(  # another process holds the store open for writing, as a live driver would
        [sys.executable, "-c", f"import h5py, sys, time; f = h5py.File({str(path)!r}, 'a'); print('open', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError) as info:
            CampaignStore(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert str(path) in str(info.value) and f"pid {holder.pid}" in str(info.value)
    assert "HDF5_USE_FILE_LOCKING" not in str(info.value)  # the filesystem is not the cause here


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_text("not hdf5")
    with pytest.raises(StoreError, match="junk.h5"):
        CampaignStore(path)


@pytest.mark.parametrize("fmt", ["extxyz", "traj", "db"])
def test_export_parent_frames_to_ase_formats(tmp_path, fmt):
    from ase.io import read

    from finetuna_parsl.store import export

    path = tmp_path / "c.h5"
    with CampaignStore(path) as store:
        store.add_system(SYSTEM)
        store.append_steps(SYSTEM.system_id, rows(3))
        store.append_steps(SYSTEM.system_id, rows(1, start=4))
    out = tmp_path / f"frames.{fmt}"
    assert export(path, out, fmt, parent_only=True) == 2
    frames = read(str(out), index=":")
    assert len(frames) == 2
    assert frames[0].get_potential_energy() == pytest.approx(-1.5)
    np.testing.assert_allclose(frames[0].get_forces(apply_constraint=False), 0.0)
    np.testing.assert_array_equal(frames[0].numbers, SYSTEM.numbers)
    out_all = tmp_path / f"all.{fmt}"
    assert export(path, out_all, fmt, parent_only=False) == 6
    with pytest.raises(StoreError, match="exists"):
        export(path, out_all, fmt)


def two_system_store(path):
    """Two systems: three parent calls (energies -1, -2, -3 eV, forces 0.3, 0.2, 0.1 eV/A) and one, with a
    surrogate row before each parent call."""
    second = demo_systems(2)[1]
    with CampaignStore(path, run_config="parent: {kind: emt}\n") as store:
        for system, calls in ((SYSTEM, 3), (second, 1)):
            store.add_system(system)
            n = system.n_atoms
            for k in range(calls):
                store.append_steps(system.system_id, [
                    Evaluation(np.full((n, 3), 0.5 * k), 9.0, np.full((n, 3), 9.0), SOURCE_SURROGATE),
                    Evaluation(system.positions + 0.01 * k, -1.0 - k, np.full((n, 3), 0.3 - 0.1 * k), SOURCE_PARENT,
                               reason="initial" if k == 0 else "k-steps"),
                ])
            store.set_status(system.system_id, "done", outcome="converged")
    return second


def test_export_final_gives_the_last_parent_confirmed_structure_of_each_system(tmp_path):
    from ase.io import read

    from finetuna_parsl.store import export

    path = tmp_path / "c.h5"
    second = two_system_store(path)
    assert export(path, tmp_path / "final.extxyz", "extxyz", final=True) == 2
    frames = {a.info["system_id"]: a for a in read(str(tmp_path / "final.extxyz"), index=":")}
    assert set(frames) == {SYSTEM.system_id, second.system_id}
    last = frames[SYSTEM.system_id]
    assert last.get_potential_energy() == pytest.approx(-3.0)
    np.testing.assert_allclose(last.get_forces(apply_constraint=False), 0.1)
    np.testing.assert_allclose(last.positions, SYSTEM.positions + 0.02, atol=1e-6)
    assert last.info["parent_call"] == 2 and last.info["step"] == 5 and last.info["reason"] == "k-steps"
    assert last.info["outcome"] == "converged" and last.info["source"] == "c.h5" and last.info["parent"] == "emt"
    assert frames[second.system_id].get_potential_energy() == pytest.approx(-1.0)
    assert frames[second.system_id].info["parent_call"] == 0


def test_aselmdb_export_is_read_by_ase_and_by_fairchems_dataset(tmp_path):
    from ase.db import connect
    from fairchem.core.datasets import AseDBDataset

    from finetuna_parsl.store import export

    path = tmp_path / "c.h5"
    second = two_system_store(path)
    out = tmp_path / "train.aselmdb"
    assert export(path, out, "aselmdb") == 4  # every parent call, no surrogate frame
    rows = list(connect(str(out)).select())
    assert [r.key_value_pairs["parent_call"] for r in rows] == [0, 1, 2, 0]
    assert {r.key_value_pairs["system_id"] for r in rows} == {SYSTEM.system_id, second.system_id}

    dataset = AseDBDataset({"src": str(out)})
    assert len(dataset) == 4
    energies = sorted(float(dataset[i].energy) for i in range(4))
    assert energies == pytest.approx([-3.0, -2.0, -1.0, -1.0])
    for i in range(4):
        data, atoms = dataset[i], dataset.get_atoms(i)
        k = atoms.info["parent_call"]
        assert data.sid == [f"{atoms.info['system_id']}-frame-{k}"]  # fairchem's sid/fid convention
        assert float(data.energy) == pytest.approx(-1.0 - k)
        np.testing.assert_allclose(data.forces.numpy(), 0.3 - 0.1 * k, atol=1e-6)
        assert atoms.info["source"] == "c.h5" and atoms.info["reason"] == ("initial" if k == 0 else "k-steps")
        fixed = SYSTEM.fixed if atoms.info["system_id"] == SYSTEM.system_id else second.fixed
        np.testing.assert_array_equal(data.fixed.numpy(), fixed.astype(int))

    final = tmp_path / "final.aselmdb"
    assert export(path, final, "aselmdb", final=True) == 2
    assert sorted(float(d.energy) for d in AseDBDataset({"src": str(final)})) == pytest.approx([-3.0, -1.0])
    with pytest.raises(StoreError, match="must contain 'aselmdb'"):
        export(path, tmp_path / "train.lmdb", "aselmdb")


def test_export_command_final_aselmdb_names_its_file(tmp_path):
    from click.testing import CliRunner

    from finetuna_parsl.cli import main

    path = tmp_path / "c.h5"
    two_system_store(path)
    result = CliRunner().invoke(main, ["export", str(path), "--final", "--format", "aselmdb"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote 2 final parent-confirmed frames to {tmp_path / 'c.final.aselmdb'}"
    assert (tmp_path / "c.final.aselmdb").exists()
