"""Speed and accuracy of a method against a reference (the paper's measures), from summary rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ENERGY_TOLERANCE = 0.02  # eV: no worse than the reference + 0.02 eV counts as accurate


@dataclass(frozen=True)
class Comparison:
    """Totals of a method against a reference on the systems both finished."""

    method: str
    reference: str
    systems: int
    method_parent_calls: int
    reference_parent_calls: int
    method_converged: int
    accurate: int  # converged and energy <= reference + 0.02 eV

    @property
    def ratio(self) -> float:
        return self.method_parent_calls / self.reference_parent_calls if self.reference_parent_calls else math.nan

    @property
    def accuracy(self) -> float:
        return self.accurate / self.systems if self.systems else math.nan


def is_accurate(row: dict, reference_row: dict, tolerance: float = ENERGY_TOLERANCE) -> bool:
    """Parent-confirmed relaxed and parent energy <= reference energy + tolerance."""
    return row.get("outcome") == "converged" and row["final_energy"] <= reference_row["final_energy"] + tolerance


def compare(method: str, rows: Sequence[dict], reference: str, reference_rows: Sequence[dict]) -> Comparison:
    """Compare per-system summary rows (matched by system_id) of a method and a reference."""
    ref = {r["system_id"]: r for r in reference_rows}
    matched = [(r, ref[r["system_id"]]) for r in rows if r["system_id"] in ref]
    return Comparison(
        method=method,
        reference=reference,
        systems=len(matched),
        method_parent_calls=sum(r["parent_calls"] for r, _ in matched),
        reference_parent_calls=sum(q["parent_calls"] for _, q in matched),
        method_converged=sum(r.get("outcome") == "converged" for r, _ in matched),
        accurate=sum(is_accurate(r, q) for r, q in matched),
    )
