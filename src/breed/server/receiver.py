"""The server's receiver thread: owns the ZeroMQ sockets, never trains.

It answers the control socket (:class:`~breed.server.control.ControlHandler`: work requests by late
binding, launcher pings, aborts) and turns STEP messages into samples in the buffer, through
the one data path both ingest modes share (:class:`~breed.server.datapath.DataPath`: in this thread,
or in a child process with ``ingest: process``). When the buffer cannot accept (reservoir full
of unseen samples) it stops reading the data socket: the ZeroMQ high-water marks then make the
clients' ``send`` block — backpressure, nothing dropped. Every bad message is counted and
logged, never raised (paper Appendix A; Melissa's server).

Fault tolerance: a step enters the buffer at most once per run, across client retries and server
restarts (:class:`~breed.server.recovery.StepLedger`, checkpointed); a simulation whose every rank
finished with steps missing, or whose client broke the problem (a REJECT on its data
connection), is handed out again at once; clients silent for longer than
``simulation_timeout`` (counted only while this thread reads) are reported to the launcher
(``stale_jobs`` in the pong) to be cancelled. Security: the run token on every message,
optional CURVE encryption, a hard size limit per frame (``ZMQ_MAXMSGSIZE``: libzmq drops the
sender's connection), connections that never prove the token are shed (:mod:`breed.server.guard`),
and field checks (shape, dtype, range, finite values) before anything reaches the buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from breed.netaddr import resolve_host
from breed.problems.problem import Problem
from breed.protocol import FinishMessage, StepMessage
from breed.server.control import ControlHandler
from breed.server.datapath import DataPath, StepSpec
from breed.server.guard import (
    CONTROL_PROOF_S,
    DATA_PROOF_S,
    ActiveClock,
    ConnectionGuard,
    harden,
    source_fd,
)
from breed.server.ingest import FINISH, REFUSED, IngestProcess, WorkerSpec
from breed.server.recovery import StepLedger

log = logging.getLogger("breed.server")
DATA_HWM = 64  # messages queued per client connection before the client blocks
RING_SLOTS = 512  # samples in flight between the ingest process and the buffer


@dataclass(frozen=True)
class ReceiverOptions:
    """How one rank's receiver runs (from ``launcher.*``)."""

    simulation_timeout: float = 300.0
    control: bool = True  # rank 0 answers the control socket
    max_message: int | None = None  # largest frame (null: one block plus 64 KiB)
    curve_secret: bytes | None = None
    ingest: str = "thread"
    connection_limit: int = 256


