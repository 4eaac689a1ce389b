"""The Parsl apps: thin wrappers over the learner, surrogate and parent layers.

learn_and_propose runs on the `learn` executor (backbone cached per worker); parent_call and
reference_relaxation run on the `parent` executor (sessions kept warm per worker, by system id).
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from functools import lru_cache

from parsl import python_app

from .config import ParentConfig, SurrogateConfig
from .learner.reference import ReferenceResult, run_reference
from .learner.state import LearnerSettings, LearnerState, ParentPoint, Proposal, SystemSpec
from .parents import ParentSession, make_parent

_SESSIONS_PER_WORKER = 16
_sessions: "OrderedDict[str, ParentSession]" = OrderedDict()


@lru_cache(maxsize=4)
def surrogate_for(config: SurrogateConfig):
    """The surrogate named by `config`, built once per process (the backbone stays in memory)."""
    settings = {
        "device": config.device, "ensemble_size": config.ensemble_size, "epochs": config.epochs, "lr": config.lr,
        "scheduler_factor": config.scheduler_factor, "scheduler_patience": config.scheduler_patience,
        "seed": config.seed,
    }
    if config.factory:
        module, _, name = config.factory.partition(":")
        return getattr(importlib.import_module(module), name)(checkpoint=config.checkpoint, **settings)
    from .surrogate import load_surrogate

    return load_surrogate(checkpoint=config.checkpoint, **settings)


def session_for(config: ParentConfig, system: SystemSpec) -> ParentSession:
    """This worker's live session for `system`, started on first use (least recently used ones closed)."""
    session = _sessions.get(system.system_id)
    if session is None:
        session = make_parent(config.kind, workdir=f"{config.workdir}/{system.system_id}", **config.options)
        session.start(system)
        _sessions[system.system_id] = session
        while len(_sessions) > _SESSIONS_PER_WORKER:
            _sessions.popitem(last=False)[1].close()
    _sessions.move_to_end(system.system_id)
    return session


def parent_point(config: ParentConfig, system: SystemSpec, positions) -> ParentPoint:
    """One parent evaluation through this worker's session for the system."""
    result = session_for(config, system).calculate(positions)
    return ParentPoint(positions, result.energy, result.forces, result.scf_cycles, result.wall_s)


def close_session(system_id: str) -> None:
    session = _sessions.pop(system_id, None)
    if session is not None:
        session.close()


@python_app(executors=["learn"])
def learn_and_propose(state: LearnerState, surrogate: SurrogateConfig) -> Proposal:
    """Fine-tune on the newest parent point, rebuild the Hessian, run the surrogate segment."""
    from finetuna_parsl.apps import surrogate_for
    from finetuna_parsl.learner.online import propose

    return propose(state, surrogate_for(surrogate))


@python_app(executors=["parent"])
def parent_call(parent: ParentConfig, system: SystemSpec, positions) -> ParentPoint:
    """The parent's energy and forces at `positions`, from this worker's warm session for the system."""
    from finetuna_parsl.apps import parent_point

    return parent_point(parent, system, positions)


@python_app(executors=["parent"])
def reference_relaxation(
    method: str, system: SystemSpec, parent: ParentConfig, settings: LearnerSettings, surrogate: SurrogateConfig
) -> ReferenceResult:
    """A whole reference relaxation (parent-only BFGS/CG, or warm start) on one parent session."""
    from finetuna_parsl.apps import close_session, parent_point, surrogate_for

    model = None
    if method == "warm-start":
        model = surrogate_for(surrogate)
        model = model.calculator(model.initial_head())
    try:
        return run_reference(method, system, lambda pos: parent_point(parent, system, pos), settings, model)
    finally:
        close_session(system.system_id)
