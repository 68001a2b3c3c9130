"""Data ingestion in a separate process, so receiving never competes with training for the GIL.

Decoding, checking and reassembling a time step costs tens of microseconds of Python per
message; in a thread of the training process that time is taken from the training loop (the
GIL), which the on-line benchmark shows as lost trainer throughput. With ``ingest: process``
a child process owns the data socket and does that work (:class:`~breed.server.datapath.DataPath`,
the same code as the thread mode), then writes finished samples (normalised when the problem
declares every field's range) into a shared-memory ring (:class:`SampleRing`, one producer, one consumer). The
server's receiver thread moves them from the ring into the reservoir in bulk
(:meth:`~breed.learning.buffer.SampleBuffer.offer_many`): a few microseconds per sample.

Backpressure is preserved end to end: the receiver leaves samples in the ring while the
reservoir cannot accept them, the worker stops reading the socket while the ring is full, and
the clients block on the ZeroMQ high-water mark.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import zmq

from breed.server.datapath import DataPath, StepSpec
from breed.server.guard import DATA_PROOF_S, ActiveClock, ConnectionGuard, harden, receive

# sim_id, step, and for a FINISH record whether it was the last rank's; lambda stays with
# the server (the receiver's table has it)
META = 3
FINISH = -1.0  # in the step column: "every step before this record in the ring was sent"
REFUSED = -2.0  # in the step column: the client broke the problem; its simulation fails now


class SampleRing:
    """Fixed-size single-producer single-consumer ring of samples in shared memory.

    ``head`` counts samples published by the producer, ``tail`` samples released by the
    consumer; a lock around the counter updates orders the sample writes before the reads on
    every architecture (it is taken once per batch of samples, not per sample).
    """

    def __init__(
        self, slots: int, field_size: int, name: str | None = None, lock: Any = None
    ) -> None:
        self.slots, self.field_size = int(slots), int(field_size)
        nbytes = 16 + self.slots * (META * 8 + self.field_size * 4)
        self.owner = name is None
        self.shm = shared_memory.SharedMemory(name=name, create=self.owner, size=nbytes)
        buf = self.shm.buf
        self.counters = np.ndarray((2,), dtype=np.int64, buffer=buf, offset=0)
        self.meta = np.ndarray((self.slots, META), dtype=np.float64, buffer=buf, offset=16)
        self.fields = np.ndarray(
            (self.slots, self.field_size),
            dtype=np.float32,
            buffer=buf,
            offset=16 + self.slots * META * 8,
        )
        if self.owner:
            self.counters[:] = 0
        self.lock = lock if lock is not None else mp.get_context("spawn").Lock()
        self._pending = 0  # written by the producer, not yet published

    @property
    def name(self) -> str:
        return self.shm.name

    def _counts(self) -> tuple[int, int]:
        with self.lock:
            return int(self.counters[0]), int(self.counters[1])

    # -- producer -------------------------------------------------------------------------
    def free(self) -> int:
        head, tail = self._counts()
        return self.slots - (head + self._pending - tail)

    def write(
        self,
        sim_id: int,
        step: float,
        field: np.ndarray | None = None,
        extra: tuple[float, ...] = (),
    ) -> None:
        """Stage one record (the caller checked :meth:`free`); visible after :meth:`publish`.
        A sample has its ``field``; a FINISH or REFUSED mark has none and ``extra`` data."""
        slot = (int(self.counters[0]) + self._pending) % self.slots
        row = self.meta[slot]
        row[0], row[1] = sim_id, step
        row[2:] = 0.0
        row[2 : 2 + len(extra)] = extra
        if field is not None:
            self.fields[slot] = field.reshape(-1)
        self._pending += 1

    def publish(self) -> None:
        if self._pending:
            with self.lock:
                self.counters[0] += self._pending
            self._pending = 0

    # -- consumer -------------------------------------------------------------------------
    def available(self) -> int:
        head, tail = self._counts()
        return head - tail

    def peek(self, limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of up to ``limit`` oldest records (meta (k, META), fields (k, F)), not
        released."""
        head, tail = self._counts()
        k = min(limit, head - tail)
        idx = (tail + np.arange(k)) % self.slots
        return self.meta[idx], self.fields[idx]

    def release(self, k: int) -> None:
        with self.lock:
            self.counters[1] += k

    def close(self) -> None:
        # numpy views must go before the mapping can close
        del self.counters, self.meta, self.fields
        self.shm.close()
        if self.owner:
            self.shm.unlink()


@dataclass(frozen=True)
class WorkerSpec:
    token: bytes
    bind: str  # tcp://addr (the port is chosen by the worker)
    ring: str
    slots: int
    field_size: int  # values of one sample
    spec: StepSpec
    max_payload: int
    max_message: int
    # normalisation (u - center) / scale, done here, off the training process; None: samples
    # go raw (a scale estimated from the first samples, or one per field)
    center: float | None
    scale: float | None
    hwm: int
    batch_steps: int = 1  # most samples one message completes (the ring needs that room)
    curve_secret: bytes | None = None
    connection_limit: int = 256  # unproven connections before the oldest are shed