class Receiver(threading.Thread):
    """Receives time steps and control messages for one server rank."""

    def __init__(self, *, token: bytes, host: str, table: Any, buffer: Any, problem: Problem,
                 status: Callable[[], dict[str, Any]], on_sim_done: Callable[[int], None],
                 on_launcher: Callable[[dict], None],
                 options: ReceiverOptions = ReceiverOptions(),
                 ledger: StepLedger | None = None) -> None:
        super().__init__(name="breed-receiver", daemon=True)
        self.token, self.table, self.buffer, self.problem = token, table, buffer, problem
        self.status, self.on_sim_done = status, on_sim_done
        self.simulation_timeout = options.simulation_timeout
        self.spec = StepSpec.of(problem)
        self.steps = problem.steps
        # a block is at most one whole field: anything larger is refused by decode (counted)
        self.max_payload = self.spec.max_block_bytes
        self.max_message = options.max_message or (self.max_payload + (64 << 10))
        self.ledger = ledger or StepLedger(self.steps + 1)
        self.ingest_lock = threading.Lock()  # ledger + buffer + table move together (checkpoint)
        self.counts: Counter[str] = Counter()
        self.stale_jobs: set[str] = set()
        self._finished_ranks: dict[int, set[int]] = {}  # process mode: FINISH seen per rank
        self.stop_event = threading.Event()
        self.paused_s = 0.0
        self.active = ActiveClock()  # runs while the data socket is read
        if options.control:
            self.table.clock = self.active  # silence is not counted while we do not read
        self._ctx = zmq.Context.instance()
        addr = resolve_host(host)
        self.guards: dict[zmq.Socket, ConnectionGuard] = {}
        self.path = DataPath(token, self.spec, self.max_payload, self.table.known,
                             on_finish=self._on_finish, reply=self._reply_data,
                             on_refused=self._refused, counts=self.counts)
        self.ingest: IngestProcess | None = None
        self.data: zmq.Socket | None = None
        if options.ingest == "process":  # the data socket lives in a child process
            norm = buffer.normalisation  # None: raw samples (a collection run)
            single = norm.single() if norm is not None else None
            self.ingest = IngestProcess(WorkerSpec(
                token=token, bind=f"tcp://{addr}", ring="", slots=RING_SLOTS,
                field_size=problem.sample_size, spec=self.spec, max_payload=self.max_payload,
                max_message=int(self.max_message),
                center=None if single is None else single[0],
                scale=None if single is None else single[1], hwm=DATA_HWM,
                curve_secret=options.curve_secret, connection_limit=options.connection_limit))
            self.ring_normalised = single is not None
            self.data_address = self.ingest.address
        else:
            self.data = self._socket(zmq.ROUTER, options.curve_secret)
            self.data.setsockopt(zmq.RCVHWM, DATA_HWM)
            port = self.data.bind_to_random_port(f"tcp://{addr}")
            self.data_address = f"tcp://{addr}:{port}"
            self.guards[self.data] = ConnectionGuard(self.data, "data", DATA_PROOF_S,
                                                     options.connection_limit, self.active)
        self.data_addresses: list[str] = [self.data_address]
        self.control: zmq.Socket | None = None
        self.control_address = None
        self.controller: ControlHandler | None = None
        if options.control:
            self.control = self._socket(zmq.ROUTER, options.curve_secret)
            port = self.control.bind_to_random_port(f"tcp://{addr}")
            self.control_address = f"tcp://{addr}:{port}"
            self.guards[self.control] = ConnectionGuard(self.control, "control",
                                                        CONTROL_PROOF_S,
                                                        options.connection_limit)
            self.controller = ControlHandler(
                token, table, problem, self.counts, self.control.send_multipart,
                lambda: {**status(), **self.fault_status()}, on_launcher, self._assigned,
                self.path.assembler.discard,
                lambda s: self.data_addresses[s % len(self.data_addresses)])

    def _socket(self, kind: int, curve_secret: bytes | None) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, int(self.max_message))
        harden(sock)
        if curve_secret is not None:
            from breed.security import make_curve_server

            make_curve_server(sock, curve_secret)
        return sock

    @property
    def job_keys(self) -> Any:
        return self.controller.job_keys if self.controller is not None else None

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
                if self.controller is not None and self.control in events:
                    self._drain(self.control, self.controller.handle, limit=64)
                if self.data is not None and self.data in events:
                    self._drain(self.data, self._on_data, limit=256)
                now = time.monotonic()
                if now - last_expire > 1.0:
                    last_expire = now
                    for guard in self.guards.values():
                        guard.sweep()
                    if self.controller is not None:
                        self._expire()
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

    def _expire(self) -> None:
        if self.ingest is not None:
            self.ingest.poll_counts()
            self.merge_worker_counts()
        for sim_id in self.table.expire(self.simulation_timeout):
            self.counts["sims_timed_out"] += 1
            job = self.table.job_of(sim_id)
            if job is not None:
                self.stale_jobs.add(job)
            log.warning("simulation %d (job %s) silent for more than %g s; handed out again "
                        "or given up", sim_id, job, self.simulation_timeout)

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

    # -- data (thread mode) -------------------------------------------------------------
    def _on_data(self, frames: list[bytes]) -> bool:
        """Handle one data message (``[identity, *message]``); True if it had the token."""
        msg = self.path.decode(frames[0], frames[1:])
        if isinstance(msg, FinishMessage):
            self._on_finish(msg)
        elif isinstance(msg, StepMessage):
            with self.ingest_lock:
                self._ingest(frames[0], msg)
        return self.path.authentic

    def _ingest(self, ident: bytes, msg: StepMessage) -> None:
        sim_id = msg.sim_id
        if self.ledger.has(sim_id, msg.step):  # a retried client re-sending: keep the first
            self.counts["duplicate_steps"] += 1
            self.table.on_step(sim_id)
            return
        out = self.path.assemble(ident, msg)
        self.table.on_step(sim_id)
        if out is None:
            return
        _, step, values = out
        # the buffer normalises while copying into its float32 slot: no intermediate copy
        self.buffer.put(self.table.params_of(sim_id), step, values, sim_id)
        self.ledger.add(sim_id, step)
        self.counts["samples"] += 1
        if self.ledger.count(sim_id) == self.steps + 1 and self.table.complete(sim_id):
            self.on_sim_done(sim_id)

    def _reply_data(self, ident: bytes, frames: list[bytes]) -> None:
        assert self.data is not None
        try:
            self.data.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone, or its queue is full: it learns at its next call

    def _refused(self, sim_id: int, reason: str) -> None:
        """The client broke the problem: its simulation is handed out again now."""
        self.counts["refused_sims"] += 1
        fail = getattr(self.table, "fail", None)  # rank r > 0: rank 0's timeout retries it
        if fail is not None and self.table.known(sim_id):
            outcome = fail(sim_id, f"client refused: {reason}")
            log.warning("simulation %d: client refused (%s) -> %s", sim_id, reason, outcome)

    def _assigned(self, sim_id: int) -> None:
        self.path.assigned(sim_id)
        if self.ingest is not None:
            self.ingest.assign(sim_id)
            self._finished_ranks.pop(sim_id, None)

    # -- data (process mode) ------------------------------------------------------------
    def _drain_ring(self, limit: int = RING_SLOTS) -> int:
        """Move samples the ingest process finished from its ring into the buffer, in order
        and in bulk; stop where the buffer is full (they wait in the ring, the worker stops
        reading, the clients block). Returns the records consumed."""
        ring = self.ingest.ring
        meta, fields = ring.peek(limit)
        if len(meta) == 0:
            return 0
        sims, steps = meta[:, 0].astype(np.int64), meta[:, 1].astype(np.int64)
        marks = np.flatnonzero(meta[:, 1] < 0)  # FINISH and REFUSED records
        consumed, start = 0, 0
        with self.ingest_lock:
            for end in [*marks.tolist(), len(meta)]:
                stored = self._store_run(sims[start:end], steps[start:end], fields[start:end])
                consumed += stored
                if stored < end - start:
                    break
                if end < len(meta):  # a mark, after all the steps sent before it
                    sim_id = int(sims[end])
                    if meta[end, 1] == FINISH:
                        rank, nranks, sent = (int(v) for v in meta[end, 2:5])
                        self._finish_checked(FinishMessage(sim_id, rank, nranks, sent))
                    elif meta[end, 1] == REFUSED:
                        self._refused(sim_id, "refused by the ingest process")
                    consumed += 1
                start = end + 1
        ring.release(consumed)
        return consumed

    def _store_run(self, sims: np.ndarray, steps: np.ndarray, fields: np.ndarray) -> int:
        """Store a run of sample records; returns how many were consumed (stored or dropped)."""
        known = np.array([self.table.known(int(s)) for s in sims], dtype=bool)
        keep = known & ~np.array([self.ledger.has(int(s), int(t))
                                  for s, t in zip(sims, steps, strict=True)], dtype=bool)
        idx = np.flatnonzero(keep)
        params = {int(s): self.table.params_of(int(s)) for s in np.unique(sims[idx])}
        stored = self.buffer.offer_many(
            np.array([params[int(s)] for s in sims[idx]]).reshape(len(idx), -1), steps[idx],
            fields[idx], sims[idx], normalised=self.ring_normalised) if len(idx) else 0
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
        if have == self.steps + 1 or len(ranks) < msg.nranks:
            return
        self._incomplete(msg.sim_id, have)

    # -- FINISH (both modes) ------------------------------------------------------------
    def _on_finish(self, msg: FinishMessage) -> None:
        """Every rank finished: a simulation still missing steps (lost in a dead server's queue,
        or rejected) is handed out again now rather than after ``simulation_timeout``."""
        if not self.table.known(msg.sim_id):
            self.path.reject(f"FINISH for unknown simulation {msg.sim_id}", "unknown_sim")
            return
        with self.ingest_lock:
            have = self.ledger.count(msg.sim_id)
            if have == self.steps + 1:  # complete (or a retry's FINISH, its steps dropped)
                self.counts["finish"] += 1
                return
            try:
                every_rank = self.path.assembler.finish(msg)
            except ValueError as exc:  # ProtocolError: an inconsistent rank count
                self.path.reject(f"inconsistent FINISH: {exc}", "malformed")
                return
            self.counts["finish"] += 1
            if every_rank:
                self._incomplete(msg.sim_id, have)
                self.path.assembler.discard(msg.sim_id)

    def _incomplete(self, sim_id: int, have: int) -> None:
        fail = getattr(self.table, "fail", None)  # rank r > 0: rank 0's timeout retries it
        if fail is None:
            return
        outcome = fail(sim_id, f"client finished with {self.steps + 1 - have} steps missing")
        self.counts["incomplete_sims"] += 1
        log.warning("simulation %d finished with %d of %d steps -> %s", sim_id, have,
                    self.steps + 1, outcome)

    # -- status -------------------------------------------------------------------------
    def fault_status(self) -> dict[str, Any]:
        """Pong fields for the launcher: jobs to cancel, and per in-flight simulation its job
        and the steps received (operators, fault-injection tests)."""
        with self.ingest_lock:
            steps = {str(s): [self.table.job_of(s), self.ledger.count(s)]
                     for s in self.table.in_flight_ids()}
        return {"stale_jobs": sorted(self.stale_jobs), "in_flight_steps": steps,
                "unique_steps": self.ledger.total()}
