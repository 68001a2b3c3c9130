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
from breed.protocol import queue_messages
from breed.security import JobKeys
from breed.server.control import ControlHandler
from breed.server.datapath import Batching, DataPath, StepSpec, split_counts
from breed.server.guard import (
    CONTROL_PROOF_S,
    DATA_PROOF_S,
    ActiveClock,
    ConnectionGuard,
    harden,
    receive,
)
from breed.server.ingest import FINISH, REFUSED, IngestProcess, WorkerSpec
from breed.server.recovery import StepLedger
from breed.server.simtable import SimTable, StepTable
from breed.server.sink import Buffer, SampleSink

log = logging.getLogger("breed.server")
RING_SLOTS = 512  # samples in flight between the ingest process and the buffer (at least)


def ring_slots(batch_steps: int) -> int:
    """The ingest ring's slots: room for two whole messages (the worker reads a message only
    when all its samples fit)."""
    return max(RING_SLOTS, 2 * batch_steps)


@dataclass(frozen=True)
class ReceiverOptions:
    """How one rank's receiver runs (from ``launcher.*``)."""

    simulation_timeout: float = 300.0
    control: bool = True  # rank 0 answers the control socket
    max_message: int | None = None  # largest frame (null: one batch plus 64 KiB)
    batch_steps: int | None = None  # steps per data message (null: about 1 MiB; Batching)
    batch_linger: float = 1.0  # seconds a client may hold a step of a batch
    curve_secret: bytes | None = None
    ingest: str = "thread"
    connection_limit: int = 256


