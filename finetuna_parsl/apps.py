"""The Parsl apps: thin wrappers over the learner, surrogate and parent layers.

learn_and_propose runs on the `learn` executor (backbone cached per worker); parent_session (one
live parent per relaxation, reached through the socket bridge) and reference_relaxation run on the
`parent` executor.
"""

from __future__ import annotations

import importlib
import threading
from functools import lru_cache

from parsl import python_app

from .config import ParentConfig
from .learner.reference import ReferenceResult, run_reference
from .learner.state import LearnerState, Proposal
from .records import LearnerSettings, SystemSpec
from .surrogate.settings import SurrogateSettings


#: One build at a time in a worker: learn tasks that start together (a thread site, a worker with several learn
#: threads) wait for the first one's surrogate instead of each loading the backbone (lru_cache alone lets every
#: caller that misses build its own).
_BUILD = threading.RLock()  # reentrant: a user's factory may itself ask for a surrogate


def surrogate_for(settings: SurrogateSettings):
    """The surrogate `settings` name, built once per process (the backbone stays in memory).

    A factory ("module:callable") is called with the settings as keywords (SurrogateSettings.factory_keywords).
    Made repeatable (reproducible.py): deterministic torch algorithms; the prior seeds each of its predictions
    from the structure and `settings.seed` (surrogate.prior.Prior), so it does not depend on what this worker
    predicted before; the build holds surrogate.prior.GLOBAL_GENERATOR, so its draws cannot fall between another
    thread's seeding and that prediction.
    """
    with _BUILD:
        return _built_surrogate(settings)


@lru_cache(maxsize=4)
def _built_surrogate(settings: SurrogateSettings):
    from .reproducible import deterministic_torch
    from .surrogate.prior import GLOBAL_GENERATOR

    deterministic_torch()  # before the model is built: cuBLAS reads its workspace setting when CUDA starts
    with GLOBAL_GENERATOR:
        if settings.factory:
            module, _, name = settings.factory.partition(":")
            return getattr(importlib.import_module(module), name)(**settings.factory_keywords())
        from .surrogate import load_surrogate

        return load_surrogate(settings)


surrogate_for.cache_clear = _built_surrogate.cache_clear  # a fresh worker's state, for tests


@python_app(executors=["learn"])
def learn_and_propose(state: LearnerState, surrogate: SurrogateSettings) -> Proposal:
    """Fine-tune on the parent points (settings.train_on), rebuild the Hessian, run the surrogate segment."""
    from finetuna_parsl.apps import surrogate_for
    from finetuna_parsl.learner.online import propose

    return propose(state, surrogate_for(surrogate))


@python_app(executors=["parent"])
def parent_session(parent: ParentConfig, system: SystemSpec, address, pause_between_calls: bool = False) -> int:
    """A long-lived parent session for one relaxation, reached by the driver through the socket bridge.

    Occupies one parent worker until the driver says exit; returns the number of calls it served.
    pause_between_calls: parent.pause_while_learning as the campaign resolved it (stop the parent after each answer).
    """
    from pathlib import Path

    from finetuna_parsl.parents import make_parent
    from finetuna_parsl.parents.bridge import serve_session
    from finetuna_parsl.parents.journal import CallJournal, parent_fingerprint

    workdir = Path(parent.workdir) / system.system_id
    session = make_parent(parent.kind, workdir=workdir, **parent.session_options())
    journal = CallJournal(workdir / f"journal-{parent_fingerprint(parent.kind, parent.session_options())}")
    return serve_session(session, system, address, timeout_s=parent.timeout_s, journal=journal,
                         pause_between_calls=pause_between_calls)


@python_app(executors=["parent"])
def reference_relaxation(
    method: str, system: SystemSpec, parent: ParentConfig, settings: LearnerSettings, surrogate: SurrogateSettings
) -> ReferenceResult:
    """A whole reference relaxation (parent-only BFGS/CG/GPMin, or warm start) on one parent session.

    Every answer is journaled (parents/journal.py) before the optimizer sees it: the relaxation runs whole in this
    task, so a crash would otherwise lose every call it had paid for. The optimizers are deterministic, so the
    resumed task re-proposes the same positions and replays them from the journal."""
    import warnings
    from pathlib import Path

    from finetuna_parsl.apps import surrogate_for
    from finetuna_parsl.parents import make_parent
    from finetuna_parsl.parents.journal import CallJournal, parent_fingerprint

    model = None
    if method == "warm-start":
        model = surrogate_for(surrogate)
        model = model.calculator(model.initial_head())
    workdir = Path(parent.workdir) / method / system.system_id
    session = make_parent(parent.kind, workdir=str(workdir), **parent.session_options())
    journal = CallJournal(workdir / f"journal-{parent_fingerprint(parent.kind, parent.session_options())}")

    def call(positions):
        answer = journal.lookup(positions)
        if answer is None:
            answer = session.calculate(positions)
            try:
                journal.record(positions, answer)
            except OSError as exc:  # a full disk: the answer is paid for and still reaches the store at the end
                warnings.warn(f"parent answer not journaled ({exc.strerror or exc}, {journal.directory}): a crash "
                              "before this relaxation ends would cost this call again", stacklevel=2)
        return answer

    session.start(system)
    try:
        return run_reference(method, system, call, settings, model)
    finally:
        session.close()
