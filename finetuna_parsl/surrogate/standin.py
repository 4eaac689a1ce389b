"""The held-out split of the stand-in world's pretraining data (issue 25): what the 30 test systems hold.

OC20's "out of domain for both adsorbate and surface", as the FINETUNA paper's 30 systems are: pretraining
sees no adsorbate of a test system and no bulk composition (set of elements) of a test system's slab. The
packaged `oc20-ood30` rows carry no OC20 tags, so each system's adsorbate is found here from its geometry
(`adsorbate_indices`), named by its Hill formula and compared with fairchem-data-oc's adsorbate set (OC20's
adsorbates.pkl) by formula: a held-out formula removes every isomer of it (for example *CHO and *COH), which
is stricter than OC20's split by adsorbate identity.

Pure functions of atoms and names (no files, no fairchem-data-oc import): scripts/standin_structures.py
computes the split with them and tests/test_standin_split.py checks it on the generated set.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.constraints import FixAtoms
from ase.formula import Formula

#: Elements an OC20 adsorbate is made of.
ADSORBATE_ELEMENTS = frozenset({"C", "H", "N", "O"})


def hill(symbols: Iterable[str]) -> str:
    """Hill formula of a list of element symbols ("CH3O", "H2O" as "H2O", C first then H, else alphabetical)."""
    return Formula.from_list(list(symbols)).format("hill")


def _fixed(atoms: Atoms) -> np.ndarray:
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return fixed


def adsorbate_indices(atoms: Atoms, known: Iterable[str], mult: float = 1.1) -> list[int]:
    """Indices of the adsorbate of one OC20 adsorbate+slab system whose tags are not set.

    Candidates are the free (not FixAtoms) C, H, N and O atoms, grouped into molecules by ASE's natural
    covalent cutoffs (times `mult`). The adsorbate is the largest group whose Hill formula is in `known`
    (OC20's adsorbate formulas), the highest one on ties. A group that matches no known formula may hold
    slab atoms of the same elements (a nitride's N under *OCH3, a carbide's C under *CN): of its atoms of an
    element the slab also holds (fixed, or in another group), the one with the most bonds to other atoms than
    C/H/N/O (the lowest on ties) is dropped and the rest grouped again, until it matches. With OC20 tags set
    (0, 1, 2; 2 for adsorbate atoms; not ase.build's layer numbers) the atoms tagged 2 are returned. Raises
    ValueError when no group matches.
    """
    from ase.neighborlist import NeighborList, natural_cutoffs
    from scipy.sparse.csgraph import connected_components

    tags = atoms.get_tags()
    if (tags == 2).any() and set(np.unique(tags)) <= {0, 1, 2}:
        return [int(i) for i in np.flatnonzero(tags == 2)]
    known = set(known)
    fixed = _fixed(atoms)
    symbols = atoms.get_chemical_symbols()
    z = atoms.positions[:, 2]

    def groups(indices: list[int]) -> list[list[int]]:
        if not indices:
            return []
        sub = atoms[indices]
        nl = NeighborList(natural_cutoffs(sub, mult=mult), self_interaction=False, bothways=True)
        nl.update(sub)
        n, label = connected_components(nl.get_connectivity_matrix())
        return [[indices[j] for j in np.flatnonzero(label == c)] for c in range(n)]

    candidates = [i for i, s in enumerate(symbols) if s in ADSORBATE_ELEMENTS and not fixed[i]]
    whole = NeighborList(natural_cutoffs(atoms, mult=mult), self_interaction=False, bothways=True)
    whole.update(atoms)
    slab_bonds = {i: sum(symbols[j] not in ADSORBATE_ELEMENTS for j in whole.get_neighbors(i)[0])
                  for i in candidates}
    found = groups(candidates)
    slab_elements = {symbols[i] for i in np.flatnonzero(fixed)} & ADSORBATE_ELEMENTS
    best: list[int] | None = None
    for group in sorted(found, key=lambda g: (-len(g), -z[g].max())):
        others = {symbols[i] for g in found if g is not group for i in g}
        strippable = slab_elements | others
        members = list(group)
        while members:
            if hill(symbols[i] for i in members) in known:
                break
            droppable = [i for i in members if symbols[i] in strippable]
            if not droppable:
                members = []
                break
            members.remove(max(droppable, key=lambda i: (slab_bonds[i], -z[i])))
            parts = groups(members)
            members = max(parts, key=lambda g: (len(g), z[g].max())) if parts else []
        if members and (best is None or len(members) > len(best)
                        or (len(members) == len(best) and z[members].max() > z[best].max())):
            best = members
    if best is None:
        raise ValueError(f"no group of free C/H/N/O atoms of {atoms.get_chemical_formula()} is a known adsorbate")
    return sorted(int(i) for i in best)


@dataclass(frozen=True)
class Holdout:
    """What pretraining must not see: adsorbate Hill formulas and bulk compositions (sets of element symbols)."""

    adsorbates: frozenset[str]
    bulks: frozenset[frozenset[str]]


def holdout_of(systems: Mapping[str, Atoms], known: Iterable[str]) -> tuple[Holdout, dict[str, tuple[str, frozenset[str]]]]:
    """The holdout of the test systems (id -> atoms) and, per id, its (adsorbate formula, bulk elements)."""
    known = set(known)
    per_system = {}
    for sid, atoms in systems.items():
        ads = set(adsorbate_indices(atoms, known))
        symbols = atoms.get_chemical_symbols()
        per_system[sid] = (hill(symbols[i] for i in sorted(ads)),
                           frozenset(s for i, s in enumerate(symbols) if i not in ads))
    return (Holdout(frozenset(a for a, _ in per_system.values()), frozenset(b for _, b in per_system.values())),
            per_system)


def allowed(adsorbate_formula: str | None, bulk_elements: Iterable[str], holdout: Holdout) -> bool:
    """Whether a pretraining system (adsorbate formula, None for a clean slab; its bulk's elements) stays clear
    of `holdout`."""
    return adsorbate_formula not in holdout.adsorbates and frozenset(bulk_elements) not in holdout.bulks


def split_of(index: int, adsorbate_formula: str | None, bulk_elements: Iterable[str], holdout: Holdout,
             valid_every: int = 13) -> str | None:
    """Split of pretraining candidate number `index`: None where it touches `holdout` (never used), else
    "valid_in" for one in `valid_every` indices (held-out in-domain systems, whole), else "train".
    scripts/standin_structures.py numbers a bulk's systems index * 16 + slab * 4 + adsorbate, so `valid_every`
    is prime to 16 (with 12, one in 6 systems was held out, not one in 12)."""
    if not allowed(adsorbate_formula, bulk_elements, holdout):
        return None
    return "valid_in" if index % valid_every == 0 else "train"