def _worker(spec: WorkerSpec, lock: Any, inbox: Any, outbox: Any) -> None:
    """Child process: data socket -> checks -> assembler -> normalised samples in the ring."""
    ring = SampleRing(spec.slots, spec.field_size, name=spec.ring, lock=lock)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, spec.hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, spec.max_message)
    harden(sock)
    if spec.curve_secret is not None:
        from breed.security import make_curve_server

        make_curve_server(sock, spec.curve_secret)
    port = sock.bind_to_random_port(spec.bind)
    clock = ActiveClock()  # runs while the ring has room (we read)
    guard = ConnectionGuard(sock, "data", DATA_PROOF_S, spec.connection_limit, clock=clock)
    outbox.put(("address", f"{spec.bind}:{port}"))
    marks: list[tuple[int, float, tuple[float, ...]]] = []  # FINISH / REFUSED, in order
    known: set[int] = set()

    def reply(ident: bytes, frames: list[bytes]) -> None:
        try:
            sock.send_multipart([ident, *frames], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone or its queue full: it learns at its next call

    seen: set[int] = set()  # simulations streamed since the last report (liveness)
    path = DataPath(
        spec.token,
        spec.spec,
        spec.max_payload,
        known.__contains__,
        on_finish=lambda m, every: marks.append((m.sim_id, FINISH, (float(every),))),
        reply=reply,
        on_refused=lambda s, _: marks.append((s, REFUSED, ())),
        on_seen=seen.add,
        batch_steps=spec.batch_steps,
    )
    center = None if spec.center is None else np.float32(spec.center)
    inv = None if spec.scale is None else np.float32(1.0 / spec.scale)
    last_report = time.monotonic()
    running = True
    try:
        while running:
            running = _apply(inbox, path, known, wait=0.0)
            room = ring.free() >= spec.batch_steps  # a whole message's samples fit
            clock.run(room)
            guard.events()
            if not room:  # do not read: the clients block on the high-water mark
                time.sleep(0.0005)
            elif sock.poll(20):
                for _ in range(256):
                    if ring.free() < spec.batch_steps:
                        break
                    watch = guard.pending  # read the descriptor of an unproven connection
                    try:
                        frames, fd = receive(sock, watch)
                    except zmq.Again:
                        break
                    out = path.handle(
                        frames[0], frames[1:], lambda s: _apply(inbox, path, known, wait=2.0, sim=s)
                    )
                    if fd is not None and path.authentic:
                        guard.prove(fd)
                    for sim_id, step, values in out:
                        values = np.asarray(values, dtype=np.float32)
                        ring.write(sim_id, step, values if inv is None else (values - center) * inv)
                    for sim_id, kind, extra in marks:  # in order with the steps
                        ring.write(sim_id, kind, extra=extra)
                    marks.clear()
                ring.publish()
            now = time.monotonic()
            if now - last_report > 0.5:
                last_report = now
                guard.sweep()
                outbox.put(("counts", dict(path.counts)))
                if seen:
                    outbox.put(("seen", sorted(seen)))
                    seen.clear()
    finally:
        outbox.put(("counts", dict(path.counts)))
        guard.close()
        sock.close(0)
        ctx.term()
        ring.close()


def _apply(
    inbox: Any, path: DataPath, known: set[int], wait: float, sim: int | None = None
) -> bool:
    """Apply assignment messages from the server; with ``sim``, wait up to ``wait`` s for it
    (its assignment can trail the client's first step). False once told to stop."""
    deadline = time.monotonic() + wait
    while True:
        try:
            msg = (
                inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                if (sim is not None and sim not in known)
                else inbox.get_nowait()
            )
        except queue.Empty:
            return True
        if msg[0] == "assign":  # a new attempt: fresh layout, completed steps still dropped
            known.add(msg[1])
            path.assigned(msg[1])
        elif msg[0] == "stop":
            return False
        if sim is not None and (sim in known or time.monotonic() >= deadline):
            return True


class IngestProcess:
    """The server side of the worker: start it, feed it assignments, drain its ring."""

    def __init__(self, spec: WorkerSpec) -> None:
        ctx = mp.get_context("spawn")  # the training process has threads: never fork it
        self.ring = SampleRing(spec.slots, spec.field_size, lock=ctx.Lock())
        spec = WorkerSpec(**{**spec.__dict__, "ring": self.ring.name})
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=_worker,
            args=(spec, self.ring.lock, self.inbox, self.outbox),
            name="breed-ingest",
            daemon=True,
        )
        self.proc.start()
        self.counts: Counter[str] = Counter()
        self._seen: set[int] = set()
        self.address = self._wait_address()

    def _wait_address(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                kind, value = self.outbox.get(timeout=0.1)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError("the ingest process died at start") from None
                continue
            if kind == "address":
                return value
        raise RuntimeError("the ingest process did not bind its socket")

    def assign(self, sim_id: int) -> None:
        self.inbox.put(("assign", sim_id))

    def poll_counts(self) -> Counter[str]:
        while True:
            try:
                kind, value = self.outbox.get_nowait()
            except queue.Empty:
                return self.counts
            if kind == "counts":
                self.counts = Counter(value)
            elif kind == "seen":
                self._seen.update(value)

    def take_seen(self) -> list[int]:
        """Simulations the worker saw streaming since the last call (read by poll_counts)."""
        out, self._seen = sorted(self._seen), set()
        return out

    def alive(self) -> bool:
        return self.proc.is_alive()

    def close(self) -> None:
        self.inbox.put(("stop",))
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.poll_counts()
        self.ring.close()
