"""The shipped fairchem surrogate: offline loading, clear errors, head-only fine-tuning, ensembles."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from conftest import REPO
from finetuna_parsl.surrogate import SHIPPED, SurrogateError, load_surrogate
from finetuna_parsl.surrogate.head import HeadState
from finetuna_parsl.surrogate.pretrain import labelled
from finetuna_parsl.surrogate.surrogate import free_mask
from finetuna_parsl.systems import demo_systems, load_systems, ood_systems


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    return load_surrogate("shipped", device="cpu")  # the paper's defaults: lr 3e-4, 400 epochs


def _force_mae(surrogate, head, atoms) -> float:
    reference = labelled(atoms).get_forces(apply_constraint=False)
    _, forces, _ = surrogate.predict(atoms, head)
    free = free_mask(atoms)
    return float(np.abs(forces - reference)[free].mean())


def test_shipped_checkpoint_is_small_and_loads_offline(tmp_path):
    assert SHIPPED.is_file() and SHIPPED.stat().st_size <= 20e6
    script = textwrap.dedent("""
        import socket, numpy as np
        def no_network(*args, **kwargs):
            raise OSError("network disabled in this test")
        socket.socket.connect = no_network
        socket.create_connection = no_network
        from ase.build import fcc111, add_adsorbate
        from finetuna_parsl.surrogate import load_surrogate
        slab = fcc111("Cu", (3, 3, 3), vacuum=7.0)
        add_adsorbate(slab, "O", 1.5, "fcc")
        s = load_surrogate("shipped", device="cpu")
        energy, forces, _ = s.predict(slab, s.initial_head())
        assert np.isfinite(energy) and forces.shape == (len(slab), 3) and np.isfinite(forces).all()
        print("ok", energy)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_pretrained_forces_are_close_to_emt_in_domain(shipped):
    from finetuna_parsl.surrogate.pretrain import _near_equilibrium, in_domain_systems

    # New placements (seed 5, not the pretraining seed) of in-domain systems, within the trained force range
    # (pretraining drops frames whose largest force exceeds 8 eV/A: adsorbates squeezed into the surface).
    frames = [labelled(atoms) for _, atoms in in_domain_systems(seed=5)[:12]]
    maes = [_force_mae(shipped, shipped.initial_head(), f) for f in frames if _near_equilibrium(f)]
    assert len(maes) >= 6 and np.mean(maes) < 0.25, maes  # a model that learnt nothing sits near 1 eV/A


