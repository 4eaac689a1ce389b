"""The campaign's HDF5 store: one file, one writer (the driver), readable with plain h5py.

Layout (layout.py): /systems/<id>/ with the system as given, resizable steps/* datasets (one row per
records.Evaluation, surrogate or parent: positions, forces, energy, kind, uncertainty, scf_cycles, wall_s,
reason, fine_tune_s) and head/weights for resume; /runs holds one JSON line per run of the store (its config,
package versions, start time). Every append is flushed before the learner is allowed to use the point it holds.

One module per job, each name imported from here (`from finetuna_parsl.store import X`):

    errors      StoreError, DiskFull and the free-space check; HDF5's damage errors as one line
    locks       open_h5 and the lock forensics (who holds the store, can the filesystem lock)
    layout      the format: step columns, /runs, a system as stored
    writer      CampaignStore, the one writer
    reader      summaries (records.SystemResult per system) and the per-call figures bench and plots read
    resume      a stored relaxation's learner state; the same-campaign check
    frames      export to ASE formats
    damage      salvage of a damaged store

The package is the only h5py user (tests/test_layers.py).
"""

from .damage import salvage
from .errors import (DISK_RESERVE_BYTES, DiskFull, StoreError, check_space, damage_message, is_damage, mount_point,
                     naming_damage)
from .frames import EXPORT_FORMATS, export, iter_frames
from .layout import (FORMAT_VERSION, KIND_PARENT, KIND_SURROGATE, LATER_COLUMNS, STRING_DTYPE, read_runs,
                     system_from_group)
from .locks import LOCKING_HINT, check_not_held, describe_open_failure, open_h5, store_holders
from .reader import (NO_PARENT_STRUCTURE, NOT_CHECKED, NOT_RECORDED, load_final_positions, load_parent_calls,
                     load_parent_energies, load_summary, read_parent_calls, read_summary, read_system_row)
from .resume import check_same_campaign, state_from_group
from .writer import CampaignStore

__all__ = [
    "DISK_RESERVE_BYTES", "EXPORT_FORMATS", "FORMAT_VERSION", "KIND_PARENT", "KIND_SURROGATE", "LATER_COLUMNS",
    "LOCKING_HINT", "NOT_CHECKED", "NOT_RECORDED", "NO_PARENT_STRUCTURE", "STRING_DTYPE", "CampaignStore",
    "DiskFull", "StoreError", "check_not_held", "check_same_campaign", "check_space", "damage_message",
    "describe_open_failure", "export", "is_damage", "iter_frames", "load_final_positions", "load_parent_calls",
    "load_parent_energies", "load_summary", "mount_point", "naming_damage", "open_h5", "read_parent_calls",
    "read_runs", "read_summary", "read_system_row", "salvage", "state_from_group", "store_holders",
    "system_from_group",
]
