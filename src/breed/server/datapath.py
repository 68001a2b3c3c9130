"""The data path of one server rank: frames -> checked, reassembled samples.

Shared by the receiver thread (``ingest: thread``) and the ingest process (``ingest: process``,
:mod:`breed.server.ingest`), so both accept and reject exactly the same messages. Nothing here raises
on bad input: a rejected message is counted by reason. A step that breaks the problem (a wrong
field shape, dtype, field index or step) is also answered with a ``REJECT`` to the connection
it came from (the data socket is a ``ROUTER``: the client API raises it as a one-line error
within a second) and reported through ``on_refused``, so the simulation is handed out again at
once instead of waiting for a timeout.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from breed.problems.problem import Problem
from breed.protocol import (
    AuthError,
    FinishMessage,
    Kind,
    ProtocolError,
    StepMessage,
    StepRun,
    decode,
    encode_control,
)
from breed.server.assembly import Assembler

log = logging.getLogger("breed.server")


class DataPath:
    """Decode, check (simulation known, the problem's steps, fields, shapes, dtypes, finite,
    bounded range) and reassemble STEP messages; FINISH messages go to ``on_finish``."""

    def __init__(
        self,
        token: bytes,
        spec: StepSpec,
        max_payload: int,
        known: Callable[[int], bool],
        *,
        on_finish: Callable[[FinishMessage, bool], None] | None = None,
        reply: Callable[[bytes, list[bytes]], None] | None = None,
        on_refused: Callable[[int, str], None] | None = None,
        on_seen: Callable[[int], None] | None = None,
        counts: Counter[str] | None = None,
        batch_steps: int = 1,
    ) -> None:
        self.token, self.spec, self.max_payload = token, spec, max_payload
        self.batch_steps = batch_steps  # most steps one STEPS message may carry (the ASSIGN's)
        self.known = known
        self.on_finish, self.reply, self.on_refused = on_finish, reply, on_refused
        self.on_seen = on_seen  # a valid step of a known simulation arrived (liveness)
        self.assembler = Assembler(nfields=len(spec.shapes))
        self.counts: Counter[str] = Counter() if counts is None else counts
        self.authentic = False  # the last message handled carried the run token
        # (simulation, connection) pairs told off: a refusal fails the attempt once, and a
        # broken client's late messages never fail the next attempt (another connection)
        self.refused: dict[tuple[int, bytes], str] = {}

    def decode(
        self, ident: bytes, frames: list[bytes], wait_for: Callable[[int], object] | None = None
    ) -> StepMessage | StepRun | FinishMessage | None:
        """A checked STEP, STEPS or FINISH, or None (rejected and counted). ``wait_for(sim_id)`` may
        fetch an assignment that trails the client's first step (process mode)."""
        self.authentic = False
        if len(frames) > 2 and len(frames[2]) > self.max_payload:
            self.reject(f"frame of {len(frames[2])} bytes, at most {self.max_payload}", "oversized")
            return None
        try:
            msg = decode(frames, self.token, max_payload=self.max_payload)
        except AuthError:
            self.reject("data message with a wrong or missing token", "rejected_token")
            return None
        except ProtocolError as exc:
            self.reject(f"malformed data message: {exc}", "malformed")
            return None
        self.authentic = True
        if isinstance(msg, FinishMessage):
            self._acknowledge(ident, msg)
            if not self.known(msg.sim_id) and wait_for is not None:
                wait_for(msg.sim_id)  # a rank that failed at once: FINISH before any step
            if not self.known(msg.sim_id):
                self.reject(f"FINISH for unknown simulation {msg.sim_id}", "unknown_sim")
                return None
            return msg
        if not isinstance(msg, StepMessage | StepRun):
            self.reject(f"{type(msg).__name__} on the data socket", "malformed")
            return None
        if msg.count > self.batch_steps:
            self.reject(f"STEPS of {msg.count} steps, at most {self.batch_steps}", "malformed")
            return None
        if not self.known(msg.sim_id) and wait_for is not None:
            wait_for(msg.sim_id)
        if not self.known(msg.sim_id):
            self.reject(f"step for unknown simulation {msg.sim_id}", "unknown_sim")
            return None
        problem = check_step(msg, self.spec)
        if problem is not None:
            text, counter = problem
            if counter in REFUSALS:
                self.refuse(ident, msg.sim_id, text)
            self.reject(text, counter)
            return None
        return msg

    def assemble(self, ident: bytes, msg: StepMessage) -> tuple[int, int, np.ndarray] | None:
        """The sample ``(sim_id, step, values)`` this block completes, or None. A block of a
        step already completed (a retried client re-sending) is counted and dropped."""
        before = self.assembler.duplicates
        try:
            out = self.assembler.add(msg)
        except ProtocolError as exc:
            self.refuse(ident, msg.sim_id, str(exc))
            self.reject(f"inconsistent block: {exc}", "malformed")
            return None
        if self.assembler.duplicates > before:
            self.counts["duplicate_steps"] += 1
            return None
        self.counts["blocks"] += 1
        if out is None:
            return None
        sim_id, step, fields = out
        return sim_id, step, sample_of(fields)

    def handle(
        self, ident: bytes, frames: list[bytes], wait_for: Callable[[int], object] | None = None
    ) -> list[tuple[int, int, np.ndarray]]:
        """Decode and assemble one message (both ingest modes' whole path): the samples it
        completes, in step order (several for a STEPS message); a FINISH goes to
        ``on_finish(msg, every_rank)``."""
        msg = self.decode(ident, frames, wait_for)
        if isinstance(msg, FinishMessage):
            try:
                every_rank = self.assembler.finish(msg)
            except ProtocolError as exc:  # an inconsistent rank count
                self.reject(f"inconsistent FINISH: {exc}", "malformed")
                return []
            if self.on_finish is not None:
                self.on_finish(msg, every_rank)
            return []
        if msg is None:
            return []
        if self.on_seen is not None:
            self.on_seen(msg.sim_id)
        if isinstance(msg, StepRun):
            self.counts["step_batches"] += 1
        done = []
        for one in msg.split():
            got = self.assemble(ident, one)
            if got is not None:
                done.append(got)
            elif (msg.sim_id, ident) in self.refused:  # an inconsistent block: the rest too
                break
        return done

    def refuse(self, ident: bytes, sim_id: int, reason: str) -> None:
        """Tell the client at once (REJECT on its connection) and the table (once per
        attempt): a client that breaks the problem will not get better by waiting."""
        if self.reply is not None:
            self.reply(
                ident, encode_control(Kind.REJECT, self.token, {"reason": reason, "sim_id": sim_id})
            )
        if (sim_id, ident) not in self.refused:
            self.refused[(sim_id, ident)] = reason
            if self.on_refused is not None:
                self.on_refused(sim_id, reason)

    def _acknowledge(self, ident: bytes, msg: FinishMessage) -> None:
        """Answer a rank's FINISH on its connection, after every step it sent before (one
        connection keeps order): REJECT if any was refused or steps are missing, else PONG."""
        if self.reply is None:
            return
        reason = self.refused.get((msg.sim_id, ident))
        if reason is None and msg.steps_sent != self.spec.steps + 1:
            reason = (
                f"sent {msg.steps_sent} time steps, the problem has "
                f"{self.spec.steps + 1} (t = 0..{self.spec.steps})"
            )
            self.refuse(ident, msg.sim_id, reason)
            return
        if reason is not None:
            self.reply(
                ident,
                encode_control(Kind.REJECT, self.token, {"reason": reason, "sim_id": msg.sim_id}),
            )
        else:
            self.reply(ident, encode_control(Kind.PONG, self.token, {"sim_id": msg.sim_id}))

    def assigned(self, sim_id: int) -> None:
        """A new attempt of ``sim_id``: fresh layout (completed steps still dropped)."""
        self.assembler.discard(sim_id)

    def reject(self, text: str, counter: str) -> None:
        self.counts[counter] += 1
        n = self.counts[counter]
        if n <= 5 or n % 1000 == 0:  # rate-limited: a flood must not fill the disk
            log.warning("rejected (%s #%d): %s", counter, n, text)
        return None


