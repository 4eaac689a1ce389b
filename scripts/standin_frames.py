#!/usr/bin/env python
"""Pack labelled frames into compact files that fit the device tool's return limits, and unpack them.

Usage: python scripts/standin_frames.py pack WORKDIR OUTDIR [--max-mb 15] [--budget-mb 58]
       python scripts/standin_frames.py unpack OUTDIR WORKDIR

The frames of scripts/standin_label.py (WORKDIR/frames/<split>-<NNNN>.extxyz; about 8 kB of text per frame)
come back from a lent GPU machine at most 8 files of 16 MiB, 64 MiB together. `pack` writes per split one
np.savez_compressed archive (frames-<split>.npz: positions and forces as float32, energies float64, atomic
numbers, cells, pbc, free-atom masks, tags, system names and frames per chunk), split into parts of at most
`--max-mb` MB (frames-<split>.npz.000, .001, ...), valid_out first, then valid_in, then train, and stops
adding parts once `--budget-mb` is spent (what is left out is printed; the GPU run's own model card counted all
frames). `unpack` joins the parts and writes the same chunk files back, which pretrain.read_split_frames reads
(float32: positions to about 1e-6 A, forces to about 1e-7 relative).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

SPLITS = ("valid_out", "valid_in", "train")


def pack_split(paths: list[Path]) -> bytes:
    from ase.io import read

    chunk, natoms, numbers, positions, forces, energies, cells, pbc, free, tags, systems = ([] for _ in range(11))
    for path in paths:
        frames = read(path, index=":")
        chunk.append(len(frames))
        for f in frames:
            natoms.append(len(f))
            numbers.append(f.numbers.astype(np.uint8))
            positions.append(f.positions.astype(np.float32))
            forces.append(f.get_forces(apply_constraint=False).astype(np.float32))
            energies.append(f.get_potential_energy())
            cells.append(f.cell.array)
            pbc.append(f.pbc)
            free.append(f.arrays["free"].astype(np.int8))
            tags.append(f.get_tags().astype(np.int8))
            systems.append(f.info["system"])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, chunk_names=np.array([p.name for p in paths]), chunk_frames=np.array(chunk),
                        natoms=np.array(natoms), numbers=np.concatenate(numbers), positions=np.concatenate(positions),
                        forces=np.concatenate(forces), energies=np.array(energies), cells=np.array(cells),
                        pbc=np.array(pbc), free=np.concatenate(free), tags=np.concatenate(tags),
                        systems=np.array(systems))
    return buffer.getvalue()


def pack(workdir: Path, outdir: Path, max_mb: float = 15.0, budget_mb: float = 58.0) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    spent = 0
    for split in SPLITS:
        paths = sorted(p for p in (workdir / "frames").glob(f"{split}-*.extxyz") if not p.name.endswith(".tmp.extxyz"))
        if not paths:
            continue
        data = pack_split(paths)
        size = int(max_mb * 1e6)
        parts = [data[i:i + size] for i in range(0, len(data), size)]
        kept = 0
        for k, part in enumerate(parts):
            if spent + len(part) > budget_mb * 1e6:
                break
            (outdir / f"frames-{split}.npz.{k:03d}").write_bytes(part)
            spent += len(part)
            kept += 1
        print(f"{split}: {len(paths)} chunks, {len(data) / 1e6:.1f} MB in {len(parts)} parts, {kept} written"
              + ("" if kept == len(parts) else " (budget spent: the rest is left out; unpack needs every part)"))


def unpack(outdir: Path, workdir: Path) -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms
    from ase.io import write

    (workdir / "frames").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        parts = sorted(outdir.glob(f"frames-{split}.npz.*"))
        if not parts:
            continue
        d = np.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)))
        starts = np.concatenate([[0], np.cumsum(d["natoms"])])
        frame = 0
        for name, count in zip(d["chunk_names"], d["chunk_frames"]):
            frames = []
            for i in range(frame, frame + int(count)):
                a, b = starts[i], starts[i + 1]
                atoms = Atoms(d["numbers"][a:b], positions=d["positions"][a:b].astype(float), cell=d["cells"][i],
                              pbc=d["pbc"][i], tags=d["tags"][a:b])
                atoms.set_constraint(FixAtoms(mask=d["free"][a:b] == 0))
                atoms.calc = SinglePointCalculator(atoms, energy=float(d["energies"][i]),
                                                   forces=d["forces"][a:b].astype(float))
                atoms.info["system"] = str(d["systems"][i])
                atoms.arrays["free"] = d["free"][a:b].astype(np.int8)
                frames.append(atoms)
            frame += int(count)
            write(workdir / "frames" / str(name), frames, format="extxyz")
        print(f"{split}: {frame} frames into {len(d['chunk_names'])} chunks")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("pack", "unpack"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if argv[0] == "pack":
        opts = dict(zip(argv[3::2], argv[4::2]))
        pack(Path(argv[1]), Path(argv[2]), float(opts.get("--max-mb", 15)), float(opts.get("--budget-mb", 58)))
    else:
        unpack(Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
