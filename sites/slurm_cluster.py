"""Any Slurm cluster: parent sessions and learn workers in Slurm jobs that Parsl submits from the driver.

Every site-specific value is an environment variable, set in one place: the driver's batch script
(configs/slurm-driver.sbatch) or your shell before `finetuna-parsl run` on a login node.

  FINETUNA_SLURM_ACCOUNT     account to charge (sbatch --account); default: your default account
  FINETUNA_SLURM_PARTITION   partition of the parent jobs; default: the cluster's default partition
  FINETUNA_SLURM_QOS         QOS (sbatch --qos); default: none
  FINETUNA_SLURM_WALLTIME    walltime of each worker job, HH:MM:SS; default 04:00:00
  FINETUNA_PARENT_NODES      nodes in the parent job (VASP: concurrent relaxations x nodes per VASP); default 1
  FINETUNA_SLURM_OPTIONS     extra #SBATCH lines for both jobs, ';'-separated, e.g. "--constraint=cpu;--mem=0"
  FINETUNA_LEARN_PARTITION   partition of the learn job (a GPU partition); default: FINETUNA_SLURM_PARTITION
  FINETUNA_LEARN_GPUS        GPUs per learn node; 0 (default) runs the learn workers on CPU cores
  FINETUNA_WORKER_INIT       shell lines run before the workers start, e.g.
                             "module load vasp; source ~/venv/bin/activate"
  FINETUNA_DRIVER_ADDRESS    address the workers connect back to; default: this host's name (the driver's node)

The parent job runs one Parsl worker pool on its first node, holding up to `campaign.max_concurrent` parent
sessions; a VASP session starts VASP with its `command` (e.g. `srun --exact -n 64 vasp_std`), which spreads
over the job's nodes. Sessions reach the driver over TCP: set `parent.bridge: tcp` in the run config.
Jobs drain 10 minutes before their walltime; the driver resubmits them and resumes relaxations from the store.
"""

import os

from parsl.addresses import address_by_hostname
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SimpleLauncher, SrunLauncher
from parsl.providers import SlurmProvider

#: Whether learn workers share the parent's node(s), for parent.pause_while_learning: auto
#: (finetuna_parsl/campaign/pausing.py): parents and learn workers in separate exclusive Slurm jobs: separate nodes.
LEARN_SHARES_PARENT_NODE = False


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def make_config(run_dir: str, parent_slots: int) -> Config:
    """Parents: one job of FINETUNA_PARENT_NODES nodes; learn: one single-node job (GPUs optional)."""
    partition = _env("FINETUNA_SLURM_PARTITION")
    gpus = int(_env("FINETUNA_LEARN_GPUS", "0"))
    walltime = _env("FINETUNA_SLURM_WALLTIME", "04:00:00")
    options = "\n".join(f"#SBATCH {o.strip()}" for o in _env("FINETUNA_SLURM_OPTIONS", "").split(";") if o.strip())
    worker_init = _env("FINETUNA_WORKER_INIT", "") + "\nexport OMP_NUM_THREADS=1"
    address = _env("FINETUNA_DRIVER_ADDRESS") or address_by_hostname()

    def provider(partition: str | None, nodes: int, launcher, gpus_per_node: int | None = None) -> SlurmProvider:
        return SlurmProvider(
            partition=partition, account=_env("FINETUNA_SLURM_ACCOUNT"), qos=_env("FINETUNA_SLURM_QOS"),
            nodes_per_block=nodes, gpus_per_node=gpus_per_node, init_blocks=1, min_blocks=0, max_blocks=1,
            walltime=walltime, scheduler_options=options, worker_init=worker_init, exclusive=True,
            launcher=launcher, cmd_timeout=60,
        )

    learn_workers = {"available_accelerators": gpus} if gpus else {"max_workers_per_node": 4}
    return Config(
        executors=[
            HighThroughputExecutor(
                label="parent", address=address, max_workers_per_node=parent_slots, cores_per_worker=1e-6,
                drain_period=600, heartbeat_period=30, heartbeat_threshold=300,
                provider=provider(partition, int(_env("FINETUNA_PARENT_NODES", "1")), SimpleLauncher()),
            ),
            HighThroughputExecutor(
                label="learn", address=address, drain_period=600, heartbeat_period=30, heartbeat_threshold=300,
                provider=provider(_env("FINETUNA_LEARN_PARTITION", partition), 1, SrunLauncher(),
                                  gpus_per_node=gpus or None),
                **learn_workers,
            ),
        ],
        run_dir=run_dir,
        retries=2,
        usage_tracking=0,
    )
