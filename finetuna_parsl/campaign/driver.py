"""The campaign driver: streams systems through a bounded number of parent slots, one HDF5 writer.

One loop (Campaign) for both kinds of work, each a strategy: OnlineStrategy (the online learner) and
ReferenceStrategy (a reference optimizer, one task per relaxation).

Each relaxation alternates learn_and_propose (learn executor) and a parent call; the parent is one
live session per relaxation (a long-lived app on the parent executor) reached through the socket
bridge, called from a driver thread so the loop below only ever waits on futures. A segment and the parent point that ends it are written and flushed together before the learner
sees the point, so a killed driver loses at most the parent call in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from .. import live
from ..apps import learn_and_propose, parent_session, reference_relaxation
from ..config import RunConfig
from ..learner.anomaly import detect
from ..learner.online import record_parent, settle
from ..learner.reference import ReferenceResult
from ..learner.state import LearnerState, Proposal
from ..parents.base import ParentError, ParentSetupError
from ..parents.bridge import ParentServer
from ..records import STATUS_DONE as DONE
from ..records import STATUS_FAILED as FAILED
from ..records import STATUS_INTERRUPTED as INTERRUPTED
from ..records import STATUS_PENDING as PENDING
from ..records import STATUS_RUNNING as RUNNING
from ..records import SystemResult, SystemSpec
from ..store import CampaignStore

#: Seconds the main loop waits on futures before it looks at a stop request again.
POLL_S = 0.25
#: Seconds between rewrites of the live summary beside the store (live.py) while something changed.
PUBLISH_INTERVAL_S = 1.0
#: On a stop, how long (s) the parent sessions get to close their parents (VASP: STOPCAR) before Parsl goes.
SESSION_CLOSE_WAIT_S = 5.0


class StopRequest:
    """Set by a signal handler (no locks: safe there); the campaign loop stops at its next look."""

    def __init__(self) -> None:
        self.signum: int | None = None


class CampaignStopped(RuntimeError):
    """Something the campaign runs on failed (a Parsl interchange or worker pool died): the run stopped, every stored
    row is complete, relaxations in flight stay 'running' and the same command resumes them. str() is one line.

    A Parsl thread may stay blocked on what died (a task sent to a killed interchange); the process then needs
    os._exit to end, as the CLI does (cli._end_stopped_run)."""


#: Seconds between looks at the health of what the campaign runs on (Campaign's `health` callback).
HEALTH_INTERVAL_S = 2.0


class CampaignInterrupted(BaseException):
    """The run was stopped by a signal: every stored row is complete, the same command resumes it.

    A BaseException (like KeyboardInterrupt) so no `except Exception` on the way treats it as a failure.
    """

    def __init__(self, signum: int, path: str | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.path = path  # the store, once known

    def __str__(self) -> str:
        import signal

        name = signal.Signals(self.signum).name if self.signum in signal.Signals._value2member_map_ else str(self.signum)
        where = f"store {self.path} closed" if self.path else "store closed"
        return f"interrupted by {name}: {where}; run the same command again to resume (finished systems are kept)"


@dataclass
class Progress:
    """What the progress bar shows."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0
    parent_calls: int = 0  # every stored parent call of these systems, resumed work included
    resumed_parent_calls: int = 0  # of those, made by earlier runs


@dataclass
class _Relaxation:
    state: LearnerState
    future: cf.Future | None = None
    proposal: Proposal | None = None
    learn_failures: int = 0
    parent_failures: int = 0
    server: ParentServer | None = None
    session: cf.Future | None = None


@dataclass
class CampaignResult:
    """Per-system rows as stored (records.SystemResult), plus what the run itself counted."""

    rows: list[SystemResult] = field(default_factory=list)
    parent_calls_this_run: int = 0


#: Lines of traceback kept in a stored error for exceptions that are not a ParentError (a bug, not a parent).
TRACEBACK_LINES = 30


