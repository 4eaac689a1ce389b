"""Where a relaxation ended, chemically: OC20's anomaly flags, and the learner's cheap per-step form of them.

OC20 and AdsorbML discard a relaxation whose final structure, compared with its initial one, has its adsorbate
dissociated (its bonds changed), desorbed (no adsorbate atom bonded to the slab), the surface changed (slab
bonds made or broken) or the adsorbate intercalated (bonded to a fixed subsurface atom). The check is
fairchem-data-oc's `fairchem.data.oc.utils.flag_anomaly.DetectTrajAnomaly`, which needs OC20 tags: 0 subsurface
(fixed), 1 surface, 2 adsorbate. `detect()` runs it on a system's initial and final structure; a system whose
tags are not OC20's says "unknown" with the reason instead of guessing.

`AnomalyGuard` gives the same four answers from one nearest-image distance matrix per structure (0.8 ms against
DetectTrajAnomaly's 34 ms on a 20-atom slab; a surrogate step of the shipped model takes 46 ms): the online
learner checks every surrogate step with it (learner/online.py). tests/test_anomaly.py checks that it agrees
with DetectTrajAnomaly.

Bonds, as DetectTrajAnomaly draws them (ASE's NeighborList with its default 0.3 A skin per atom): atoms i, j are
bonded when their distance, under periodic images, is below m * (r_i + r_j) + 0.6 A, r = ASE's covalent radii
(ase.data.covalent_radii), m = 1 (1.5 for the desorption test and the surface test's cushion).
"""

from __future__ import annotations

import itertools

import numpy as np
from ase import Atoms
from ase.data import covalent_radii

from ..records import SystemSpec

DISSOCIATED = "dissociated"
DESORBED = "desorbed"
SURFACE_CHANGED = "surface_changed"
INTERCALATED = "intercalated"
#: Every anomaly kind, in the order tables list them.
ANOMALIES = (DISSOCIATED, DESORBED, SURFACE_CHANGED, INTERCALATED)
#: OC20 tags.
TAG_SUBSURFACE, TAG_SURFACE, TAG_ADSORBATE = 0, 1, 2
#: DetectTrajAnomaly's defaults: the desorption test's and the surface test's cushion on covalent radii.
CUSHION = 1.5
#: ASE NeighborList's default skin, added to every atom's cutoff radius (A); DetectTrajAnomaly keeps it.
SKIN = 0.3


def tags_problem(system: SystemSpec) -> str:
    """"" when the system carries OC20 tags (0 subsurface, 1 surface, 2 adsorbate), else why not, one line.

    Not OC20's: a tag outside 0/1/2 (ase.build's layer numbers), no adsorbate (tag 2) or no slab atom, or a
    fixed atom tagged adsorbate (OC20 fixes only the subsurface)."""
    tags = np.asarray(system.tags)
    if not np.isin(tags, (TAG_SUBSURFACE, TAG_SURFACE, TAG_ADSORBATE)).all():
        return f"tags {sorted(set(tags.tolist()))} are not OC20's (0 subsurface, 1 surface, 2 adsorbate)"
    adsorbate = tags == TAG_ADSORBATE
    if not adsorbate.any():
        return "no adsorbate tags (OC20 tag 2) on the system"
    if adsorbate.all():
        return "every atom is tagged adsorbate (OC20 tag 2): no slab"
    if np.asarray(system.fixed, dtype=bool)[adsorbate].any():
        return "fixed atoms are tagged adsorbate (OC20 tag 2): not OC20 tags"
    return ""


def _detector():
    """DetectTrajAnomaly, or ImportError when fairchem-data-oc is not installed."""
    from fairchem.data.oc.utils.flag_anomaly import DetectTrajAnomaly

    return DetectTrajAnomaly


def detect(system: SystemSpec, final_positions: np.ndarray) -> tuple[tuple[str, ...] | None, str]:
    """The anomalies (ANOMALIES, in order) of the relaxation from the system's initial structure to
    `final_positions` ((n, 3), A), by fairchem-data-oc's DetectTrajAnomaly with its default cushions, and ""; or
    (None, why) when they cannot be known: tags not OC20's (tags_problem), fairchem-data-oc not installed, or the
    check itself failed (its error, one line: a finished relaxation is never lost to its flags)."""
    why = tags_problem(system)
    if why:
        return None, why
    try:
        detector = _detector()
    except ImportError as exc:
        return None, f"fairchem-data-oc is not installed ({exc})"
    initial = system.to_atoms()
    final = system.to_atoms(np.asarray(final_positions, dtype=float))
    try:
        check = detector(initial, final, np.asarray(system.tags).tolist())
        found = {
            DISSOCIATED: check.is_adsorbate_dissociated(),
            DESORBED: check.is_adsorbate_desorbed(),
            SURFACE_CHANGED: check.has_surface_changed(),
            INTERCALATED: check.is_adsorbate_intercalated(),
        }
    except Exception as exc:  # noqa: BLE001 - any failure of the check leaves the flags unknown, never the run
        return None, f"the anomaly check failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return tuple(kind for kind in ANOMALIES if found[kind]), ""