@pytest.mark.parametrize("content, expected", [
    (b"this is not a torch file", "not a readable torch checkpoint"),
    (None, "not a fairchem inference checkpoint"),
])
def test_bad_checkpoint_files_give_one_clear_line(tmp_path, content, expected):
    path = tmp_path / "model.pt"
    if content is None:
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(SurrogateError) as err:
        load_surrogate(str(path), device="cpu")
    message = str(err.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_truncated_shipped_checkpoint_and_missing_file_and_hub_names(tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(SHIPPED.read_bytes()[: SHIPPED.stat().st_size // 2])
    with pytest.raises(SurrogateError, match="cut.pt: not a readable torch checkpoint"):
        load_surrogate(str(cut), device="cpu")
    with pytest.raises(SurrogateError, match="no such file"):
        load_surrogate(str(tmp_path / "absent.pt"), device="cpu")
    with pytest.raises(SurrogateError, match="not downloaded at run time"):
        load_surrogate("uma-s-1p1", device="cpu")


def test_fine_tuning_changes_only_the_head_and_fits_the_parent_point(shipped):
    atoms = ood_systems(4, seed=3)[0].to_atoms()
    point = labelled(atoms)
    backbone = {k: v.clone() for k, v in shipped.prior.model.state_dict().items()}
    head0 = shipped.initial_head()
    before = _force_mae(shipped, head0, atoms)
    head1, info = shipped.fine_tune(head0, [point])
    after = _force_mae(shipped, head1, atoms)
    for key, value in shipped.prior.model.state_dict().items():
        assert torch.equal(value, backbone[key]), f"backbone parameter {key} changed"
    assert info["final_loss"] < info["initial_loss"]
    assert after < 0.8 * before, (before, after)
    state = HeadState.from_bytes(head1)
    assert state.trained_points == 1 and any(np.abs(v).sum() > 0 for v in state.members[0].values())
    energy, _, _ = shipped.predict(atoms, head1)
    assert energy == pytest.approx(point.get_potential_energy(), abs=1e-4)  # energy referenced to the parent point


def test_fine_tuning_again_on_the_same_parent_points_runs_the_prior_only_on_the_new_one(shipped):
    """With train_on=all every learn step fine-tunes on every parent point so far; the backbone is frozen, so
    each point's prior forward pass is the same every time. Before the training points had their own cache, a
    long relaxation's points fell out of the 64-entry cache of surrogate steps and every learn step re-ran the
    prior on all of them (about 3 s of 5 for 150 points of a 45-atom slab on one core)."""
    system = load_systems("oc20-ood30", count=1)[0][0]
    rng = np.random.default_rng(0)
    points = []
    for _ in range(80):
        atoms = system.to_atoms(system.positions + rng.normal(0.0, 0.02, system.positions.shape))
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=rng.normal(0.0, 0.3, (len(atoms), 3)))
        points.append(atoms)
    surrogate = load_surrogate("shipped", device="cpu", epochs=2)
    calls = []
    forward = surrogate.prior.predict
    surrogate.prior.predict = lambda atoms: calls.append(1) or forward(atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the elements the shipped prior never saw
        head, _ = surrogate.fine_tune(surrogate.initial_head(), points[:-1])
        for _ in range(100):  # a surrogate segment between the learn steps
            surrogate.predict(system.to_atoms(system.positions + rng.normal(0.0, 0.05, system.positions.shape)), head)
        calls.clear()
        again, _ = surrogate.fine_tune(head, points)
    assert len(calls) == 1
    fresh = load_surrogate("shipped", device="cpu", epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        head_fresh, _ = fresh.fine_tune(fresh.initial_head(), points[:-1])
        again_fresh, _ = fresh.fine_tune(head_fresh, points)
    assert again == again_fresh  # what a worker with nothing cached trains, bit for bit


def test_ensemble_mean_starts_at_the_prior_and_spread_grows_away_from_data():
    torch.set_num_threads(1)
    single = load_surrogate("shipped", device="cpu", ensemble_size=1, epochs=100)
    ensemble = load_surrogate("shipped", device="cpu", ensemble_size=4)  # the paper's 400 epochs
    atoms = demo_systems(3)[2].to_atoms()
    e1, f1, u1 = single.predict(atoms, single.initial_head())
    e4, f4, u4 = ensemble.predict(atoms, ensemble.initial_head())
    assert u1 == 0.0 and u4 > 0.0
    np.testing.assert_allclose(f4, f1, atol=1e-5)
    head = ensemble.fine_tune(ensemble.initial_head(), [labelled(atoms)])[0]
    _, _, at_point = ensemble.predict(atoms, head)
    moved = atoms.copy()
    moved.positions[free_mask(atoms)] += np.random.default_rng(0).normal(0, 0.3, (free_mask(atoms).sum(), 3))
    _, _, away = ensemble.predict(moved, head)
    assert away > at_point


def test_an_oc20_system_with_unseen_elements_runs_and_names_them(shipped):
    systems, skipped = load_systems("oc20-ood30")
    assert systems and not skipped
    spec = next(s for s in systems if any(z in s.numbers for z in (40, 34, 22, 31)))  # Zr Se Ti Ga: never pretrained
    atoms = spec.to_atoms()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        energy, forces, _ = shipped.predict(atoms, shipped.initial_head())
    assert np.isfinite(energy) and np.isfinite(forces).all() and forces.shape == (len(atoms), 3)
    text = " ".join(str(w.message) for w in caught)
    assert "pretraining never saw" in text and any(e in text for e in ("Zr", "Se", "Ti", "Ga"))


def test_the_learner_runs_a_segment_on_the_shipped_surrogate(shipped):
    from finetuna_parsl.learner.online import propose, record_parent
    from finetuna_parsl.learner.state import LearnerState
    from finetuna_parsl.records import Evaluation, LearnerSettings

    spec = demo_systems(1)[0]
    state = LearnerState(spec, LearnerSettings(query="k-steps", k=3))
    first = propose(state, shipped)
    point = labelled(spec.to_atoms(first.positions))
    state = record_parent(state, first, Evaluation(first.positions, point.get_potential_energy(),
                                                   point.get_forces(apply_constraint=False)))
    second = propose(state, shipped)
    assert 1 <= len(second.segment) <= 3 and second.head != first.head


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_and_cpu_agree(shipped):
    gpu = load_surrogate("shipped", device="cuda", epochs=100)
    atoms = demo_systems(2)[1].to_atoms()
    point = labelled(atoms)
    head_cpu, head_gpu = shipped.fine_tune(shipped.initial_head(), [point])[0], gpu.fine_tune(gpu.initial_head(), [point])[0]
    _, f_cpu, _ = shipped.predict(atoms, head_cpu)
    _, f_gpu, _ = gpu.predict(atoms, head_gpu)
    np.testing.assert_allclose(f_gpu, f_cpu, atol=2e-3)


def test_fine_tuning_on_several_points_in_one_batch_is_the_mean_of_their_losses():
    """The batched loss equals the per-point loop it replaced: the mean over points of each point's mean squared
    free-atom force error, the same gradient step for step (so all-points training keeps its meaning)."""
    import copy

    from finetuna_parsl.surrogate.head import ElementForceResidual, Features, fine_tune, residual_forces

    gen = torch.Generator().manual_seed(0)
    points = []
    for n in (5, 8, 3):
        feats = Features(torch.randn(n, 9, 4, generator=gen), 0.0, torch.randn(n, 3, generator=gen),
                         torch.randint(1, 30, (n,), generator=gen))
        free = torch.rand(n, generator=gen) > 0.3
        free[0] = True
        points.append((feats, torch.randn(n, 3, generator=gen), free))
    template = ElementForceResidual(4, 31)
    torch.nn.init.normal_(template.shared, std=0.1, generator=gen)
    heads = [copy.deepcopy(template), copy.deepcopy(template)]
    looped = [copy.deepcopy(h) for h in heads]

    info = fine_tune(heads, points, epochs=20, lr=1e-2, factor=0.9, patience=3)

    params = [p for h in looped for p in h.parameters()]  # the previous, one-point-at-a-time loss
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    for _ in range(20):
        opt.zero_grad()
        # per point: mean over (members, free atoms) of the squared force error / 3; then the mean over points
        loss = sum(((f.forces + residual_forces(looped, f) - t) ** 2).sum(-1)[:, free].mean() / 3
                   for f, t, free in points) / len(points)
        loss.backward()
        opt.step()
    assert info["final_loss"] < info["initial_loss"]
    for a, b in zip(heads, looped):
        torch.testing.assert_close(a.shared, b.shared, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a.table, b.table, rtol=1e-4, atol=1e-6)


def test_pretraining_strain_range_is_part_of_the_recipe_and_a_work_folder_holds_one_recipe(tmp_path):
    """Lattice constants span the recipe's strain (the out-of-domain alloys squeeze Al and Au by ~7%,
    benchmarks/prior-errors.md), and frames of one recipe are never mixed with another's on resume."""
    from ase.data import atomic_numbers, reference_states

    from finetuna_parsl.surrogate.pretrain import DataRecipe, generate_frames, in_domain_system

    def strains(strain: float) -> list[float]:
        out = []
        for i in range(200):
            system_id, atoms = in_domain_system(i, seed=0, strain=strain)
            if system_id.startswith("bulk") and len(set(atoms.numbers)) == 1:  # unary bulk: 2x2x2 cubic cells
                a0 = reference_states[atomic_numbers[atoms[0].symbol]]["a"]
                out.append(atoms.cell[0, 0] / 2 / a0 - 1)
        return out

    assert max(abs(s) for s in strains(0.03)) <= 0.03
    wide = strains(0.12)
    assert max(abs(s) for s in wide) <= 0.12 and max(abs(s) for s in wide) > 0.03
    # the script's defaults remake the shipped checkpoint's frames: its card records the recipe it was made with
    assert load_surrogate("shipped", device="cpu").card.recipe == DataRecipe().__dict__

    tiny = DataRecipe(n_systems=1, n_out_of_domain=1, seed=3)
    data = generate_frames(tiny, tmp_path, workers=1, chunk=1, log=lambda _m: None)
    assert data.valid_out and (data.train or data.valid_in)
    with pytest.raises(ValueError, match="another recipe"):
        generate_frames(DataRecipe(n_systems=1, n_out_of_domain=1, seed=3, strain=tiny.strain / 4), tmp_path, workers=1,
                        log=lambda _m: None)


def test_a_model_card_from_another_version_still_loads_and_a_broken_one_is_named(tmp_path):
    """The card only informs: a field this version does not know (a card written by a newer finetuna-parsl) is
    left out; before read_card, it stopped every learn task with ModelCard's TypeError. A card that is not a
    JSON object is a one-line SurrogateError naming the file."""
    import json
    import shutil

    checkpoint = tmp_path / "mine.pt"
    shutil.copy(SHIPPED, checkpoint)
    card = {"elements": ["Pt", "O"], "description": "mine", "metrics": {}, "recipe": {"strain": 0.12},
            "field_from_a_newer_version": 1}
    checkpoint.with_suffix(".json").write_text(json.dumps(card))
    loaded = load_surrogate(str(checkpoint), device="cpu").card
    assert (loaded.elements, loaded.description, loaded.recipe) == (["Pt", "O"], "mine", {"strain": 0.12})

    checkpoint.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(SurrogateError, match=r"mine\.json.*JSON object"):
        load_surrogate(str(checkpoint), device="cpu")
    checkpoint.with_suffix(".json").write_text("{not json")
    with pytest.raises(SurrogateError, match=r"mine\.json.*not JSON"):
        load_surrogate(str(checkpoint), device="cpu")


def test_pretraining_steps_on_graphs_made_once_predict_what_fresh_batches_predict_and_lower_the_loss():
    """train() makes each frame's graph input once and only collates per step (to_batch is CPU work a GPU step
    waits on); a collated batch must give the model exactly the input to_batch gives, and the loop must still learn."""
    import re

    from ase.build import add_adsorbate, fcc111

    from finetuna_parsl.surrogate.model import atomic_data, build_model, collate, small_model_config
    from finetuna_parsl.surrogate.pretrain import Dataset, predict, predict_batch, train

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = []
    for metal in ("Cu", "Pt", "Ni"):
        slab = fcc111(metal, (2, 2, 3), vacuum=6.0)
        add_adsorbate(slab, "O", 1.5, "fcc")
        for _ in range(2):
            frame = slab.copy()
            frame.positions += rng.normal(0, 0.05, frame.positions.shape)
            frames.append(labelled(frame))
    model = build_model(small_model_config()).eval()
    with torch.no_grad():  # seeded: the backbone draws random edge rotations every forward pass
        torch.manual_seed(1)
        e1, f1 = predict(model, frames)
        torch.manual_seed(1)
        e2, f2 = predict_batch(model, collate([atomic_data(f) for f in frames]))
    assert torch.equal(e1, e2) and torch.equal(f1, f2)

    lines = []
    metrics = train(model, Dataset(train=frames, valid_in=frames[:2], valid_out=frames[2:4]), minutes=0.2, batch=3,
                    log=lines.append)
    losses = [float(m.group(1)) for m in (re.search(r"train loss (\S+)", line) for line in lines) if m]
    assert metrics["epochs"] >= 2 and len(losses) == metrics["epochs"]
    assert losses[-1] < losses[0]
    assert np.isfinite(metrics["valid_out_force_mae"])