def describe_error(exc: BaseException) -> str:
    """The whole reason, for the store: a ParentError's message as written (first line: what happened;
    then exit code, output tails, command, folder), any other exception as `Type: message` and its traceback."""
    if isinstance(exc, ParentError):
        return str(exc).strip() or "ParentError"
    head = f"{type(exc).__name__}: {exc}".strip()
    frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip().splitlines() if exc.__traceback__ else []
    if not frames:
        return head
    return head + "\n--- traceback (last lines) ---\n" + "\n".join(frames[-TRACEBACK_LINES:])


def _setup_error(exc: BaseException, session: cf.Future | None) -> ParentSetupError | None:
    """The ParentSetupError behind a failed parent call: raised by the call itself, or by its session's task
    (a session that cannot start ends, and the call only sees the connection go)."""
    if isinstance(exc, ParentSetupError):
        return exc
    if session is not None and session.done() and isinstance(session.exception(), ParentSetupError):
        return session.exception()
    return None


class Strategy(Protocol):
    """One kind of campaign work, run by Campaign's loop: `start` a system's relaxation (its first task submitted
    as r.future), then `advance` it each time its task is done (store what the task brought, submit the next
    task, or end it with Campaign.finish). `resumes`: whether a stored relaxation not done is resumed (True) or
    redone whole."""

    resumes: bool

    def start(self, system: SystemSpec) -> _Relaxation | None:
        """The relaxation with its task submitted; None when there is nothing left to run (it was ended)."""

    def advance(self, r: _Relaxation) -> bool:
        """Handle r's finished task; False when the relaxation ended."""


