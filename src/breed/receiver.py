"""The server's receiver thread: owns the ZeroMQ sockets, never trains.

It answers work requests (late binding through :class:`~breed.simtable.SimTable`), launcher
pings, and turns STEP messages into complete fields in the buffer. When the buffer cannot
accept (reservoir full of unseen samples) it stops reading the data socket: the ZeroMQ
high-water marks then make the clients' ``send`` block — backpressure, nothing dropped.
Every bad message is counted and logged, never raised (paper Appendix A; Melissa's server).

Fault tolerance: a step enters the buffer at most once per run, across client retries and server
restarts (:class:`~breed.recovery.StepLedger`, checkpointed); a simulation whose every rank
finished with steps missing is handed out again at once; clients silent for longer than
``simulation_timeout`` are reported to the launcher (``stale_jobs`` in the pong) to be cancelled.
Security: the run token on every message, optional CURVE encryption, a hard size limit per frame
(``ZMQ_MAXMSGSIZE``: libzmq drops the sender's connection) and field checks (shape, dtype, range,
finite values) before anything reaches the buffer.
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
from breed.datapath import check_step
from breed.guard import (
    CONTROL_PROOF_S,
    DATA_PROOF_S,
    ActiveClock,
    ConnectionGuard,
    harden,
    source_fd,
)
from breed.ingest import FINISH, IngestProcess, WorkerSpec
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
from breed.recovery import StepLedger
from breed.security import JobKeys
from breed.simtable import SimTable

log = logging.getLogger("breed.server")
DATA_HWM = 64  # messages queued per client connection before the client blocks
RING_SLOTS = 512  # samples in flight between the ingest process and the buffer


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
                 max_payload: int | None = None, max_message: int | None = None,
                 curve_secret: bytes | None = None, bounds: tuple[float, float] | None = None,
                 ledger: StepLedger | None = None, ingest: str = "thread",
                 connection_limit: int = 256) -> None:
        super().__init__(name="breed-receiver", daemon=True)
        self.token = token
        self.table = table
        self.buffer = buffer
        self.solver = solver
        self.steps = int(solver["steps"])
        self.grid = int(solver["grid"])
        self.dtype = np.dtype(solver.get("dtype", "float64"))
        self.status = status
        self.on_sim_done = on_sim_done
        self.on_launcher = on_launcher
        self.simulation_timeout = simulation_timeout
        # a block is at most one whole field: anything larger is refused by decode (counted)
        self.max_payload = max_payload or self.grid * self.grid * self.dtype.itemsize
        self.max_message = max_message or (self.max_payload + (64 << 10))
        self.bounds = bounds
        self.assembler = Assembler()
        self.ledger = ledger or StepLedger(self.steps + 1)
        self.ingest_lock = threading.Lock()  # ledger + buffer + table move together (checkpoint)
        self.counts: Counter[str] = Counter()
        self.stale_jobs: set[str] = set()
        self._finished_ranks: dict[int, set[int]] = {}  # process mode: FINISH seen per rank
        self.stop_event = threading.Event()
        self.paused_s = 0.0
        self.active = ActiveClock()  # runs while the data socket is read
        if control:
            self.table.clock = self.active  # silence is not counted while we do not read
        self._ctx = zmq.Context.instance()
        addr = resolve_host(host)
        self.guards: dict[zmq.Socket, ConnectionGuard] = {}
        self.job_keys = JobKeys()  # the launcher's jobs, bound to their keys
        self.ingest: IngestProcess | None = None
        if ingest == "process":  # the data socket lives in a child process (breed.ingest)
            self.data = None
            self.ingest = IngestProcess(WorkerSpec(
                token=token, bind=f"tcp://{addr}", ring="", slots=RING_SLOTS,
                field_size=self.grid * self.grid, steps=self.steps, grid=self.grid,
                max_payload=self.max_payload, max_message=int(self.max_message),
                center=float(buffer.normalisation.c), scale=float(buffer.normalisation.h),
                bounds=bounds, hwm=DATA_HWM, dtype=self.dtype.str, curve_secret=curve_secret,
                connection_limit=connection_limit))
            self.data_address = self.ingest.address
        else:
            self.data = self._socket(zmq.PULL, curve_secret)
            self.data.setsockopt(zmq.RCVHWM, DATA_HWM)
            port = self.data.bind_to_random_port(f"tcp://{addr}")
            self.data_address = f"tcp://{addr}:{port}"
            self.guards[self.data] = ConnectionGuard(self.data, "data", DATA_PROOF_S,
                                                     connection_limit, clock=self.active)
        self.control = None
        self.control_address = None
        if control:
            self.control = self._socket(zmq.ROUTER, curve_secret)
            port = self.control.bind_to_random_port(f"tcp://{addr}")
            self.control_address = f"tcp://{addr}:{port}"
            self.guards[self.control] = ConnectionGuard(self.control, "control",
                                                        CONTROL_PROOF_S, connection_limit)
        self.data_addresses: list[str] = [self.data_address]

    def _socket(self, kind: int, curve_secret: bytes | None) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, int(self.max_message))
        harden(sock)
        if curve_secret is not None:
            from breed.security import make_curve_server

            make_curve_server(sock, curve_secret)
        return sock

    # -- loop ---------------------------------------------------------------------------
    def run(self) -> None:
        poller_all, poller_ctl = zmq.Poller(), zmq.Poller()
        for p in (poller_all, poller_ctl):
            if self.control is not None:
                p.register(self.control, zmq.POLLIN)
        if self.data is not None:
            poller_all.register(self.data, zmq.POLLIN)
        monitors = {g.monitor: g for g in self.guards.values()}
        for p in (poller_all, poller_ctl):
            for mon in monitors:
                p.register(mon, zmq.POLLIN)
        last_expire = time.monotonic()
        try:
            while not self.stop_event.is_set():
                accepting = self.buffer.can_accept()
                self.active.run(accepting)
                t0 = time.monotonic()
                if self.ingest is not None:  # samples wait in the ring: poll briefly
                    moved = self._drain_ring() if accepting else 0
                    events = dict(poller_ctl.poll(0 if moved else 2))
                else:
                    events = dict((poller_all if accepting else poller_ctl).poll(100))
                if not accepting:
                    self.paused_s += time.monotonic() - t0
                for mon, guard in monitors.items():
                    if mon in events:
                        guard.events()
                if self.control is not None and self.control in events:
                    self._drain(self.control, self._on_control, limit=64)
                if self.data is not None and self.data in events:
                    self._drain(self.data, self._on_data, limit=256)
                now = time.monotonic()
                if now - last_expire > 1.0:
                    last_expire = now
                    for guard in self.guards.values():
                        guard.sweep()
                if self.control is not None and last_expire == now:
                    if self.ingest is not None:
                        self.ingest.poll_counts()
                        self.merge_worker_counts()
                    for sim_id in self.table.expire(self.simulation_timeout):
                        self.counts["sims_timed_out"] += 1
                        job = self.table.job_of(sim_id)
                        if job is not None:
                            self.stale_jobs.add(job)
                        log.warning("simulation %d (job %s) silent for more than %g s; handed "
                                    "out again or given up", sim_id, job,
                                    self.simulation_timeout)
        finally:
            for guard in self.guards.values():
                guard.close()
            if self.data is not None:
                self.data.close(0)
            if self.ingest is not None:
                self.ingest.close()
                self.merge_worker_counts()
            if self.control is not None:
                self.control.close(0)

    def _drain(self, sock: zmq.Socket, handler: Callable[[list], bool], limit: int) -> None:
        guard = self.guards.get(sock)
        for _ in range(limit):
            if sock is self.data and not self.buffer.can_accept():
                return
            # a connection awaits its first authentic message: read its descriptor too
            watch = guard is not None and guard.pending
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=not watch)
            except zmq.Again:
                return
            fd = None
            if watch:
                fd = source_fd(frames[-1])
                frames = [f.bytes for f in frames]
            try:
                if handler(frames) and fd is not None:
                    guard.prove(fd)
            except Exception:  # a bug must cost one message, not the receiver thread
                self.counts["internal_error"] += 1
                if self.counts["internal_error"] <= 5:
                    log.exception("receiver: message dropped after an internal error")

    # -- data ---------------------------------------------------------------------------
    def _on_data(self, frames: list[bytes]) -> bool:
        """Handle one data message; True if it carried the run token."""
        if len(frames) > 2 and len(frames[2]) > self.max_payload:
            self._reject(f"frame of {len(frames[2])} bytes, the most a field takes is "
                         f"{self.max_payload}", "oversized")
            return False
        try:
            msg = decode(frames, self.token, max_payload=self.max_payload)
        except AuthError:
            self._reject("data message with a wrong or missing token", "rejected_token")
            return False
        except ProtocolError as exc:
            self._reject(f"malformed data message: {exc}", "malformed")
            return False
        self._on_data_message(msg)
        return True

    def _on_data_message(self, msg: Any) -> None:
        if isinstance(msg, FinishMessage):
            self._on_finish(msg)
            return
        if not isinstance(msg, StepMessage):
            self._reject(f"{type(msg).__name__} on the data socket", "malformed")
            return
        problem = self._check_step(msg)
        if problem:
            self._reject(problem[0], problem[1])
            return
        with self.ingest_lock:
            self._ingest(msg)

    def _ingest(self, msg: StepMessage) -> None:
        sim_id = msg.sim_id
        if self.ledger.has(sim_id, msg.step):  # a retried client re-sending: keep the first
            self.counts["duplicate_steps"] += 1
            self.table.on_step(sim_id)
            return
        try:
            out = self.assembler.add(msg)
        except ProtocolError as exc:
            self._reject(f"inconsistent block: {exc}", "malformed")
            return
        self.counts["blocks"] += 1
        self.table.on_step(sim_id)
        if out is None:
            return
        _, step, field = out
        # the buffer normalises while copying into its float32 slot: no intermediate copy
        self.buffer.put(self.table.params_of(sim_id), step, field, sim_id)
        self.ledger.add(sim_id, step)
        self.counts["samples"] += 1
        if self.ledger.count(sim_id) == self.steps + 1 and self.table.complete(sim_id):
            self.on_sim_done(sim_id)

    def _drain_ring(self, limit: int = RING_SLOTS) -> int:
        """Move samples the ingest process finished from its ring into the buffer, in order
        and in bulk; stop where the buffer is full (they wait in the ring, the worker stops
        reading, the clients block). Returns the records consumed."""
        ring = self.ingest.ring
        meta, fields = ring.peek(limit)
        if len(meta) == 0:
            return 0
        sims, steps = meta[:, 0].astype(np.int64), meta[:, 1].astype(np.int64)
        marks = np.flatnonzero(meta[:, 1] == FINISH)
        consumed, start = 0, 0
        with self.ingest_lock:
            for end in [*marks.tolist(), len(meta)]:
                stored = self._store_run(sims[start:end], steps[start:end], meta[start:end, 2:],
                                         fields[start:end])
                consumed += stored
                if stored < end - start:
                    break
                if end < len(meta):  # a FINISH record, after all the steps sent before it
                    rank, nranks, sent = (int(v) for v in meta[end, 2:5])
                    self._finish_checked(FinishMessage(int(sims[end]), rank, nranks, sent))
                    consumed += 1
                start = end + 1
        ring.release(consumed)
        return consumed

    def _store_run(self, sims: np.ndarray, steps: np.ndarray, params: np.ndarray,
                   fields: np.ndarray) -> int:
        """Store a run of sample records; returns how many were consumed (stored or dropped)."""
        known = np.array([self.table.known(int(s)) for s in sims], dtype=bool)
        keep = known & ~np.array([self.ledger.has(int(s), int(t))
                                  for s, t in zip(sims, steps, strict=True)], dtype=bool)
        idx = np.flatnonzero(keep)
        stored = self.buffer.offer_many(params[idx], steps[idx], fields[idx], sims[idx],
                                        normalised=True) if len(idx) else 0
        # the buffer is full at the first kept record it refused: the rest stays in the ring
        consumed = int(idx[stored]) if stored < len(idx) else len(sims)
        self.counts["unknown_sim"] += int((~known[:consumed]).sum())  # given up meanwhile
        self.counts["duplicate_steps"] += int((known & ~keep)[:consumed].sum())
        for k in idx[:stored]:
            sim_id = int(sims[k])
            self.ledger.add(sim_id, int(steps[k]))
            self.counts["samples"] += 1
        for sim_id in {int(s) for s in sims[:consumed]}:
            if self.table.known(sim_id):
                self.table.on_step(sim_id)
                if self.ledger.count(sim_id) == self.steps + 1 and self.table.complete(sim_id):
                    self.on_sim_done(sim_id)
        return consumed

    def merge_worker_counts(self) -> None:
        """The worker's counters (cumulative) under the same names the thread mode uses."""
        for key, value in self.ingest.counts.items():
            if key != "finish":  # the server counts FINISH when it takes the record
                self.counts[key] = value

    def _finish_checked(self, msg: FinishMessage) -> None:
        """Process mode: a FINISH record from the ring, after every step the rank sent before
        it was stored (the ingest lock is held). Same policy as :meth:`_on_finish`."""
        if not self.table.known(msg.sim_id):
            return
        self.counts["finish"] += 1
        have = self.ledger.count(msg.sim_id)
        ranks = self._finished_ranks.setdefault(msg.sim_id, set())
        ranks.add(msg.rank)
        fail = getattr(self.table, "fail", None)
        if have == self.steps + 1 or len(ranks) < msg.nranks or fail is None:
            return
        outcome = fail(msg.sim_id, f"client finished with {self.steps + 1 - have} steps missing")
        self.counts["incomplete_sims"] += 1
        log.warning("simulation %d finished with %d of %d steps -> %s", msg.sim_id, have,
                    self.steps + 1, outcome)

    def _on_finish(self, msg: FinishMessage) -> None:
        """Every rank finished: a simulation still missing steps (lost in a dead server's queue,
        or rejected) is handed out again now rather than after ``simulation_timeout``."""
        if not self.table.known(msg.sim_id):
            self._reject(f"FINISH for unknown simulation {msg.sim_id}", "unknown_sim")
            return
        with self.ingest_lock:
            have = self.ledger.count(msg.sim_id)
            if have == self.steps + 1:  # complete (or a retry's FINISH, its steps dropped)
                self.counts["finish"] += 1
                return
            try:
                every_rank = self.assembler.finish(msg)
            except ProtocolError as exc:
                self._reject(f"inconsistent FINISH: {exc}", "malformed")
                return
            self.counts["finish"] += 1
            fail = getattr(self.table, "fail", None)
            if not every_rank or fail is None:  # rank r > 0: rank 0's timeout retries it
                return
            outcome = fail(msg.sim_id, f"client finished with "
                                      f"{self.steps + 1 - have} steps missing")
            self.assembler.discard(msg.sim_id)
        self.counts["incomplete_sims"] += 1
        log.warning("simulation %d finished with %d of %d steps -> %s", msg.sim_id, have,
                    self.steps + 1, outcome)

    def _check_step(self, msg: StepMessage) -> tuple[str, str] | None:
        if not self.table.known(msg.sim_id):
            return f"step for unknown simulation {msg.sim_id}", "unknown_sim"
        return check_step(msg, self.steps, self.grid, self.dtype, self.bounds)

    def _reject(self, text: str, counter: str) -> None:
        self.counts[counter] += 1
        n = self.counts[counter]
        if n <= 5 or n % 1000 == 0:  # rate-limited: a flood must not fill the disk
            log.warning("rejected (%s #%d): %s", counter, n, text)

    # -- control ------------------------------------------------------------------------
    def _on_control(self, frames: list[bytes]) -> bool:
        """Answer one control message; True if it carried the run token."""
        if len(frames) < 3 or frames[1] != b"":
            self._reject("control message without a REQ envelope", "malformed")
            return False
        ident, body = frames[0], frames[2:]
        try:
            msg = decode(body, self.token)
        except AuthError:
            self._reject("control message with a wrong or missing token", "rejected_token")
            self._reply(ident, Kind.REJECT, {"reason": "wrong run token"})
            return False
        except ProtocolError as exc:
            self._reject(f"malformed control message: {exc}", "malformed")
            self._reply(ident, Kind.REJECT, {"reason": f"malformed message: {exc}"})
            return False
        if not isinstance(msg, ControlMessage):
            self._reject("data message on the control socket", "malformed")
            self._reply(ident, Kind.REJECT, {"reason": "data message on the control socket"})
            return True
        if msg.kind in (Kind.REQUEST, Kind.ABORT):
            refused = self.job_keys.refusal(msg.body.get("job_id"), msg.body.get("job_key"))
            if refused:
                self._reject(f"{msg.kind.name} refused: {refused}", "bad_job_key")
                self._reply(ident, Kind.REJECT, {"reason": refused})
                return True
        if msg.kind is Kind.REQUEST:
            self._on_request(ident, msg.body)
        elif msg.kind is Kind.PING:
            self.job_keys.register(msg.body.get("job_keys"))
            self.on_launcher(msg.body)
            self._reply(ident, Kind.PONG, {**self.status(), **self.fault_status()})
        elif msg.kind is Kind.ABORT:
            self._on_abort(ident, msg.body)
        else:
            self._reply(ident, Kind.REJECT, {"reason": f"unexpected {msg.kind.name}"})
        return True

    def _on_abort(self, ident: bytes, body: dict[str, Any]) -> None:
        """A client gives up its simulation: handed out again now. Only the job that holds
        the simulation may abort it (when jobs are bound to keys)."""
        sim_id = body.get("sim_id")
        if isinstance(sim_id, int) and self.table.known(sim_id):
            holder = self.table.job_of(sim_id)
            if self.job_keys.enforcing and holder is not None and \
                    str(body.get("job_id")) != holder:
                self._reject(f"ABORT of simulation {sim_id} by job {body.get('job_id')!r}, "
                             f"held by {holder}", "bad_job_key")
                self._reply(ident, Kind.REJECT, {"reason": f"simulation {sim_id} is not "
                                                           "this job's"})
                return
            outcome = self.table.fail(sim_id, f"client abort: {body.get('reason', '')}")
            self.assembler.discard(sim_id)
            log.warning("simulation %d aborted by its client -> %s", sim_id, outcome)
        self._reply(ident, Kind.PONG, {})

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
            self.assembler.discard(got.sim_id)  # new attempt: fresh layout, steps kept
            if self.ingest is not None:  # before the reply: the worker must know the sim
                self.ingest.assign(got.sim_id, got.params)
                self._finished_ranks.pop(got.sim_id, None)
            self._reply(ident, Kind.ASSIGN, {
                "sim_id": got.sim_id, "params": got.params, "attempt": got.attempts,
                "data": self.data_addresses[got.sim_id % len(self.data_addresses)],
                "solver": self.solver})

    def fault_status(self) -> dict[str, Any]:
        """Pong fields for the launcher: jobs to cancel, and per in-flight simulation its job
        and the steps received (operators, fault-injection tests)."""
        with self.ingest_lock:
            steps = {str(s): [self.table.job_of(s), self.ledger.count(s)]
                     for s in self.table.in_flight_ids()}
        return {"stale_jobs": sorted(self.stale_jobs), "in_flight_steps": steps,
                "unique_steps": self.ledger.total()}

    def _reply(self, ident: bytes, kind: Kind, body: dict[str, Any]) -> None:
        assert self.control is not None
        self.control.send_multipart([ident, b"", *encode_control(kind, self.token, body)])
