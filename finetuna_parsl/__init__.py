"""finetuna-parsl: FINETUNA online-learning geometry relaxations, run at scale with Parsl.

Layers, bottom up; a module imports only from its own layer and those below (tests/test_layers.py checks it):

    records                 SystemSpec, Evaluation (one parent or surrogate evaluation), LearnerSettings,
                            SystemResult (one system's result, read by metrics, tables, inspect and export), the
                            query-rule registry (QUERY_RULES), and the names of reasons, outcomes and statuses
    learner | parents       the online learner as pure functions (learner/online.py: segment_init and
                            segment_step with the surrogate's Prediction passed in; propose() loops over them),
                            its query rules (learner/rules/: one registered function each) and recipes
                            (learner/recipes.py), the reference optimizers | parent sessions (EMT, VASP, GPAW,
                            any ASE calculator; more through the entry-point group finetuna_parsl.parents:
                            parents/registry.py) and the socket bridge to them
    surrogate | store       fairchem's prior with fine-tuned residual heads (the learner's SurrogateModel) |
                            the HDF5 store (the only h5py user), a package split by job: writer, reader
                            (summaries), resume, frames (export), damage (salvage), locks, layout, errors
    config                  the run config: one frozen settings record per layer (LearnerSettings,
                            SurrogateSettings, ParentConfig, CampaignConfig), built once and passed whole
    apps, campaign          Parsl apps and the driver (the only Parsl users): one loop over two strategies,
                            OnlineStrategy (learn, then parent) and ReferenceStrategy (an ASE optimizer on the parent)
    cli, bench, plots, ...  what users run

Where to add one (one file each; README "Where to add"): a query rule -> learner/rules/<name>.py; a parent kind ->
a ParentSession subclass in any package, registered by the entry point finetuna_parsl.parents; a site ->
sites/<name>.py; a learner recipe -> an entry in learner/recipes.py.

Data flow of one relaxation: the driver sends the LearnerState to a learn worker (apps.learn_and_propose ->
learner.online.propose), which returns a Proposal (surrogate Evaluations and where to call the parent); the
driver sends those positions to the relaxation's parent session through the bridge and gets the parent's
Evaluation back; the store appends the segment and the parent point (flushed) before the learner sees the point.
"""

__version__ = "0.1.0"

# The query rules register themselves in records.QUERY_RULES, which LearnerSettings checks its `query` against:
# importing them here means any import of the package has them, whichever module it starts from.
from .learner import rules as _query_rules  # noqa: E402,F401
