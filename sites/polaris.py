"""ALCF Polaris (PBS Pro): parent sessions and GPU learn workers on Polaris nodes.

Set FINETUNA_ALCF_PROJECT and FINETUNA_WORKER_INIT (e.g. "module use /soft/modulefiles; module load
conda; conda activate finetuna"). Each Polaris node has 32 cores and 4 A100 GPUs.
"""

import os

from parsl.addresses import address_by_hostname, address_by_interface
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher
from parsl.providers import PBSProProvider

#: Whether learn workers share the parent's node(s), for parent.pause_while_learning: auto
#: (finetuna_parsl/campaign/pausing.py): parents and learn workers in separate PBS jobs: separate nodes.
LEARN_SHARES_PARENT_NODE = False

CORES_PER_NODE = 32
GPUS_PER_NODE = 4


def _address() -> str:
    """The high-speed network address workers connect back to; the hostname where bond0 is absent."""
    try:
        return address_by_interface("bond0")
    except OSError:
        return address_by_hostname()


def make_config(run_dir: str, parent_slots: int) -> Config:
    project = os.environ.get("FINETUNA_ALCF_PROJECT", "YOUR_PROJECT")
    worker_init = os.environ.get("FINETUNA_WORKER_INIT", "module load conda") + "\nexport OMP_NUM_THREADS=1"

    def provider(nodes: int, gpus: bool) -> PBSProProvider:
        return PBSProProvider(
            account=project, queue="prod", walltime="06:00:00", nodes_per_block=nodes,
            select_options="ngpus=4" if gpus else "", scheduler_options="#PBS -l filesystems=home:eagle",
            worker_init=worker_init, cpus_per_node=CORES_PER_NODE, init_blocks=1, min_blocks=0, max_blocks=1,
            launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=32 --ppn 1"),
        )

    return Config(
        executors=[
            HighThroughputExecutor(
                label="parent", address=_address(), cores_per_worker=1,
                max_workers_per_node=CORES_PER_NODE, drain_period=600,
                provider=provider(max(1, -(-parent_slots // CORES_PER_NODE)), gpus=False),
            ),
            HighThroughputExecutor(
                label="learn", address=_address(), available_accelerators=GPUS_PER_NODE,
                cpu_affinity="alternating", drain_period=600, provider=provider(1, gpus=True),
            ),
        ],
        run_dir=run_dir,
        retries=2,
        usage_tracking=0,
    )
