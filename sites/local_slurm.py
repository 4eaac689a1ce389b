"""A Slurm on this machine (or a small departmental cluster): parents and learn workers as Slurm jobs.

Environment knobs: FINETUNA_SLURM_PARTITION (default: the cluster default), FINETUNA_SLURM_ACCOUNT,
FINETUNA_WORKER_INIT (shell lines run before workers start, e.g. activating the environment).
"""

import os

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

#: Whether learn workers share the parent's node(s), for parent.pause_while_learning: auto
#: (finetuna_parsl/campaign/pausing.py): both single-node, non-exclusive jobs
#: on this machine.
LEARN_SHARES_PARENT_NODE = True


def make_config(run_dir: str, parent_slots: int) -> Config:
    """Parents: one single-node block holding `parent_slots` sessions; learn: one single-node block."""
    partition = os.environ.get("FINETUNA_SLURM_PARTITION") or None
    account = os.environ.get("FINETUNA_SLURM_ACCOUNT") or None
    worker_init = os.environ.get("FINETUNA_WORKER_INIT", "") + "\nexport OMP_NUM_THREADS=1"

    def provider(walltime: str) -> SlurmProvider:
        return SlurmProvider(
            partition=partition,
            account=account,
            nodes_per_block=1,
            init_blocks=1,
            min_blocks=1,
            max_blocks=1,
            walltime=walltime,
            exclusive=False,
            worker_init=worker_init,
            launcher=SrunLauncher(),
            cmd_timeout=60,
        )

    return Config(
        executors=[
            HighThroughputExecutor(
                label="parent", address="127.0.0.1", max_workers_per_node=parent_slots, cores_per_worker=1e-6,
                provider=provider("01:00:00"), heartbeat_period=5, heartbeat_threshold=60, drain_period=None,
            ),
            HighThroughputExecutor(
                label="learn", address="127.0.0.1", max_workers_per_node=max(1, min(4, parent_slots)),
                provider=provider("01:00:00"), heartbeat_period=5, heartbeat_threshold=60,
            ),
        ],
        run_dir=run_dir,
        strategy="simple",
        usage_tracking=0,
    )
