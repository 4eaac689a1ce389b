"""NERSC Perlmutter: parent sessions on CPU nodes, fine-tuning and surrogate segments on GPU nodes.

Set FINETUNA_NERSC_ACCOUNT (e.g. m1234) and FINETUNA_WORKER_INIT (e.g. "module load python; conda
activate finetuna"). Parent blocks drain 10 minutes before their walltime so a block reaching its
limit does not burn task retries; the driver resumes relaxations from the store.
"""

import os

from parsl.addresses import address_by_hostname, address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

#: Whether learn workers share the parent's node(s), for parent.pause_while_learning: auto
#: (finetuna_parsl/campaign/pausing.py): parents on CPU nodes, learn workers on GPU nodes: never on the same node.
LEARN_SHARES_PARENT_NODE = False

CPU_CORES = 128
GPUS_PER_NODE = 4
WORKERS_PER_GPU = 2


def _address() -> str:
    """The high-speed network address workers connect back to; the hostname where hsn0 is absent."""
    try:
        return address_by_interface("hsn0")
    except OSError:
        return address_by_hostname()


def make_config(run_dir: str, parent_slots: int) -> Config:
    account = os.environ.get("FINETUNA_NERSC_ACCOUNT", "YOUR_ACCOUNT")
    worker_init = os.environ.get("FINETUNA_WORKER_INIT", "module load python") + "\nexport OMP_NUM_THREADS=1"
    cpu_nodes = max(1, -(-parent_slots // CPU_CORES))
    return Config(
        executors=[
            HighThroughputExecutor(
                label="parent",
                address=_address(),
                cores_per_worker=1,
                max_workers_per_node=CPU_CORES,
                drain_period=600,
                provider=SlurmProvider(
                    account=account, qos="regular", constraint="cpu", nodes_per_block=cpu_nodes,
                    init_blocks=1, min_blocks=0, max_blocks=1, walltime="06:00:00",
                    scheduler_options="#SBATCH --licenses=scratch", worker_init=worker_init,
                    launcher=SrunLauncher(overrides="-c 256"),
                ),
            ),
            HighThroughputExecutor(
                label="learn",
                address=_address(),
                available_accelerators=[str(g) for g in range(GPUS_PER_NODE) for _ in range(WORKERS_PER_GPU)],
                cpu_affinity="block",
                drain_period=600,
                provider=SlurmProvider(
                    account=account, qos="regular", constraint="gpu", nodes_per_block=1, gpus_per_node=GPUS_PER_NODE,
                    init_blocks=1, min_blocks=0, max_blocks=1, walltime="06:00:00",
                    scheduler_options="#SBATCH --licenses=scratch", worker_init=worker_init,
                    launcher=SrunLauncher(overrides="--gpus-per-node 4 -c 64"),
                ),
            ),
        ],
        run_dir=run_dir,
        retries=2,
        usage_tracking=0,
    )
