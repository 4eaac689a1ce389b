"""Frames labelled outside EMT (scripts/standin_label.py's chunk format) reach pretraining intact: read by
pretrain.read_split_frames, and unchanged through scripts/standin_frames.py's pack and unpack (the way they
come back from a GPU machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.io import write

from finetuna_parsl.surrogate.pretrain import read_split_frames

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "standin_frames.py"


def _frames(name: str, count: int, seed: int):
    rng = np.random.default_rng(seed)
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.set_constraint(FixAtoms(indices=range(4)))
    frames = []
    for _ in range(count):
        atoms = slab.copy()
        atoms.positions[4:] += rng.normal(0, 0.05, (len(atoms) - 4, 3))
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        atoms.info["system"] = name
        atoms.arrays["free"] = (np.arange(len(atoms)) >= 4).astype(np.int8)
        frames.append(atoms)
    return frames


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "frames").mkdir()
    for split, chunks in (("train", 2), ("valid_in", 1), ("valid_out", 1)):
        for k in range(chunks):
            write(tmp_path / "frames" / f"{split}-{k:04d}.extxyz", _frames(f"{split}-{k}", 3, k), format="extxyz")
    (tmp_path / "frames" / "train-0002.extxyz.tmp.extxyz").write_text("half written")  # a chunk being written
    return tmp_path


def test_read_split_frames_takes_the_split_from_the_chunk_name(workdir):
    data = read_split_frames(workdir)
    assert (len(data.train), len(data.valid_in), len(data.valid_out)) == (6, 3, 3)
    frame = data.valid_out[0]
    assert frame.info["system"] == "valid_out-0"
    assert sorted(frame.constraints[0].get_indices()) == [0, 1, 2, 3]  # free mask back as FixAtoms
    (workdir / "frames" / "other-0000.extxyz").write_text("")
    with pytest.raises(ValueError, match="not a chunk of"):
        read_split_frames(workdir)


def test_read_split_frames_without_chunks_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no frame chunks"):
        read_split_frames(tmp_path)


def test_pack_and_unpack_give_back_the_same_frames(workdir, tmp_path):
    packed, back = tmp_path / "packed", tmp_path / "back"
    for args in (["pack", str(workdir), str(packed), "--max-mb", "0.002"], ["unpack", str(packed), str(back)]):
        subprocess.run([sys.executable, str(SCRIPT), *args], check=True, capture_output=True)
    assert len(list(packed.glob("frames-train.npz.*"))) > 1  # split into parts
    before, after = read_split_frames(workdir), read_split_frames(back)
    for split in ("train", "valid_in", "valid_out"):
        old, new = getattr(before, split), getattr(after, split)
        assert len(old) == len(new)
        for a, b in zip(old, new):
            assert a.info["system"] == b.info["system"]
            assert (a.numbers == b.numbers).all() and (a.arrays["free"] == b.arrays["free"]).all()
            assert np.allclose(a.positions, b.positions, atol=1e-5)
            assert np.allclose(a.get_forces(apply_constraint=False), b.get_forces(apply_constraint=False), atol=1e-6)
            assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-9)
            assert np.allclose(a.cell.array, b.cell.array)
