"""The campaign driver's one loop: any strategy (start a relaxation, advance it when its task is done) runs
through it, with no Parsl: the tasks here are futures that are already done."""

from __future__ import annotations

import concurrent.futures as cf

from finetuna_parsl.campaign.driver import Campaign, OnlineStrategy, ReferenceStrategy, _Relaxation
from finetuna_parsl.config import parse_config
from finetuna_parsl.learner.state import LearnerState
from finetuna_parsl.records import OUTCOME_CONVERGED, STATUS_DONE, STATUS_RUNNING
from finetuna_parsl.store import CampaignStore
from finetuna_parsl.systems import demo_systems

CONFIG = """
systems: {{source: demo, count: 3}}
parent: {{kind: emt}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2}}
site: laptop
"""


def done(value=None) -> cf.Future:
    future = cf.Future()
    future.set_result(value)
    return future


class ThreeSteps:
    """A strategy whose relaxations each take three tasks, then converge."""

    resumes = True

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self.advanced: list[str] = []
        self.most_active = 0

    def start(self, system) -> _Relaxation:
        c = self.campaign
        c.store.set_status(system.system_id, STATUS_RUNNING)
        self.most_active = max(self.most_active, c.progress.running + 1)
        return _Relaxation(state=LearnerState(system=system, settings=c.config.learner), future=done())

    def advance(self, r: _Relaxation) -> bool:
        sid = r.state.system.system_id
        self.advanced.append(sid)
        if self.advanced.count(sid) < 3:
            r.future = done()
            return True
        self.campaign.finish(sid, STATUS_DONE, OUTCOME_CONVERGED)
        return False


def test_one_loop_runs_any_strategy_within_the_slots(tmp_path):
    config = parse_config(CONFIG.format(output=tmp_path / "c.h5"))
    systems = demo_systems(3)
    with CampaignStore(tmp_path / "c.h5") as store:
        online = Campaign(config, systems, store)
        assert isinstance(online.strategy, OnlineStrategy) and online.strategy.resumes
        reference = Campaign(config, systems, store, method="bfgs")
        assert isinstance(reference.strategy, ReferenceStrategy) and not reference.strategy.resumes
        campaign = Campaign(config, systems, store)
        campaign.strategy = strategy = ThreeSteps(campaign)
        result = campaign.run()
    assert [r.status for r in result.rows] == [STATUS_DONE] * 3 and all(r.converged for r in result.rows)
    assert sorted(strategy.advanced) == sorted(s.system_id for s in systems for _ in range(3))
    assert strategy.most_active == 2  # campaign.max_concurrent
    assert campaign.progress.done == 3 and campaign.progress.running == 0