class Receiver(threading.Thread):
    """Receives time steps and control messages for one server rank."""

    def __init__(
        self,
        *,
        token: bytes,
        host: str,
        table: StepTable,
        buffer: Buffer,
        problem: Problem,
        status: Callable[[], dict[str, Any]],
        on_sim_done: Callable[[int], None],
        on_launcher: Callable[[dict], None],
        options: ReceiverOptions = ReceiverOptions(),
        ledger: StepLedger | None = None,
    ) -> None:
        super().__init__(name="breed-receiver", daemon=True)
        self.token, self.table, self.buffer, self.problem = token, table, buffer, problem
        self.status, self.on_sim_done = status, on_sim_done
        self.simulation_timeout = options.simulation_timeout
        self.spec = StepSpec.of(problem)
        self.steps = problem.steps
        # a payload is at most one batch of whole fields: larger is refused by decode (counted)
        self.batching = Batching.plan(
            self.spec, options.batch_steps, options.batch_linger, options.max_message
        )
        self.max_payload = self.batching.max_payload
        self.max_message = self.batching.max_message
        hwm = queue_messages(self.batching.steps)
        # thread mode: what a STEPS message completed that the buffer had no room for yet
        self._held: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.counts: Counter[str] = Counter()
        # the one stage after the data path, both ingest modes (ledger, buffer, table)
        self.sink = SampleSink(table, buffer, self.steps, self.counts, on_sim_done, ledger)
        self.ledger = self.sink.ledger
        self.ingest_lock = self.sink.lock  # a checkpoint's cut (breed.server.recovery)
        self._worker_counts: Counter[str] = Counter()  # process mode: merged so far
        self.stale_jobs: set[str] = set()
        self.stop_event = threading.Event()
        self.paused_s = 0.0
        self.active = ActiveClock()  # runs while the data socket is read
        if options.control:
            self.table.clock = self.active  # silence is not counted while we do not read
        self._ctx: zmq.Context = zmq.Context.instance()
        addr = resolve_host(host)
        self.guards: dict[zmq.Socket, ConnectionGuard] = {}
        self.path = DataPath(
            token,
            self.spec,
            self.max_payload,
            self.table.known,
            on_finish=lambda msg, every: self.sink.finish(msg.sim_id, every),
            reply=self._reply_data,
            on_refused=self.sink.refused,
            on_seen=self.sink.seen,
            counts=self.counts,
            batch_steps=self.batching.steps,
        )
        self.ingest: IngestProcess | None = None
        self.data: zmq.Socket | None = None
        if options.ingest == "process":  # the data socket lives in a child process
            norm = buffer.normalisation  # None: raw samples (a collection run)
            single = norm.single() if norm is not None else None
            self.ingest = IngestProcess(
                WorkerSpec(
                    token=token,
                    bind=f"tcp://{addr}",
                    ring="",
                    slots=ring_slots(self.batching.steps),
                    field_size=problem.sample_size,
                    spec=self.spec,
                    max_payload=self.max_payload,
                    max_message=int(self.max_message),
                    center=None if single is None else single[0],
                    scale=None if single is None else single[1],
                    hwm=hwm,
                    batch_steps=self.batching.steps,
                    curve_secret=options.curve_secret,
                    connection_limit=options.connection_limit,
                )
            )
            self.ring_normalised = single is not None
            self.data_address = self.ingest.address
        else:
            self.data = self._socket(zmq.ROUTER, options.curve_secret)
            self.data.setsockopt(zmq.RCVHWM, hwm)
            port = self.data.bind_to_random_port(f"tcp://{addr}")
            self.data_address = f"tcp://{addr}:{port}"
            self.guards[self.data] = ConnectionGuard(
                self.data, "data", DATA_PROOF_S, options.connection_limit, self.active
            )
        self.data_addresses: list[str] = [self.data_address]
        self.control: zmq.Socket | None = None
        self.control_address = None
        self.controller: ControlHandler | None = None
        if options.control:
            self.control = self._socket(zmq.ROUTER, options.curve_secret)
            port = self.control.bind_to_random_port(f"tcp://{addr}")
            self.control_address = f"tcp://{addr}:{port}"
            self.guards[self.control] = ConnectionGuard(
                self.control, "control", CONTROL_PROOF_S, options.connection_limit
            )
            assert isinstance(table, SimTable), "the control rank owns the simulation table"
            self.controller = ControlHandler(
                token,
                table,
                problem,
                self.counts,
                self.control.send_multipart,
                lambda: {**status(), **self.fault_status()},
                on_launcher,
                self._assigned,
                self.path.assembler.discard,
                lambda s: self.data_addresses[s % len(self.data_addresses)],
                batch=self.batching.offer(),
            )

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
    def job_keys(self) -> JobKeys | None:
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
                if self._held is not None and accepting:
                    with self.sink.lock:
                        self._store(*self._held)
                accepting = accepting and self._held is None
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
                if (
                    self.controller is not None
                    and self.control is not None
                    and self.control in events
                ):
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
            for sim_id in self.ingest.take_seen():  # re-sent steps the worker dropped
                self.sink.seen(sim_id)
        for sim_id in self.table.expire(self.simulation_timeout):
            self.counts["sims_timed_out"] += 1
            job = self._sims().job_of(sim_id)
            if job is not None:
                self.stale_jobs.add(job)
            log.warning(
                "simulation %d (job %s) silent for more than %g s; handed out again or given up",
                sim_id,
                job,
                self.simulation_timeout,
            )

    def _drain(self, sock: zmq.Socket, handler: Callable[[list], bool], limit: int) -> None:
        guard = self.guards.get(sock)
        for _ in range(limit):
            if sock is self.data and (self._held is not None or not self.buffer.can_accept()):
                return
            # a connection awaits its first authentic message: read its descriptor too
            try:
                frames, fd = receive(sock, guard is not None and guard.pending)
            except zmq.Again:
                return
            try:
                if handler(frames) and fd is not None and guard is not None:
                    guard.prove(fd)
            except Exception:  # a bug must cost one message, not the receiver thread
                self.counts["internal_error"] += 1
                if self.counts["internal_error"] <= 5:
                    log.exception("receiver: message dropped after an internal error")

    # -- data (thread mode) -------------------------------------------------------------
    def _on_data(self, frames: list[bytes]) -> bool:
        """Handle one data message (``[identity, *message]``); True if it had the token. The
        data path and the sink are the ingest process's own, in this thread."""
        with self.sink.lock:
            done = self.path.handle(frames[0], frames[1:])
            if done:
                self._store(
                    np.array([d[0] for d in done], dtype=np.int64),
                    np.array([d[1] for d in done], dtype=np.int64),
                    np.stack([d[2] for d in done]),
                )
        return self.path.authentic

    def _store(self, sims: np.ndarray, steps: np.ndarray, fields: np.ndarray) -> None:
        """Store samples in order; what the buffer has no room for yet is held, and no data
        is read until it is stored (the order, and a FINISH after its steps, are kept)."""
        consumed = self.sink.store(sims, steps, fields)
        left = slice(consumed, None)
        self._held = None if consumed == len(sims) else (sims[left], steps[left], fields[left])

    def _reply_data(self, ident: bytes, frames: list[bytes]) -> None:
        assert self.data is not None
        try:
            self.data.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone, or its queue is full: it learns at its next call

    def _assigned(self, sim_id: int) -> None:
        self.path.assigned(sim_id)
        if self.ingest is not None:
            self.ingest.assign(sim_id)

    # -- data (process mode) ------------------------------------------------------------
    def _drain_ring(self, limit: int | None = None) -> int:
        """Move samples the ingest process finished from its ring into the buffer, in order
        and in bulk; stop where the buffer is full (they wait in the ring, the worker stops
        reading, the clients block). Returns the records consumed."""
        assert self.ingest is not None
        ring = self.ingest.ring
        meta, fields = ring.peek(limit or ring_slots(self.batching.steps))
        if len(meta) == 0:
            return 0
        sims, steps = meta[:, 0].astype(np.int64), meta[:, 1].astype(np.int64)
        marks = np.flatnonzero(meta[:, 1] < 0)  # FINISH and REFUSED records
        consumed, start = 0, 0
        with self.sink.lock:
            for end in [*marks.tolist(), len(meta)]:
                stored = self.sink.store(
                    sims[start:end],
                    steps[start:end],
                    fields[start:end],
                    normalised=self.ring_normalised,
                )
                consumed += stored
                if stored < end - start:
                    break
                if end < len(meta):  # a mark, after all the steps sent before it
                    sim_id = int(sims[end])
                    if meta[end, 1] == FINISH:
                        self.sink.finish(sim_id, every_rank=bool(meta[end, 2]))
                    elif meta[end, 1] == REFUSED:
                        self.sink.refused(sim_id, "refused by the ingest process")
                    consumed += 1
                start = end + 1
        ring.release(consumed)
        return consumed

    def merge_worker_counts(self) -> None:
        """Add what the worker counted since the last merge (its counters are cumulative; the
        sink counts on this side under the same names)."""
        assert self.ingest is not None
        for key, value in self.ingest.counts.items():
            self.counts[key] += value - self._worker_counts[key]
            self._worker_counts[key] = value

    def message_counts(self) -> dict[str, dict[str, int]]:
        """``messages`` (counts by kind: assigned, blocks, samples, ...) and ``rejected`` (by
        reason), as ``summary.json`` and the pong report them."""
        messages, rejected = split_counts(self.counts)
        return {"messages": messages, "rejected": rejected}

    def _sims(self) -> SimTable:
        """The simulation table itself: the control rank (rank 0) has it."""
        assert isinstance(self.table, SimTable), "control rank only"
        return self.table

    # -- status -------------------------------------------------------------------------
    def fault_status(self) -> dict[str, Any]:
        """Pong fields for the launcher: jobs to cancel, and per in-flight simulation its job
        and the steps received (operators, fault-injection tests)."""
        with self.ingest_lock:
            sims = self._sims()
            steps = {str(s): [sims.job_of(s), self.ledger.count(s)] for s in sims.in_flight_ids()}
        return {
            "stale_jobs": sorted(self.stale_jobs),
            "in_flight_steps": steps,
            "unique_steps": self.ledger.total(),
        }
