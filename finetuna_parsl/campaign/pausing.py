"""Whether parent sessions pause between calls: parent.pause_while_learning resolved once per run.

Between two parent calls the learner fine-tunes and relaxes on the surrogate. A VASP left running meanwhile
sits at its stdin prompt with its MPI ranks spinning (busy-polling MPI waits), taking the cores a learn
worker on the same node needs; paused (SIGTSTP / `scancel -s TSTP`), it uses none and keeps its wavefunctions.

  true / false   as set
  auto           pause when the learn workers share the parent's node:
                   1. the site file's LEARN_SHARES_PARENT_NODE (True / False) when it declares one (every
                      shipped site does: laptop and local_slurm True; perlmutter, polaris, slurm_cluster False);
                   2. else True when both executors run on the driver's machine (a ThreadPoolExecutor, or a
                      LocalProvider: the laptop case);
                   3. else False, the safe choice for a site we know nothing about: pausing where the learner
                      runs elsewhere buys nothing, and costs a signal (under srun: two scancel calls to the
                      Slurm controller) per parent call.
Pausing never changes a result, only where the cores go; benchmarks/parents.md measures it.
"""

from __future__ import annotations

from parsl.config import Config
from parsl.executors import ThreadPoolExecutor
from parsl.providers import LocalProvider

from ..records import PAUSE_WHILE_LEARNING as SETTINGS
from .site import SiteError, import_site, site_file

#: What a site file sets to say whether its learn workers share the parent's node(s).
DECLARATION = "LEARN_SHARES_PARENT_NODE"


def pause_while_learning(setting: str, site: str, parsl_config: Config) -> bool:
    """Whether parent sessions pause between calls, for `setting` (parent.pause_while_learning) on `site`.

    `site` is the site name or file the run uses and `parsl_config` the Config it built (load_site).
    Raises ValueError for a setting other than auto/true/false, SiteError for a declaration that is not a bool.
    """
    if setting not in SETTINGS:
        raise ValueError(f"parent.pause_while_learning must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if setting != "auto":
        return setting == "true"
    return learn_shares_parent_node(site, parsl_config)


def learn_shares_parent_node(site: str, parsl_config: Config) -> bool:
    """The site's LEARN_SHARES_PARENT_NODE if it declares one, else whether both executors run on this machine.

    Raises SiteError (naming the file) when the declaration is not True or False.
    """
    declared = getattr(import_site(site), DECLARATION, None)
    if declared is not None:
        if not isinstance(declared, bool):
            raise SiteError(f"{site_file(site)}: {DECLARATION} must be True or False, "
                            f"got {type(declared).__name__} {declared!r}")
        return declared
    executors = {e.label: e for e in parsl_config.executors}
    return all(_on_driver_machine(executors[label]) for label in ("parent", "learn"))


def _on_driver_machine(executor) -> bool:
    """True for a ThreadPoolExecutor or an executor whose provider is a LocalProvider (no batch job)."""
    return isinstance(executor, ThreadPoolExecutor) or isinstance(getattr(executor, "provider", None), LocalProvider)
