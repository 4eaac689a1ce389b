"""Test site: parent sessions and learn tasks as threads of the driver's process (Parsl ThreadPoolExecutors).

For tests that run many small campaigns one after another: no worker processes to start and no
second import of torch and fairchem per campaign; the learn tasks still go through Parsl and the
apps, and the surrogate is built once per process (apps.surrogate_for).
"""

from parsl.config import Config
from parsl.executors import ThreadPoolExecutor


def make_config(run_dir: str, parent_slots: int) -> Config:
    return Config(
        executors=[ThreadPoolExecutor(label="parent", max_threads=parent_slots),
                   ThreadPoolExecutor(label="learn", max_threads=2)],
        run_dir=run_dir,
        strategy="none",
        usage_tracking=0,
    )