class OnlineStrategy:
    """The online learner's work (method 'online'): each relaxation alternates a learn task (learn_and_propose on
    the learn executor) and a parent call through its live parent session. A stored relaxation not done is
    resumed from its stored parent points."""

    resumes = True

    def __init__(self, campaign: "Campaign") -> None:
        self.campaign = campaign

    def start(self, system: SystemSpec) -> _Relaxation | None:
        """The system's relaxation with its first task submitted; None when the store already holds its end."""
        c = self.campaign
        sid = system.system_id
        if c.store.has_system(sid) and c.store.status(sid) != PENDING:
            state = settle(c.store.load_state(sid, c.config.learner))
            if state.done:  # the driver died after storing the final point, before marking it
                c.store.set_status(sid, RUNNING)
                c.progress.running += 1
                c.finish(sid, DONE, state.outcome)
                return None
        else:
            c.store.add_system(system)
            state = LearnerState(system=system, settings=c.config.learner)
        c.store.set_status(sid, RUNNING)
        r = _Relaxation(state=state)
        self._submit_learn(r)
        return r

    def advance(self, r: _Relaxation) -> bool:
        """Handle the relaxation's finished task and submit its next; False when the relaxation ended. A
        relaxation waits on its learn task until it holds a proposal, then on the parent call for it."""
        return self._on_learn(r) if r.proposal is None else self._on_parent(r)

    def _submit_learn(self, r: _Relaxation) -> None:
        r.future = learn_and_propose(r.state, self.campaign.config.surrogate)

    def _open_session(self, r: _Relaxation) -> None:
        """Serve a bridge for this relaxation and start its parent session app, which connects back."""

        def session_ended() -> str | None:
            future = r.session
            if future is None or not future.done():
                return None
            exc = future.exception()
            return describe_error(exc) if exc is not None else "session exited"

        cfg = self.campaign.config.parent
        server = ParentServer(mode=cfg.bridge, timeout_s=cfg.timeout_s, session_alive=session_ended)
        r.server = server
        r.session = parent_session(cfg, r.state.system, server.bridge_address, self.campaign.pause_between_calls)
        # the session's end (its process exiting, its worker lost) wakes a call waiting on it at once
        r.session.add_done_callback(lambda _future: server.session_ended())

    def _warn(self, system_id: str, messages: list[str]) -> None:
        """Warnings raised on a worker about this system: stored on it, and passed to on_warning."""
        if not messages:
            return
        self.campaign.store.add_warnings(system_id, messages)
        for message in dict.fromkeys(messages):
            self.campaign.on_warning(system_id, message)

    def _submit_parent(self, r: _Relaxation) -> None:
        if r.server is None:
            self._open_session(r)
        r.future = self.campaign.calls.submit(r.server.call, r.proposal.positions, r.state.system.cell)

    def _on_learn(self, r: _Relaxation) -> bool:
        """Handle a finished learn task; False when the relaxation ended."""
        c = self.campaign
        sid = r.state.system.system_id
        try:
            r.proposal = r.future.result()
        except Exception as exc:
            r.learn_failures += 1
            if r.learn_failures > c.config.campaign.learn_retries:
                c.finish(sid, FAILED, "", f"learn step failed {r.learn_failures} times: {describe_error(exc)}", r=r)
                return False
            self._submit_learn(r)
            return True
        self._submit_parent(r)
        return True

    def _on_parent(self, r: _Relaxation) -> bool:
        c = self.campaign
        sid = r.state.system.system_id
        try:
            point = r.future.result()
        except Exception as exc:
            r.parent_failures += 1
            setup = _setup_error(exc, r.session)
            c.close_session(r)  # the retry gets a new, cold session
            if setup is not None:  # the parent cannot run as set up: a retry would fail the same way
                c.finish(sid, FAILED, "", f"parent setup failed (not retried): {describe_error(setup)}")
                return False
            if r.parent_failures > c.config.campaign.parent_retries:
                c.finish(sid, FAILED, "", f"parent call failed {r.parent_failures} times: {describe_error(exc)}")
                return False
            self._submit_parent(r)
            return True
        r.parent_failures = 0  # retries count per call
        self._warn(sid, r.server.take_warnings() if r.server is not None else [])
        point = replace(point, reason=r.proposal.reason, fine_tune_s=r.proposal.fine_tune_s)
        c.store.append_steps(sid, [*r.proposal.segment, point])  # flushed before the learner sees the point
        c.store.save_head(sid, r.proposal.head, r.proposal.head_points)
        c.parent_calls_this_run += 1
        c.progress.parent_calls += 1
        r.state = record_parent(r.state, r.proposal, point)
        r.proposal = None
        if r.state.done:
            c.finish(sid, DONE, r.state.outcome, r=r)
            return False
        self._submit_learn(r)
        return True


class ReferenceStrategy:
    """A reference optimizer's work (method 'bfgs', ...: learner/reference.py): each relaxation is one task
    (reference_relaxation on the parent executor). A stored relaxation not done is redone whole."""

    resumes = False

    def __init__(self, campaign: "Campaign") -> None:
        self.campaign = campaign
        self.method = campaign.method

    def start(self, system: SystemSpec) -> _Relaxation:
        """The system's relaxation with its task submitted."""
        c = self.campaign
        sid = system.system_id
        if c.store.has_system(sid):  # a reference relaxation is one task: redo it whole
            c.store.reset_steps(sid)
        else:
            c.store.add_system(system)
        c.store.set_status(sid, RUNNING)
        r = _Relaxation(state=LearnerState(system=system, settings=c.config.learner))
        r.future = reference_relaxation(self.method, system, c.config.parent, c.config.learner, c.config.surrogate)
        return r

    def advance(self, r: _Relaxation) -> bool:
        """Store the finished relaxation; always False (it ended)."""
        c = self.campaign
        sid = r.state.system.system_id
        try:
            result: ReferenceResult = r.future.result()
        except Exception as exc:
            c.finish(sid, FAILED, "", f"{self.method} failed: {describe_error(exc)}")
            return False
        c.store.append_steps(sid, [*result.surrogate_steps, *result.parent_points])
        c.parent_calls_this_run += result.parent_calls
        c.progress.parent_calls += result.parent_calls
        if result.error:  # the optimizer gave up (GPMin: no descent model); its parent calls are kept and counted
            c.finish(sid, FAILED, result.outcome, f"{self.method} failed: {result.error}")
            return False
        c.finish(sid, DONE, result.outcome)
        return False


