"""Driver <-> parent-session bridge over ASE's socket calculator protocol (i-PI, ase.calculators.socketio).

The driver serves (ParentServer, one per relaxation); the long-lived session app connects back
(serve_session) and answers position messages with energy and forces until told to exit. SCF
cycles, wall time and the warnings the parent raised travel in the protocol's extra-bytes field as JSON. Every wait has a timeout,
and a session that dies is noticed (EOF, or its Parsl future finishing) instead of hanging.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ase.calculators.socketio import IPIProtocol, SocketClosed, SocketServer

from ..records import SOURCE_PARENT, Evaluation, SystemSpec
from .base import ParentError, ParentSession
from .journal import CallJournal, non_finite


@dataclass(frozen=True)
class BridgeAddress:
    """Where a session connects back: a UNIX socket name (same machine) or host:port (TCP)."""

    unixsocket: str | None = None
    host: str | None = None
    port: int | None = None


class ParentServer(SocketServer):
    """Driver side of one relaxation's bridge: send positions, receive the parent's answer.

    `session_alive` is polled while waiting, so a session that died before connecting (or while
    computing) raises ParentError with its error instead of blocking forever. session_ended() (call it
    when the session's task finishes, e.g. from its future's done-callback) wakes a waiting call at once.
    """

    def __init__(self, mode: str = "unix", timeout_s: float = 3600.0,
                 session_alive: Callable[[], str | None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.session_alive = session_alive or (lambda: None)
        self._ended = threading.Event()
        self.warnings: list[str] = []  # warnings the session raised, in order; the caller takes them (take_warnings)
        if mode == "unix":
            name = f"finetuna-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            super().__init__(unixsocket=name, timeout=timeout_s)
            self.bridge_address = BridgeAddress(unixsocket=name)
        elif mode == "tcp":
            super().__init__(port=0, timeout=timeout_s)
            host = os.environ.get("FINETUNA_DRIVER_ADDRESS") or socket.gethostname()
            self.bridge_address = BridgeAddress(host=host, port=self.serversocket.getsockname()[1])
        else:
            raise ValueError(f"bridge mode must be unix or tcp, got {mode!r}")

    def take_warnings(self) -> list[str]:
        """The warnings the session sent since the last take (raised on its worker: start(), calculate())."""
        taken, self.warnings = self.warnings, []
        return taken

    def session_ended(self) -> None:
        """The session's task has finished: a call waiting on it returns now instead of after timeout_s."""
        self._ended.set()
        _shutdown(self.clientsocket)

    def _accept(self) -> None:
        """Wait for the session to connect, checking five times a second that it is still alive."""
        deadline = time.monotonic() + self.timeout_s
        self.serversocket.settimeout(0.2)
        while True:
            try:
                self.clientsocket, _ = self.serversocket.accept()
                self.closelater(self.clientsocket)
                break
            except socket.timeout:
                died = self.session_alive()
                if died is None and self._ended.is_set():
                    died = self._why_lost(None)
                if died is not None:
                    raise ParentError(f"parent session ended before connecting: {died}") from None
                if time.monotonic() > deadline:
                    raise ParentError(
                        f"parent session did not connect within parent.timeout_s = {self.timeout_s:g} s: no parent "
                        "worker took it (all busy, e.g. with an earlier session still computing a hung call, or "
                        "none started)") from None
        _no_delay(self.clientsocket)
        self.clientsocket.settimeout(self.timeout_s)
        self.protocol = _CheckedProtocol(self.clientsocket)
        if self._ended.is_set():  # ended between accept() and here: do not wait on a dead session
            _shutdown(self.clientsocket)

    def call(self, positions: np.ndarray, cell: np.ndarray) -> Evaluation:
        """One parent evaluation through the bridge: positions (n, 3) A and cell (3, 3) A in, the session's
        Evaluation out (energy eV, forces (n, 3) eV/A, its SCF cycles and wall time). Raises ParentError when
        the session is lost, ends, does not answer within timeout_s, or answers NaN or inf."""
        try:
            result = self.calculate(_Geometry(np.asarray(positions, dtype=float), np.asarray(cell, dtype=float)))
        except _NonFinite as exc:  # whoever sent it: never stored, never learned from
            raise ParentError(f"parent session answered a non-finite result: {exc}") from None
        except socket.timeout:  # the session is connected and alive but silent: its parent is slow or hung
            died = self.session_alive()
            if died is not None:
                raise ParentError(f"parent session lost: {died}") from None
            raise ParentError(
                f"parent call got no answer within parent.timeout_s = {self.timeout_s:g} s (the driver's limit): the "
                "parent is still computing or hung; the session is abandoned and the call retried") from None
        except (SocketClosed, OSError, AssertionError) as exc:
            raise ParentError(f"parent session lost: {self._why_lost(exc)}") from None
        info = _decode_info(result["morebytes"])
        self.warnings.extend(str(w) for w in info.get("warnings", []))
        return Evaluation(
            positions=np.array(positions, dtype=float),
            energy=float(result["energy"]),
            forces=np.array(result["forces"], dtype=float),
            source=SOURCE_PARENT,
            scf_cycles=int(info.get("scf_cycles", 0)),
            wall_s=float(info.get("wall_s", 0.0)),
        )

    def _why_lost(self, exc: BaseException | None, grace_s: float = 5.0) -> str:
        """The session's own error if it reports one within grace_s (EOF usually arrives first)."""
        if self._closed:
            return "the driver closed the bridge"
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            died = self.session_alive()
            if died is not None:
                return died
            time.sleep(0.05)
        if exc is None:
            return "the session ended without an error"
        return f"{type(exc).__name__}: {exc}" if str(exc) else f"{type(exc).__name__} (connection closed)"

    def stop(self) -> None:
        """Tell the session to exit (it closes the parent gracefully) and release the socket."""
        try:
            if self.protocol is not None:
                self.protocol.end()
        except OSError:
            pass
        _shutdown(self.clientsocket)  # before close(): wakes a call thread still blocked on this socket
        self.close()