@dataclass(frozen=True)
class StepSpec:
    """What every STEP of a run must be: the problem's fields (wire shape, dtype, a range for
    bounded ones) and its steps. The one check shared by both ingest modes."""

    steps: int
    shapes: tuple[tuple[int, int], ...]
    dtypes: tuple[np.dtype, ...]
    ranges: tuple[tuple[float, float] | None, ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, problem: Problem) -> StepSpec:
        return cls(
            problem.steps,
            tuple(f.wire_shape for f in problem.fields),
            tuple(np.dtype(f.dtype) for f in problem.fields),
            tuple(f.range if f.bounded else None for f in problem.fields),
            tuple(f.name for f in problem.fields),
        )

    @property
    def max_block_bytes(self) -> int:
        return max(r * c * d.itemsize for (r, c), d in zip(self.shapes, self.dtypes, strict=True))


BATCH_BYTES = 1 << 20  # an automatic batch carries about this much (launcher.batch_steps: null)
MAX_AUTO_BATCH = 64  # ... and at most this many steps


@dataclass(frozen=True)
class Batching:
    """How many steps one data message may carry (the ASSIGN's ``batch``) and the frame
    limits that follow from it. Why batches: the per-message Python of the receive path
    (receive, decode, check, store) costs as much as a small field's values."""

    steps: int  # most steps per STEPS message (1: one step per message)
    linger: float  # seconds a client may hold a step before it sends it
    max_payload: int  # largest payload frame: ``steps`` of the largest field block
    max_message: int  # ZMQ_MAXMSGSIZE of the data sockets

    @classmethod
    def plan(
        cls, spec: StepSpec, steps: int | None, linger: float, max_message: int | None
    ) -> Batching:
        """From ``launcher.batch_steps`` (None: about :data:`BATCH_BYTES` per message, at
        most :data:`MAX_AUTO_BATCH` steps), ``batch_linger`` and ``max_message_bytes``.
        ValueError names the setting that does not fit."""
        block = spec.max_block_bytes
        if max_message is not None and max_message < block + 1024:
            raise ValueError(
                f"launcher.max_message_bytes: {max_message} is below the largest field "
                f"({block} bytes) + 1024"
            )
        if steps is None:
            steps = min(MAX_AUTO_BATCH, max(1, BATCH_BYTES // block))
            if max_message is not None:
                steps = min(steps, (max_message - 1024) // block)
        elif max_message is not None and steps * block + 1024 > max_message:
            raise ValueError(
                f"launcher.batch_steps: {steps} steps of the largest field ({block} bytes "
                f"each) do not fit launcher.max_message_bytes ({max_message}) - 1024"
            )
        steps = max(1, min(steps, spec.steps + 1))  # a simulation has T + 1 steps
        payload = steps * block
        return cls(steps, float(linger), payload, max_message or payload + (64 << 10))

    def offer(self) -> dict[str, float | int]:
        """The ASSIGN's ``batch`` (docs/PROTOCOL.md 6.1)."""
        return {"steps": self.steps, "linger": self.linger}


def check_step(msg: StepMessage | StepRun, spec: StepSpec) -> tuple[str, str] | None:
    """Why a step (or a STEPS message's every step) of a known simulation is refused
    (message, counter), or None."""
    if not (0 <= msg.step and msg.last_step <= spec.steps):
        where = f"step {msg.step}" if msg.count == 1 else f"steps {msg.step}..{msg.last_step}"
        return f"{where} outside 0..{spec.steps}", "bad_step"
    if not 0 <= msg.field < len(spec.shapes):
        return f"field {msg.field} of {len(spec.shapes)}", "bad_field"
    rows, cols = spec.shapes[msg.field]
    name = spec.names[msg.field]
    if msg.global_rows != rows or msg.block.shape[-1] != cols:
        return (
            f"field {name}: {msg.global_rows} rows x {msg.block.shape[-1]}, the problem "
            f"has {rows} x {cols}"
        ), "bad_shape"
    if msg.block.dtype != spec.dtypes[msg.field]:
        return (
            f"field {name}: dtype {msg.block.dtype}, the problem has {spec.dtypes[msg.field]}",
            "bad_dtype",
        )
    if not np.isfinite(msg.block).all():
        return f"non-finite values in sim {msg.sim_id} step {msg.step}", "non_finite"
    bounds = spec.ranges[msg.field]
    if bounds is not None:
        lo, hi = bounds
        tol = 0.01 * (hi - lo)
        if msg.block.min() < lo - tol or msg.block.max() > hi + tol:
            return (
                f"values outside the bounds [{lo:g}, {hi:g}] in sim {msg.sim_id} step {msg.step}"
            ), "out_of_range"
    return None


REFUSALS = ("bad_step", "bad_field", "bad_shape", "bad_dtype")  # the client breaks the problem
# Every reason a message is rejected for (the counters of ``DataPath.reject`` and of the control
# socket's): ``summary.json``'s ``rejected``; the receiver's other counters count what was
# accepted or dropped by design (``messages``).
REJECTIONS = (
    "malformed",
    "rejected_token",
    "bad_job_key",
    "oversized",
    "unknown_sim",
    *REFUSALS,
    "non_finite",
    "out_of_range",
)


def split_counts(counts: Counter[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The receiver's counters as (messages by kind, rejections by reason)."""
    messages = {k: int(v) for k, v in sorted(counts.items()) if k not in REJECTIONS}
    rejected = {k: int(v) for k, v in sorted(counts.items()) if k in REJECTIONS}
    return messages, rejected


def sample_of(fields: list[np.ndarray]) -> np.ndarray:
    """One sample from a step's complete fields: flattened, concatenated in field order (a
    view for one field)."""
    if len(fields) == 1:
        return fields[0].reshape(-1)
    return np.concatenate([f.reshape(-1) for f in fields])
