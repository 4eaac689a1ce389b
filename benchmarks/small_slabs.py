"""Small adsorbate/slab systems (9-10 atoms) cheap enough for a GPAW parent on a laptop.

`python benchmarks/small_slabs.py` writes configs/gpaw-bench-systems.extxyz, the systems of
configs/gpaw-bench.yaml; benchmarks/parents.py replays a relaxation path of the first one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc111, molecule
from ase.constraints import FixAtoms

OUTPUT = Path(__file__).resolve().parents[1] / "configs" / "gpaw-bench-systems.extxyz"


def small_slab(name: str, rng: np.random.Generator) -> Atoms:
    """One 2x2x2 slab (bottom layer fixed) with an adsorbate placed off its minimum so BFGS has work."""
    facet, metal, adsorbate, site, height = {
        "O-Al100": ("fcc100", "Al", "O", "hollow", 1.1),
        "H-Al111": ("fcc111", "Al", "H", "fcc", 1.3),
        "O-Cu111": ("fcc111", "Cu", "O", "fcc", 1.5),
        "OH-Al111": ("fcc111", "Al", "OH", "ontop", 2.2),
    }[name]
    build = fcc100 if facet == "fcc100" else fcc111
    slab = build(metal, size=(2, 2, 2), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 2]))  # ase tags the bottom layer 2
    if adsorbate == "OH":
        mol = molecule("OH")
        mol.positions[:, 2] *= -1 if mol.positions[0, 2] > mol.positions[1, 2] else 1  # O (index 0) lowest
        add_adsorbate(slab, mol, height, position=site, mol_index=0)
    else:
        add_adsorbate(slab, adsorbate, height, position=site, offset=(0.1, 0.05))
    free = np.ones(len(slab), dtype=bool)
    free[slab.constraints[0].get_indices()] = False
    slab.positions[free] += rng.normal(0.0, 0.05, size=(free.sum(), 3))
    slab.info.pop("adsorbate_info", None)  # not storable in extxyz
    return slab


def small_slabs(seed: int = 0) -> list[Atoms]:
    """The four systems of configs/gpaw-bench.yaml, seeded."""
    rng = np.random.default_rng(seed)
    return [small_slab(name, rng) for name in ("O-Al100", "H-Al111", "O-Cu111", "OH-Al111")]


def main(argv: list[str]) -> int:
    """Write the systems file (path as the first argument, default configs/gpaw-bench-systems.extxyz)."""
    from ase.io import write

    path = Path(argv[0]) if argv else OUTPUT
    write(path, small_slabs(), format="extxyz")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
