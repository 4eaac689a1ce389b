"""finetuna-parsl: FINETUNA online-learning geometry relaxations, run at scale with Parsl.

Layers, bottom up; a module imports only from its own layer and those below (tests/test_layers.py checks it):

    records                 SystemSpec, Evaluation (one parent or surrogate evaluation), LearnerSettings, and the
                            names of query rules, reasons, outcomes and statuses
    learner | parents       the online learner as pure functions | parent sessions (EMT, VASP, GPAW) and the
                            socket bridge to them
    surrogate | store       fairchem's prior with fine-tuned residual heads (the learner's SurrogateModel) |
                            the HDF5 store (the only h5py user)
    config                  the run config: one frozen settings record per layer (LearnerSettings,
                            SurrogateSettings, ParentConfig, CampaignConfig), built once and passed whole
    apps, campaign          Parsl apps and the driver (the only Parsl users)
    cli, bench, plots, ...  what users run

Data flow of one relaxation: the driver sends the LearnerState to a learn worker (apps.learn_and_propose ->
learner.online.propose), which returns a Proposal (surrogate Evaluations and where to call the parent); the
driver sends those positions to the relaxation's parent session through the bridge and gets the parent's
Evaluation back; the store appends the segment and the parent point (flushed) before the learner sees the point.
"""

__version__ = "0.1.0"