class _NonFinite(ValueError):
    """NaN or inf received from the session (ASE's protocol only asserts, which reads as a lost connection)."""


class _CheckedProtocol(IPIProtocol):
    """ASE's i-PI protocol, where a non-finite number received is a _NonFinite naming it, not a bare assert."""

    def recv(self, shape, dtype):
        nbytes = int(np.dtype(dtype).itemsize * np.prod(shape))
        values = np.frombuffer(self._recvall(nbytes), dtype=dtype).reshape(shape).copy()
        bad = ~np.isfinite(values)
        if bad.any():
            kinds = sorted({"NaN" if np.isnan(v) else ("+inf" if v > 0 else "-inf") for v in values[bad]})
            what = "energy" if values.size == 1 else f"{int(bad.sum())} of {values.size} force/virial components"
            raise _NonFinite(f"{'/'.join(kinds)} in its {what}")
        return values


def _shutdown(sock: socket.socket | None) -> None:
    """Shut a socket down both ways (wakes a recv() blocked on it in another thread); quiet if already gone."""
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _no_delay(sock: socket.socket) -> None:
    """Send small messages at once on TCP (the protocol's header/data writes otherwise wait ~40 ms on delayed ACKs)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass
class _Geometry:
    positions: np.ndarray
    cell: np.ndarray


def _messages(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught]


def _decode_info(morebytes: np.ndarray) -> dict:
    raw = bytes(np.asarray(morebytes, dtype=np.int8).tobytes()).rstrip(b"\x00")
    if not raw:
        return {}
    try:
        return json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}


def _check_finite(session: ParentSession, result: Evaluation) -> None:
    """ParentError (a run-time failure: retried on a fresh session) when the parent's answer holds NaN or inf."""
    problem = non_finite(result.energy, result.forces)
    if problem is not None:
        system = session.system.system_id if session.system is not None else "?"
        raise ParentError(f"{session.kind} parent for {system} answered a non-finite result: {problem} "
                          "(atoms on top of each other, or a broken parent); not journaled, not stored")


def _pause(session: ParentSession, pending: list[str]) -> bool:
    """session.pause(); False (do not pause again) with a warning appended to `pending` when it fails."""
    try:
        session.pause()
    except ParentError as exc:
        pending.append(f"could not pause the parent between calls ({str(exc).splitlines()[0]}); "
                       "it keeps running between calls for the rest of this relaxation")
        return False
    return True


def serve_session(
    session: ParentSession,
    system: SystemSpec,
    address: BridgeAddress,
    timeout_s: float = 86400.0,
    journal: CallJournal | None = None,
    pause_between_calls: bool = False,
) -> int:
    """Session side: connect back, start the parent, answer until told to exit; returns calls served.

    Whatever ends the session (a parent that fails to start or crashes included) closes the socket, so the
    driver learns of it at once. With a journal, every answer is written to disk before it is sent, and positions already answered
    (a call the driver lost in a crash, then re-proposed) are served from it without recomputing.
    With pause_between_calls, session.pause() follows each answer sent (VASP: its ranks stop spinning while the
    learner works on the same node); the next calculate() or close() resumes it (ParentSession's contract).
    A pause that fails (ParentError: scancel refused) costs a warning, sent with the next answer, and pausing
    for the rest of this session; the relaxation goes on.
    """
    if address.unixsocket is not None:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(f"/tmp/ipi_{address.unixsocket}")
    else:
        sock = socket.create_connection((address.host, address.port), timeout=60)
        _no_delay(sock)
    served = 0
    state = "READY"
    result = None
    pending: list[str] = []  # warnings raised here, sent to the driver with the next answer
    try:
        sock.settimeout(timeout_s)
        protocol = IPIProtocol(sock)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.start(system)
        pending += _messages(caught)
        while True:
            try:
                msg = protocol.recvmsg()
            except SocketClosed:
                break
            if msg == "EXIT":
                break
            if msg == "STATUS":
                protocol.sendmsg(state)
            elif msg == "INIT":
                protocol.recvinit()
            elif msg == "POSDATA":
                _cell, _icell, positions = protocol.recvposdata()
                result = journal.lookup(positions) if journal is not None else None
                if result is None:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        result = session.calculate(positions)
                    pending += _messages(caught)
                    _check_finite(session, result)  # before the journal: a NaN answer is never replayed
                    if journal is not None:
                        try:
                            journal.record(positions, result)
                        except OSError as exc:  # a full disk: the answer is paid for, the driver still stores it
                            pending.append(f"parent answer not journaled ({exc.strerror or exc}, {journal.directory}): "
                                           "a crash before the driver stores it would cost this call again")
                served += 1
                state = "HAVEDATA"
            elif msg == "GETFORCE":
                info = json.dumps({"scf_cycles": result.scf_cycles, "wall_s": result.wall_s,
                                   "warnings": list(dict.fromkeys(pending))}).encode()
                pending = []
                protocol.sendforce(result.energy, np.asarray(result.forces), np.zeros((3, 3)),
                                   np.frombuffer(info, dtype=np.byte))
                state = "READY"
                if pause_between_calls:
                    pause_between_calls = _pause(session, pending)
            else:
                raise ParentError(f"bridge: unexpected message {msg!r} from the driver")
    finally:
        try:
            session.close()
        finally:
            _shutdown(sock)
            sock.close()
    return served
