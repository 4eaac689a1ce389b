"""The driver <-> parent-session bridge (ASE socket protocol), alone and inside a Parsl campaign."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter

import h5py
import numpy as np
import pytest

from finetuna_parsl.campaign import run_campaign
from finetuna_parsl.config import parse_config
from finetuna_parsl.parents import ParentError, make_parent
from finetuna_parsl.parents.bridge import ParentServer, serve_session
from finetuna_parsl.parents.emt import EMTSession
from finetuna_parsl.systems import demo_systems

SYSTEM = demo_systems(2)[1]


def start_session(server: ParentServer, **options) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["served"] = serve_session(make_parent("emt", **options), SYSTEM, server.bridge_address, timeout_s=30)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("mode", ["unix", "tcp"])
def test_bridge_returns_what_the_parent_computes(mode):
    server = ParentServer(mode=mode, timeout_s=30)
    thread, out = start_session(server)
    direct = make_parent("emt")
    direct.start(SYSTEM)
    rng = np.random.default_rng(0)
    for _ in range(3):
        positions = SYSTEM.positions + rng.normal(0, 0.02, SYSTEM.positions.shape)
        point = server.call(positions, SYSTEM.cell)
        expected = direct.calculate(positions)
        assert point.energy == pytest.approx(expected.energy, abs=1e-9)
        np.testing.assert_allclose(point.forces, expected.forces, atol=1e-9)
        assert point.wall_s > 0  # the session's own timing crossed the bridge
    server.stop()
    thread.join(timeout=10)
    assert out == {"served": 3}


def test_tcp_bridge_sends_without_delay():
    """Nagle + delayed ACK cost ~90 ms a call on TCP before TCP_NODELAY; a call now takes a few ms."""
    server = ParentServer(mode="tcp", timeout_s=30)
    thread, out = start_session(server)
    server.call(SYSTEM.positions, SYSTEM.cell)
    assert server.clientsocket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    t0 = time.perf_counter()
    for _ in range(20):
        server.call(SYSTEM.positions + 0.01, SYSTEM.cell)
    assert (time.perf_counter() - t0) / 20 < 0.03  # both ends must set it: one stalled side costs ~40 ms a call
    server.stop()
    thread.join(timeout=10)
    assert out == {"served": 21}


def test_session_that_fails_is_reported_with_its_error():
    server = ParentServer(mode="unix", timeout_s=30)
    thread, out = start_session(server, fail_after_calls=1)
    server.session_alive = lambda: f"session raised: {out['error']}" if "error" in out else None
    server.call(SYSTEM.positions, SYSTEM.cell)
    with pytest.raises(ParentError, match="parent session lost: session raised: .*simulated crash after 1 calls"):
        server.call(SYSTEM.positions, SYSTEM.cell)
    server.stop()


def test_session_that_never_connects_is_not_waited_on_forever():
    server = ParentServer(mode="unix", timeout_s=2)
    with pytest.raises(ParentError, match="did not connect within parent.timeout_s = 2 s"):
        server.call(SYSTEM.positions, SYSTEM.cell)
    server.session_alive = lambda: "worker lost"
    with pytest.raises(ParentError, match="ended before connecting: worker lost"):
        server.call(SYSTEM.positions, SYSTEM.cell)
    server.stop()


class _Recording(EMTSession):
    """EMT that records what serve_session asks of it; `pause_fails` makes pause() raise like a failed scancel."""

    def __init__(self, pause_fails: bool = False) -> None:
        super().__init__()
        self.events: list[str] = []
        self.pause_fails = pause_fails

    def start(self, system):
        self.events.append("start")
        super().start(system)

    def calculate(self, positions):
        self.events.append("calculate")
        return super().calculate(positions)

    def pause(self):
        self.events.append("pause")
        if self.pause_fails:
            raise ParentError("vasp parent for x: scancel -s TSTP 1.2 failed: Invalid job id")

    def resume(self):
        self.events.append("resume")

    def close(self):
        self.events.append("close")
        super().close()


def serve_in_thread(session, server: ParentServer, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["served"] = serve_session(session, SYSTEM, server.bridge_address, timeout_s=30, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server.session_alive = lambda: f"session raised {out['error']!r}" if "error" in out else None
    return thread, out


@pytest.mark.parametrize("pausing", [True, False])
def test_session_is_paused_after_each_answer_only_when_asked(pausing):
    """Paused once each answer is sent, never before the first call; calculate() resumes (the session's contract)."""
    session = _Recording()
    server = ParentServer(mode="unix", timeout_s=30)
    thread, out = serve_in_thread(session, server, pause_between_calls=pausing)
    for i in range(2):
        server.call(SYSTEM.positions + 0.01 * i, SYSTEM.cell)
    server.stop()
    thread.join(timeout=10)
    assert out == {"served": 2}
    if pausing:
        assert session.events == ["start", "calculate", "pause", "calculate", "pause", "close"]
    else:
        assert session.events == ["start", "calculate", "calculate", "close"]


def test_a_pause_that_fails_is_a_warning_and_the_relaxation_goes_on_unpaused():
    session = _Recording(pause_fails=True)
    server = ParentServer(mode="unix", timeout_s=30)
    thread, out = serve_in_thread(session, server, pause_between_calls=True)
    first = server.call(SYSTEM.positions, SYSTEM.cell)
    second = server.call(SYSTEM.positions + 0.01, SYSTEM.cell)
    assert first.energy != second.energy
    (warning,) = server.take_warnings()
    assert "could not pause the parent between calls" in warning and "Invalid job id" in warning
    server.call(SYSTEM.positions + 0.02, SYSTEM.cell)
    server.stop()
    thread.join(timeout=10)
    assert out == {"served": 3}
    assert session.events.count("pause") == 1  # not tried again after it failed


CONFIG = """
systems: {{source: demo, count: 2}}
parent: {{kind: emt, options: {{call_log: "{log}"{extra}}}}}
surrogate: {{factory: "toy_surrogate:make"}}
learner: {{recipe: paper, query: k-steps, k: 3}}
campaign: {{output: "{output}", max_concurrent: 2, parent_retries: 2}}
"""


def stored_parent_calls(path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        return {sid: int((g["steps/kind"][()] == 1).sum()) for sid, g in f["systems"].items()}


def test_parent_sessions_live_in_parsl_workers_and_every_call_is_stored(tmp_path, toy_on_workers):
    log = tmp_path / "calls.log"
    config = parse_config(CONFIG.format(log=log, extra="", output=tmp_path / "b.h5"))
    path, result = run_campaign(config, demo_systems(2))
    lines = [line.split() for line in log.read_text().splitlines()]
    pids = {int(line[1]) for line in lines}
    assert os.getpid() not in pids  # the parent ran in worker processes, reached over the bridge
    per_system = Counter(line[0] for line in lines)
    assert per_system == stored_parent_calls(path)
    assert all(r["outcome"] == "converged" for r in result.rows)


def test_crashed_sessions_are_restarted_cold_and_the_call_retried(tmp_path, toy_on_workers):
    log = tmp_path / "calls.log"
    config = parse_config(CONFIG.format(log=log, extra=", fail_after_calls: 4", output=tmp_path / "c.h5"))
    path, result = run_campaign(config, demo_systems(2))
    assert all(r["outcome"] == "converged" for r in result.rows)
    counts = stored_parent_calls(path)
    assert all(n > 4 for n in counts.values())  # so every relaxation outlived at least one session crash
    assert Counter(line.split()[0] for line in log.read_text().splitlines()) == counts  # none lost, none doubled


def test_a_parent_that_keeps_failing_fails_its_system_and_the_campaign_goes_on(tmp_path, toy_on_workers):
    log = tmp_path / "calls.log"
    config = parse_config(CONFIG.format(log=log, extra=", fail_after_calls: 0", output=tmp_path / "d.h5"))
    _, result = run_campaign(config, demo_systems(2))
    assert [r["status"] for r in result.rows] == ["failed", "failed"]
    for row in result.rows:
        assert "parent call failed 3 times" in row["error"] and "simulated crash after 0 calls" in row["error"]
