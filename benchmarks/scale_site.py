"""Benchmark site: thousands of parent sessions in one process (threads), learn tasks on a local HTEx.

Parent sessions mostly wait on the driver's socket, so a ThreadPoolExecutor can hold 1,000 of them on a
2-core machine where 1,000 worker processes could not fit; the learn executor is the laptop's.
"""

import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
from parsl.providers import LocalProvider


def make_config(run_dir: str, parent_slots: int) -> Config:
    """Parent sessions as threads of this process; learn tasks on up to 2 local worker processes."""
    cores = os.cpu_count() or 1
    return Config(
        executors=[
            ThreadPoolExecutor(label="parent", max_threads=parent_slots),
            HighThroughputExecutor(
                label="learn",
                address="127.0.0.1",
                max_workers_per_node=max(1, min(cores, 2)),
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                       worker_init="export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1"),
                heartbeat_period=5,
                heartbeat_threshold=60,
            ),
        ],
        run_dir=run_dir,
        strategy="none",
        usage_tracking=0,
    )
