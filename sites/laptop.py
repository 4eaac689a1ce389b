"""Laptop / workstation site: everything on this machine, two local HighThroughputExecutors.

`parent` runs parent sessions (one worker per concurrent relaxation); `learn` runs fine-tuning and
surrogate segments (one worker per core, at most 4; each keeps the surrogate backbone in memory).
"""

import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider

#: Whether learn workers share the parent's node(s), for parent.pause_while_learning: auto
#: (finetuna_parsl/campaign/pausing.py): parent sessions and learn workers
#: on this one machine.
LEARN_SHARES_PARENT_NODE = True


def make_config(run_dir: str, parent_slots: int) -> Config:
    """The Parsl config for `parent_slots` concurrent relaxations on this machine."""
    cores = os.cpu_count() or 1
    one_thread = "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"
    return Config(
        executors=[
            HighThroughputExecutor(
                label="parent",
                address="127.0.0.1",
                max_workers_per_node=parent_slots,
                cores_per_worker=1e-6,  # sessions mostly wait on the driver: do not let cores cap them
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=one_thread),
                heartbeat_period=5,
                heartbeat_threshold=60,
            ),
            HighThroughputExecutor(
                label="learn",
                address="127.0.0.1",
                max_workers_per_node=max(1, min(cores, 4, parent_slots)),
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, worker_init=one_thread),
                heartbeat_period=5,
                heartbeat_threshold=60,
            ),
        ],
        run_dir=run_dir,
        strategy="none",
        usage_tracking=0,
    )