class Campaign:
    """Relax `systems` under `config` (method 'online' or a reference method), writing to `store`.

    One loop for both kinds of work: it streams the systems through max_concurrent slots and hands each finished
    task to the method's strategy (OnlineStrategy or ReferenceStrategy), which stores what it brought and submits
    the relaxation's next task or ends it (finish)."""

    def __init__(
        self,
        config: RunConfig,
        systems: Sequence[SystemSpec],
        store: CampaignStore,
        method: str = "online",
        on_progress: Callable[[Progress], None] | None = None,
        stop: StopRequest | None = None,
        on_warning: Callable[[str, str], None] | None = None,
        pause_between_calls: bool = False,
        health: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.health = health or (lambda: None)  # why the execution layer cannot go on (one line), or None
        self._healthy_at = time.monotonic()
        self.pause_between_calls = pause_between_calls  # parent.pause_while_learning resolved (campaign/pausing.py)
        self.on_warning = on_warning or (lambda system_id, message: None)
        self.stop = stop or StopRequest()
        self.systems = list(systems)
        self.store = store
        self.method = method
        self.on_progress = on_progress or (lambda p: None)
        self.progress = Progress(total=len(self.systems))
        self._order = {s.system_id: i for i, s in enumerate(self.systems)}
        self._published = -float("inf")  # monotonic time of the last live summary
        self._publish_failed = False
        self.parent_calls_this_run = 0
        self.calls: cf.ThreadPoolExecutor | None = None  # parent calls, from driver threads (run() makes it)
        self.strategy: Strategy = OnlineStrategy(self) if method == "online" else ReferenceStrategy(self)

    # --- bookkeeping -------------------------------------------------------------------------
    def _report(self) -> None:
        self.on_progress(self.progress)
        self._publish()

    def _publish(self, state: str = live.RUNNING, force: bool = False) -> None:
        """Rewrite the live summary beside the store: at most every PUBLISH_INTERVAL_S while something changed, and
        every live.HEARTBEAT_S regardless (its 'written' time then says this run is alive), or now if forced.

        What `finetuna-parsl inspect` reads while this run holds the store; a summary that cannot be written
        costs one warning, never the campaign.
        """
        now = time.monotonic()
        since = now - self._published
        if not force and (since < PUBLISH_INTERVAL_S or (not self.store.has_changes() and since < live.HEARTBEAT_S)):
            return
        self._published = now
        try:
            live.publish(self.store.path, self.method, state, self.store.live_rows())
        except Exception as exc:  # noqa: BLE001 - a side channel: it must never end (or mask the end of) a run
            if not self._publish_failed:
                self._publish_failed = True
                warnings.warn(f"cannot write the live summary beside {self.store.path} ({exc}); "
                              "inspect can read the store once this run ends", stacklevel=2)

    def finish(self, system_id: str, status: str, outcome: str, error: str = "", r: _Relaxation | None = None) -> None:
        """End the system's relaxation: close its parent session (if `r` has one), flag its anomalies, store
        its status, outcome and error."""
        if r is not None:
            self.close_session(r)
        self._flag_anomalies(system_id)
        self.store.set_status(system_id, status, error=error, outcome=outcome)
        self.progress.running -= 1
        if status == FAILED:
            self.progress.failed += 1
        else:
            self.progress.done += 1
        self._report()

    def close_session(self, r: _Relaxation) -> None:
        """Stop the relaxation's parent session, if it has one (the online learner's)."""
        if r.server is not None:
            r.server.stop()
        r.server = None
        r.session = None

    def _flag_anomalies(self, system_id: str) -> None:
        """Store the OC20 anomaly flags of the system's last parent-confirmed structure against its initial one
        (learner.anomaly.detect); nothing before its first parent call."""
        positions = self.store.final_positions(system_id)
        if positions is not None:
            self.store.set_anomalies(system_id, *detect(self.store.system(system_id), positions))

    # --- the loop ----------------------------------------------------------------------------
    def run(self) -> CampaignResult:
        """Run every system not already done in the store; returns the stored summary rows.

        Raises CampaignInterrupted when `stop` is set (a signal): relaxations in flight are marked
        'interrupted' and their sessions closed; everything stored stays as it is (a new run resumes it).
        """
        queue: deque[SystemSpec] = deque()
        for system in self.systems:  # every system in the store from the start: `inspect` shows what is pending
            self.store.add_system(system)
        for system in self.systems:
            stored = self.store.has_system(system.system_id)
            done = stored and self.store.status(system.system_id) == DONE
            if stored and (done or self.strategy.resumes):  # a reference relaxation not done is redone whole
                self.progress.resumed_parent_calls += self.store.parent_calls(system.system_id)
            if stored and self.store.status(system.system_id) in (DONE, FAILED) and \
                    not self.store.has_anomalies(system.system_id):  # a store from before the flags were kept
                self._flag_anomalies(system.system_id)
            if done:
                self.progress.done += 1
            else:
                queue.append(system)
        self.progress.parent_calls = self.progress.resumed_parent_calls
        self._report()
        active: dict[cf.Future, _Relaxation] = {}
        slots = self.config.campaign.max_concurrent
        self.calls = cf.ThreadPoolExecutor(max_workers=slots, thread_name_prefix="parent-call")
        ended = "stopped"  # an exception on the way out (the store keeps everything written)
        try:
            self._loop(queue, active, slots)
            ended = "finished"
        finally:
            sessions = [r.session for r in active.values() if r.session is not None]
            for r in active.values():
                self.close_session(r)
                if self.stop.signum is not None and self.store.has_system(r.state.system.system_id):
                    self.store.set_status(r.state.system.system_id, INTERRUPTED)
            self.calls.shutdown(wait=False, cancel_futures=True)
            if self.stop.signum is not None and sessions:  # let them stop their parents (bounded)
                cf.wait(sessions, timeout=SESSION_CLOSE_WAIT_S)
            self._publish("interrupted" if self.stop.signum is not None else ended, force=True)
        ids = {s.system_id for s in self.systems}
        rows = [row for row in self.store.summary() if row.system_id in ids]
        return CampaignResult(rows=rows, parent_calls_this_run=self.parent_calls_this_run)

    def _loop(self, queue: deque[SystemSpec], active: dict[cf.Future, _Relaxation], slots: int) -> None:
        while queue or active:
            if self.stop.signum is not None:
                raise CampaignInterrupted(self.stop.signum)
            if time.monotonic() - self._healthy_at > HEALTH_INTERVAL_S:
                self._healthy_at = time.monotonic()
                problem = self.health()
                if problem is not None:
                    raise CampaignStopped(f"{problem}: the campaign stopped with the store closed and everything "
                                          "stored so far kept; run the same command to resume")
            while queue and len(active) < slots:
                system = queue.popleft()
                r = self.strategy.start(system)
                if r is None:
                    continue
                self.progress.running += 1
                active[r.future] = r
                self._report()
            if not active:
                continue
            finished, _ = cf.wait(list(active), timeout=POLL_S, return_when=cf.FIRST_COMPLETED)
            # in the systems' order, not completion order (a set's): the store is written the same way every run
            for future in sorted(finished, key=lambda f: self._order[active[f].state.system.system_id]):
                r = active.pop(future)
                try:
                    alive = self.strategy.advance(r)
                except BaseException:  # the store stopped the run (a full disk): no session left waiting on us
                    self.close_session(r)
                    raise
                if alive:
                    active[r.future] = r
            self._report()