class AnomalyGuard:
    """DetectTrajAnomaly's four tests of one system against its initial structure, from one distance matrix per
    structure (what the learner can afford after every surrogate step): a pair is bonded when its nearest periodic
    image is within the cutoff, as in ASE's connectivity matrix (1 for any image). Build it with for_system()."""

    def __init__(self, system: SystemSpec) -> None:
        """ValueError (tags_problem's reason) when the system's tags are not OC20's."""
        why = tags_problem(system)
        if why:
            raise ValueError(f"system {system.system_id}: {why}")
        self.numbers = np.asarray(system.numbers)
        self.cell = np.asarray(system.cell, dtype=float)
        self.pbc = np.asarray(system.pbc, dtype=bool)
        tags = np.asarray(system.tags)
        self.adsorbate = np.flatnonzero(tags == TAG_ADSORBATE)
        self.slab = np.flatnonzero(tags != TAG_ADSORBATE)
        self.subsurface = tags == TAG_SUBSURFACE
        radii = covalent_radii[self.numbers]
        self.cutoff = radii[:, None] + radii[None, :] + 2 * SKIN
        self.cushioned_cutoff = CUSHION * (radii[:, None] + radii[None, :]) + 2 * SKIN
        # every periodic image that can lie within the largest cutoff of a pair reduced to its nearest image
        self.full_cell = Atoms(cell=self.cell, pbc=self.pbc).cell.complete().array
        self.inverse_cell = np.linalg.inv(self.full_cell)
        heights = abs(np.linalg.det(self.full_cell)) / np.linalg.norm(
            np.cross(self.full_cell[[1, 2, 0]], self.full_cell[[2, 0, 1]]), axis=1)
        reach = [int(np.floor(0.5 + self.cushioned_cutoff.max() / h)) if p else 0 for h, p in zip(heights, self.pbc)]
        self.shifts = np.array(list(itertools.product(*(range(-r, r + 1) for r in reach))), dtype=float)
        self.zero_shift = int(np.flatnonzero((self.shifts == 0).all(axis=1))[0])
        bonded, cushioned = self._connectivity(np.asarray(system.positions, dtype=float))
        self.initial_adsorbate = bonded[np.ix_(self.adsorbate, self.adsorbate)]
        self.initial_slab = bonded[np.ix_(self.slab, self.slab)]
        self.initial_slab_cushioned = cushioned[np.ix_(self.slab, self.slab)]

    @classmethod
    def for_system(cls, system: SystemSpec) -> "AnomalyGuard | None":
        """The guard of `system`, or None when its tags are not OC20's (its anomalies are unknown)."""
        return None if tags_problem(system) else cls(system)

    def _connectivity(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bonded (n, n) bool matrices at multiplier 1 and CUSHION, as DetectTrajAnomaly's connectivity: a pair is
        bonded when any periodic image of it is (binary, as ase.neighborlist.get_connectivity_matrix)."""
        nearest = self._nearest_distances(positions)
        return nearest < self.cutoff, nearest < self.cushioned_cutoff

    def _nearest_distances(self, positions: np.ndarray) -> np.ndarray:
        """(n, n) distance of each pair's nearest periodic image (A); the diagonal: an atom's nearest own image."""
        frac = (positions[None, :, :] - positions[:, None, :]) @ self.inverse_cell
        frac[..., self.pbc] -= np.round(frac[..., self.pbc])
        images = (frac[:, :, None, :] + self.shifts[None, None, :, :]) @ self.full_cell
        distances = np.sqrt((images**2).sum(axis=-1))
        distances[np.arange(len(positions)), np.arange(len(positions)), self.zero_shift] = np.inf
        return distances.min(axis=2)

    def anomalies(self, positions: np.ndarray) -> frozenset[str]:
        """The anomaly kinds of `positions` ((n, 3), A) against the initial structure."""
        bonded, cushioned = self._connectivity(np.asarray(positions, dtype=float))
        ads, slab = self.adsorbate, self.slab
        found = set()
        if not np.array_equal(bonded[np.ix_(ads, ads)], self.initial_adsorbate):
            found.add(DISSOCIATED)
        if not cushioned[np.ix_(ads, slab)].any():
            found.add(DESORBED)
        slab_bonded, slab_cushioned = bonded[np.ix_(slab, slab)], cushioned[np.ix_(slab, slab)]
        if (slab_bonded & ~self.initial_slab_cushioned).any() or (self.initial_slab & ~slab_cushioned).any():
            found.add(SURFACE_CHANGED)
        if bonded[np.ix_(ads, np.flatnonzero(self.subsurface))].any():
            found.add(INTERCALATED)
        return frozenset(found)


def describe(anomalies: tuple[str, ...] | list[str] | None) -> str:
    """Text for a table cell: "unknown", "none", or the kinds joined by "," (ANOMALIES' order)."""
    if anomalies is None:
        return "unknown"
    return ",".join(anomalies) if anomalies else "none"
