"""Systems to relax: the seeded demo and out-of-domain sets built with ase.build, the paper's 30 OC20 systems,
or the user's own structures.

Sources: "demo"; "ood"; "oc20-ood30" (the FINETUNA paper's 30 out-of-domain OC20 systems, shipped in
finetuna_parsl/data with their CC-BY-4.0 attribution); an ASE database (.db); a folder of structure files
(.traj/.extxyz/.xyz/.cif/POSCAR); or a single structure file (every frame is a system). Rows that cannot be
used are reported by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc110, fcc111, fcc211, molecule
from ase.constraints import FixAtoms

from .records import SystemSpec

DEMO_METALS = ("Al", "Ni", "Cu", "Pd", "Ag", "Pt", "Au")
DEMO_ADSORBATES = ("H", "O", "C", "N", "OH", "CO", "CH", "NH")
DEMO_FACETS = ("fcc111", "fcc100", "fcc211")
_SITES = {"fcc111": ("ontop", "bridge", "fcc", "hcp"), "fcc100": ("ontop", "bridge", "hollow"),
          "fcc110": ("ontop", "longbridge", "shortbridge", "hollow")}
_HEIGHT = {"H": 1.6, "O": 1.4, "C": 1.4, "N": 1.4, "OH": 1.6, "CO": 1.8, "CH": 1.5, "NH": 1.5,
           "CH2": 1.6, "NH2": 1.6, "HCO": 1.7, "COH": 1.5, "NO": 1.6, "H2O": 2.2}

# The shipped prior's OC20-style split (issue 12): what pretraining saw, and what it never saw.
#: Every facet the split uses, in and out of domain.
FACETS = ("fcc111", "fcc100", "fcc110", "fcc211")
#: Pretraining alloys only pairs of these metals; every alloy holding Al or Au is out of domain.
ALLOY_METALS = ("Ni", "Cu", "Pd", "Ag", "Pt")
HELD_OUT_ALLOY_METALS = ("Al", "Au")
#: Adsorbates of C, H, N, O with up to four atoms that pretraining saw.
TRAIN_ADSORBATES = ("H", "O", "C", "N", "OH", "CO", "CH", "NH", "CH3", "NH3", "CN", "N2", "O2", "CO2", "HCN",
                    "OOH")
#: Adsorbates pretraining never saw; the "ood" systems source draws only from these.
OOD_ADSORBATES = ("CH2", "NH2", "HCO", "COH", "NO", "H2O")
_MOLECULE_NAMES = {"CH2": "CH2_s1A1d"}
#: Binding atom (index in the molecule) where it is not atom 0: molecule("CO") is (O, C); HCN through N; CO2 through O.
_BIND_INDEX = {"CO": 1, "HCN": 1, "CO2": 1}
#: Adsorbates ase.build.molecule does not have: symbols and positions (A), binding atom first.
_BUILT = {
    "COH": ("COH", [(0.0, 0.0, 0.0), (0.0, 0.0, 1.33), (0.0, 0.93, 1.62)]),
    "OOH": ("OOH", [(0.0, 0.0, 0.0), (0.0, 0.0, 1.45), (0.0, 0.94, 1.70)]),
}
STRUCTURE_SUFFIXES = (".traj", ".extxyz", ".xyz", ".cif", ".vasp", ".json")


class SystemsError(ValueError):
    """The systems source as a whole cannot be read (an empty or unreadable file); str() is one line naming it."""


@dataclass(frozen=True)
class SkippedSystem:
    """A row or file that could not become a system, and why."""

    system_id: str
    reason: str


def _adsorbate(name: str) -> tuple[Atoms, int]:
    """The adsorbate upright with its binding atom (C of CO, O of OH, ...) lowest, and that atom's index.

    Linear molecules along z are flipped; others are rotated so the rest of the molecule sits above the
    binding atom. Raises KeyError for a name neither ase.build.molecule nor this module knows.
    """
    if len(name) == 1:
        return Atoms(name), 0
    if name in _BUILT:
        symbols, positions = _BUILT[name]
        return Atoms(symbols, positions=positions), 0
    mol = molecule(_MOLECULE_NAMES.get(name, name))
    bind = _BIND_INDEX.get(name, 0)
    rest = np.delete(mol.positions, bind, axis=0).mean(axis=0) - mol.positions[bind]
    if np.allclose(rest[:2], 0.0):  # linear along z (CO, OH, ...) or symmetric about z (NH2, H2O, NH3)
        if rest[2] < 0:
            mol.positions[:, 2] *= -1
    else:  # HCO, CH3: turn the rest of the molecule to point up
        mol.rotate(rest, "z", center=mol.positions[bind])
    return mol, bind


def _fix_lower_slab(slab: Atoms, fraction: float = 0.6) -> None:
    """FixAtoms on the slab atoms in the lower `fraction` of its height (OC20 fixes the subsurface)."""
    z = slab.positions[:, 2]
    cut = z.min() + fraction * (z.max() - z.min())
    slab.set_constraint(FixAtoms(mask=z < cut))


def build_demo_system(facet: str, metal: str, adsorbate: str, rng: np.random.Generator,
                      alloy: str | None = None) -> Atoms:
    """One adsorbate/slab system, perturbed by `rng` so the relaxation has work to do, with OC20 tags (0 fixed
    subsurface, 1 surface, 2 adsorbate).

    `alloy`: a second metal that replaces a random half of the slab atoms (a bimetallic surface).
    """
    if facet == "fcc111":
        slab = fcc111(metal, size=(3, 3, 3), vacuum=7.0)
    elif facet == "fcc100":
        slab = fcc100(metal, size=(3, 3, 3), vacuum=7.0)
    elif facet == "fcc110":
        slab = fcc110(metal, size=(3, 2, 4), vacuum=7.0)
    else:
        slab = fcc211(metal, size=(3, 2, 3), vacuum=7.0)
    if alloy is not None:
        symbols = np.array(slab.get_chemical_symbols(), dtype=object)
        symbols[rng.permutation(len(slab))[: len(slab) // 2]] = alloy
        slab.set_chemical_symbols(list(symbols))
    _fix_lower_slab(slab)
    mol, bind = _adsorbate(adsorbate)
    height = _HEIGHT[adsorbate] + rng.uniform(-0.1, 0.3)
    if facet in _SITES:
        site = _SITES[facet][rng.integers(len(_SITES[facet]))]
        offset = rng.uniform(-0.25, 0.25, size=2)
        add_adsorbate(slab, mol, height, position=site, offset=offset / 3.0, mol_index=bind)
    else:
        top = slab.positions[slab.positions[:, 2] > slab.positions[:, 2].max() - 0.5]
        xy = top[rng.integers(len(top))][:2] + rng.uniform(-0.5, 0.5, size=2)
        add_adsorbate(slab, mol, height, position=tuple(xy), mol_index=bind)
    fixed = np.zeros(len(slab), dtype=bool)
    fixed[slab.constraints[0].get_indices()] = True
    slab.positions[~fixed] += rng.normal(0.0, 0.05, size=((~fixed).sum(), 3))
    # OC20 tags (ase.build's are layer numbers): 0 subsurface (fixed), 1 surface, 2 adsorbate (added last)
    tags = np.where(fixed, 0, 1)
    tags[len(slab) - len(mol):] = 2
    slab.set_tags(tags)
    return slab


def demo_systems(count: int = 20, seed: int = 0) -> list[SystemSpec]:
    """The seeded demo set: facets, metals, adsorbates and sites drawn in turn so every kind appears."""
    rng = np.random.default_rng(seed)
    systems = []
    for i in range(count):
        facet = DEMO_FACETS[i % len(DEMO_FACETS)]
        metal = DEMO_METALS[rng.integers(len(DEMO_METALS))]
        adsorbate = DEMO_ADSORBATES[i % len(DEMO_ADSORBATES)]
        atoms = build_demo_system(facet, metal, adsorbate, rng)
        systems.append(SystemSpec.from_atoms(f"demo-{i:03d}-{adsorbate}-{metal}-{facet}", atoms))
    return systems


def _spec_or_skip(system_id: str, atoms: Atoms) -> SystemSpec | SkippedSystem:
    if len(atoms) == 0:
        return SkippedSystem(system_id, "no atoms")
    if not np.isfinite(atoms.positions).all():
        return SkippedSystem(system_id, "non-finite positions")
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-6 and atoms.cell.rank < atoms.pbc.sum():
        return SkippedSystem(system_id, "periodic but the cell is degenerate")
    try:
        return SystemSpec.from_atoms(system_id, atoms)
    except ValueError as exc:
        return SkippedSystem(system_id, str(exc))


def _safe_id(text: str) -> str:
    return str(text).replace("/", "_").strip() or "unnamed"


def ood_systems(count: int = 20, seed: int = 0) -> list[SystemSpec]:
    """The seeded out-of-domain set: an adsorbate the shipped prior never saw (OOD_ADSORBATES) on an alloy it
    never saw (one metal Al or Au, the other any EMT metal), facets fcc111/fcc100/fcc110/fcc211 in turn."""
    rng = np.random.default_rng(seed)
    systems = []
    for i in range(count):
        facet = FACETS[i % len(FACETS)]
        held = str(rng.choice(HELD_OUT_ALLOY_METALS))
        other = str(rng.choice([m for m in DEMO_METALS if m != held]))
        host, guest = (held, other) if rng.random() < 0.5 else (other, held)
        adsorbate = OOD_ADSORBATES[i % len(OOD_ADSORBATES)]
        atoms = build_demo_system(facet, host, adsorbate, rng, alloy=guest)
        systems.append(SystemSpec.from_atoms(f"ood-{i:03d}-{adsorbate}-{host}{guest}-{facet}", atoms))
    return systems


GENERATED_SOURCES = {"demo": demo_systems, "ood": ood_systems}
_DATA = Path(__file__).parent / "data"
#: Systems sources shipped as files with the package (name -> file).
PACKAGED_SOURCES = {"oc20-ood30": _DATA / "oc20_ood30.db"}
#: Every source name that is not a path.
NAMED_SOURCES = (*GENERATED_SOURCES, *PACKAGED_SOURCES)
#: Packaged sources whose files carry no tags: derive_oc20_tags sets them where it can.
UNTAGGED_SOURCES = ("oc20-ood30",)
#: Elements of OC20's adsorbates (all 82 are made of C, H, N, O).
ADSORBATE_ELEMENTS = ("C", "H", "N", "O")


def derive_oc20_tags(atoms: Atoms) -> bool:
    """Set OC20 tags (0 fixed subsurface, 1 surface, 2 adsorbate) on an OC20 adsorbate+slab structure stored
    without them, where that is unambiguous; True if set, else the tags are left as they are.

    OC20 appends the adsorbate after the slab: the adsorbate is the trailing run of C/H/N/O atoms. Unambiguous
    only when the slab part holds none of those elements (not a nitride, oxide, carbide, hydride: a slab N next
    to an adsorbate N cannot be told apart), no adsorbate atom is fixed, and every adsorbate atom lies above
    every fixed atom. 28 of the 30 oc20-ood30 systems qualify (1070869 and 1979576, with N and C in the slab, do
    not: their anomalies are then unknown).
    """
    symbols = atoms.get_chemical_symbols()
    start = len(symbols)
    while start > 0 and symbols[start - 1] in ADSORBATE_ELEMENTS:
        start -= 1
    if start in (0, len(symbols)) or any(s in ADSORBATE_ELEMENTS for s in symbols[:start]):
        return False
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.get_indices()] = True
    z = atoms.positions[:, 2]
    if fixed[start:].any() or (fixed.any() and z[start:].min() <= z[fixed].max()):
        return False
    tags = np.where(fixed, 0, 1)
    tags[start:] = 2
    atoms.set_tags(tags)
    return True


def paper_counts() -> dict[str, dict[str, float]]:
    """Per-system figures of the FINETUNA paper for "oc20-ood30", by system id (OC20 sid): DFT calls of ASE BFGS
    (vasp_bfgs_calls), ASE GPMin (vasp_gpmin_calls), GemNet warm start (gws_vasp_calls), FINETUNA k-steps
    (ksteps_parent_calls) and OC20's own VASP CG relaxation (oc20_frames); energies in eV. Empty where the
    paper published none (that key is absent)."""
    import csv

    with open(_DATA / "oc20_ood30_paper_counts.csv", newline="") as handle:
        return {row["sid"]: {k: float(v) for k, v in row.items() if k not in ("sid", "formula") and v != ""}
                for row in csv.DictReader(handle)}


def _read_frames(path: Path) -> list[Atoms]:
    """Every frame of one structure file; SystemsError (one line naming the file) if it is empty or unreadable."""
    from ase.io import read

    if path.is_file() and path.stat().st_size == 0:
        raise SystemsError(f"{path}: no structures in the file (it is empty)")
    try:
        frames = read(path, index=":")
    except Exception as exc:  # ASE raises many kinds for a file it cannot parse
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SystemsError(f"{path}: cannot read structures: {reason}") from None
    if not frames:
        raise SystemsError(f"{path}: no structures in the file")
    return list(frames)


def load_systems(source: str, count: int | None = None, seed: int = 0) -> tuple[list[SystemSpec], list[SkippedSystem]]:
    """Systems from `source` plus the ones skipped (with reasons). `count` caps how many are taken.

    Raises SystemsError when a single structure file is empty or cannot be read at all.
    """
    if source in GENERATED_SOURCES:
        return GENERATED_SOURCES[source](count or 20, seed), []
    from ase.io import read

    path = PACKAGED_SOURCES.get(source, Path(source))
    found: list[SystemSpec | SkippedSystem] = []
    if path.suffix == ".db":
        from ase.db import connect

        db = connect(str(path))
        has_frames = any("frame" in row.key_value_pairs for row in db.select(limit=1))
        rows = db.select(frame="initial") if has_frames else db.select()
        for row in rows:
            system_id = _safe_id(row.key_value_pairs.get("sid", row.key_value_pairs.get("name", f"row{row.id}")))
            try:
                atoms = row.toatoms()
                if source in UNTAGGED_SOURCES:
                    derive_oc20_tags(atoms)
                found.append(_spec_or_skip(system_id, atoms))
            except Exception as exc:  # a row ASE cannot turn into Atoms
                found.append(SkippedSystem(system_id, f"unreadable row: {exc}"))
    elif path.is_dir():
        for file in sorted(path.iterdir()):
            if file.suffix not in STRUCTURE_SUFFIXES and "POSCAR" not in file.name and "CONTCAR" not in file.name:
                continue
            try:
                found.append(_spec_or_skip(_safe_id(file.stem), read(file)))
            except Exception as exc:
                found.append(SkippedSystem(_safe_id(file.stem), f"unreadable file {file.name}: {exc}"))
    else:
        for i, atoms in enumerate(_read_frames(path)):
            found.append(_spec_or_skip(f"{_safe_id(path.stem)}-{i:04d}", atoms))
    systems = [s for s in found if isinstance(s, SystemSpec)]
    skipped = [s for s in found if isinstance(s, SkippedSystem)]
    seen: set[str] = set()
    unique = []
    for s in systems:
        if s.system_id in seen:
            skipped.append(SkippedSystem(s.system_id, "duplicate system id"))
            continue
        seen.add(s.system_id)
        unique.append(s)
    if count is not None:
        unique = unique[:count]
    return unique, skipped
