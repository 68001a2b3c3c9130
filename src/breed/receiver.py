"""The server's receiver thread: owns the ZeroMQ sockets, never trains.

It answers work requests (late binding through :class:`~breed.simtable.SimTable`), launcher
pings, and turns STEP messages into complete fields in the buffer. When the buffer cannot
accept (reservoir full of unseen samples) it stops reading the data socket: the ZeroMQ
high-water marks then make the clients' ``send`` block — backpressure, nothing dropped.
Every bad message is counted and logged, never raised (paper Appendix A; Melissa's server).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from breed.assembly import Assembler
from breed.protocol import (
    AuthError,
    ControlMessage,
    FinishMessage,
    Kind,
    ProtocolError,
    StepMessage,
    decode,
    encode_control,
)
from breed.simtable import SimTable

log = logging.getLogger("breed.server")
DATA_HWM = 64  # messages queued per client connection before the client blocks


def resolve_host(host: str) -> str:
    """An interface name (``eth0``, ``ib0``) or host name -> an address to bind; never guessed."""
    try:
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", host.encode()[:15]))
            return socket.inet_ntoa(packed[20:24])
    except OSError:
        pass
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise ValueError(f"launcher.host: cannot resolve {host!r} to an address") from exc


class Receiver(threading.Thread):
    """Receives time steps and control messages for one server rank."""

    def __init__(self, *, token: bytes, host: str, table: SimTable, buffer: Any,
                 solver: dict[str, Any], status: Callable[[], dict[str, Any]],
                 on_sim_done: Callable[[int], None], on_launcher: Callable[[dict], None],
                 simulation_timeout: float, control: bool = True,
                 max_payload: int = 64 << 20) -> None:
        super().__init__(name="breed-receiver", daemon=True)
        self.token = token
        self.table = table
        self.buffer = buffer
        self.solver = solver
        self.steps = int(solver["steps"])
        self.grid = int(solver["grid"])
        self.status = status
        self.on_sim_done = on_sim_done
        self.on_launcher = on_launcher
        self.simulation_timeout = simulation_timeout
        self.max_payload = max_payload
        self.assembler = Assembler()
        self.counts: Counter[str] = Counter()
        self.steps_done: dict[int, int] = {}
        self.stop_event = threading.Event()
        self.paused_s = 0.0
        self._ctx = zmq.Context.instance()
        addr = resolve_host(host)
        self.data = self._ctx.socket(zmq.PULL)
        self.data.setsockopt(zmq.RCVHWM, DATA_HWM)
        self.data.setsockopt(zmq.LINGER, 0)
        port = self.data.bind_to_random_port(f"tcp://{addr}")
        self.data_address = f"tcp://{addr}:{port}"
        self.control = None
        self.control_address = None
        if control:
            self.control = self._ctx.socket(zmq.ROUTER)
            self.control.setsockopt(zmq.LINGER, 0)
            port = self.control.bind_to_random_port(f"tcp://{addr}")
            self.control_address = f"tcp://{addr}:{port}"
        self.data_addresses: list[str] = [self.data_address]

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> None:
        poller_all, poller_ctl = zmq.Poller(), zmq.Poller()
        for p in (poller_all, poller_ctl):
            if self.control is not None:
                p.register(self.control, zmq.POLLIN)
        poller_all.register(self.data, zmq.POLLIN)
        last_expire = time.monotonic()
        try:
            while not self.stop_event.is_set():
                accepting = self.buffer.can_accept()
                t0 = time.monotonic()
                events = dict((poller_all if accepting else poller_ctl).poll(100))
                if not accepting:
                    self.paused_s += time.monotonic() - t0
                if self.control is not None and self.control in events:
                    self._drain(self.control, self._on_control, limit=64)
                if self.data in events:
                    self._drain(self.data, self._on_data, limit=256)
                now = time.monotonic()
                if self.control is not None and now - last_expire > 1.0:
                    last_expire = now
                    for sim_id in self.table.expire(self.simulation_timeout):
                        self.counts["sims_timed_out"] += 1
                        log.warning("simulation %d timed out; handed out again or lost", sim_id)
        finally:
            self.data.close(0)
            if self.control is not None:
                self.control.close(0)

    def _drain(self, sock: zmq.Socket, handler: Callable[[list], None], limit: int) -> None:
        for _ in range(limit):
            if sock is self.data and not self.buffer.can_accept():
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            handler(frames)

    # -- data ---------------------------------------------------------------------------
    def _on_data(self, frames: list[bytes]) -> None:
        try:
            msg = decode(frames, self.token, max_payload=self.max_payload)
        except AuthError:
            self._reject("data message with a wrong or missing token", "rejected_token")
            return
        except ProtocolError as exc:
            self._reject(f"malformed data message: {exc}", "malformed")
            return
        if isinstance(msg, FinishMessage):
            self.counts["finish"] += 1
            return
        if not isinstance(msg, StepMessage):
            self._reject(f"{type(msg).__name__} on the data socket", "malformed")
            return
        problem = self._check_step(msg)
        if problem:
            self._reject(problem[0], problem[1])
            return
        try:
            out = self.assembler.add(msg)
        except ProtocolError as exc:
            self._reject(f"inconsistent block: {exc}", "malformed")
            return
        self.table.on_step(msg.sim_id)
        if out is None:
            return
        sim_id, step, field = out
        self.buffer.put(self.table.params_of(sim_id), step, field.astype(np.float32).ravel(),
                        sim_id)
        self.counts["samples"] += 1
        done = self.steps_done.get(sim_id, 0) + 1
        self.steps_done[sim_id] = done
        if done == self.steps + 1 and self.table.complete(sim_id):
            self.on_sim_done(sim_id)

    def _check_step(self, msg: StepMessage) -> tuple[str, str] | None:
        if not self.table.known(msg.sim_id):
            return f"step for unknown simulation {msg.sim_id}", "unknown_sim"
        if not 0 <= msg.step <= self.steps:
            return f"step {msg.step} outside 0..{self.steps}", "bad_step"
        if msg.global_rows != self.grid or msg.block.shape[1] != self.grid:
            return (f"field {msg.global_rows}x{msg.block.shape[1]}, run has "
                    f"{self.grid}x{self.grid}"), "bad_shape"
        if not np.isfinite(msg.block).all():
            return f"non-finite values in sim {msg.sim_id} step {msg.step}", "non_finite"
        return None

    def _reject(self, text: str, counter: str) -> None:
        self.counts[counter] += 1
        n = self.counts[counter]
        if n <= 5 or n % 1000 == 0:  # rate-limited: a flood must not fill the disk
            log.warning("rejected (%s #%d): %s", counter, n, text)

    # -- control ------------------------------------------------------------------------
    def _on_control(self, frames: list[bytes]) -> None:
        if len(frames) < 3 or frames[1] != b"":
            self._reject("control message without a REQ envelope", "malformed")
            return
        ident, body = frames[0], frames[2:]
        try:
            msg = decode(body, self.token)
        except AuthError:
            self._reject("control message with a wrong or missing token", "rejected_token")
            self._reply(ident, Kind.REJECT, {"reason": "wrong run token"})
            return
        except ProtocolError as exc:
            self._reject(f"malformed control message: {exc}", "malformed")
            self._reply(ident, Kind.REJECT, {"reason": f"malformed message: {exc}"})
            return
        if not isinstance(msg, ControlMessage):
            self._reply(ident, Kind.REJECT, {"reason": "data message on the control socket"})
            return
        if msg.kind is Kind.REQUEST:
            self._on_request(ident, msg.body)
        elif msg.kind is Kind.PING:
            self.on_launcher(msg.body)
            self._reply(ident, Kind.PONG, self.status())
        elif msg.kind is Kind.ABORT:
            sim_id = msg.body.get("sim_id")
            if isinstance(sim_id, int) and self.table.known(sim_id):
                outcome = self.table.fail(sim_id, f"client abort: {msg.body.get('reason', '')}")
                self.assembler.discard(sim_id)
                log.warning("simulation %d aborted by its client -> %s", sim_id, outcome)
            self._reply(ident, Kind.PONG, {})
        else:
            self._reply(ident, Kind.REJECT, {"reason": f"unexpected {msg.kind.name}"})

    def _on_request(self, ident: bytes, body: dict[str, Any]) -> None:
        job_id = body.get("job_id")
        job_id = str(job_id) if job_id is not None else None
        got = self.table.request(job_id, str(body.get("client", "?")))
        if got == "stop":
            self._reply(ident, Kind.STOP, {})
        elif got == "wait":
            self._reply(ident, Kind.WAIT, {"retry_after": 0.5})
        else:
            self.counts["assigned"] += 1
            self._reply(ident, Kind.ASSIGN, {
                "sim_id": got.sim_id, "params": got.params, "attempt": got.attempts,
                "data": self.data_addresses[got.sim_id % len(self.data_addresses)],
                "solver": self.solver})

    def _reply(self, ident: bytes, kind: Kind, body: dict[str, Any]) -> None:
        assert self.control is not None
        self.control.send_multipart([ident, b"", *encode_control(kind, self.token, body)])
