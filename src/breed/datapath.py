"""The data path of one server rank: frames -> checked, reassembled time steps.

Shared by the receiver thread (``ingest: thread``) and the ingest process
(``ingest: process``, :mod:`breed.ingest`), so both accept and reject exactly the same
messages. Nothing here raises on bad input: a rejected message is counted by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import numpy as np

from breed.assembly import Assembler
from breed.protocol import (
    AuthError,
    FinishMessage,
    ProtocolError,
    StepMessage,
    decode,
)

log = logging.getLogger("breed.server")


class DataPath:
    """Decode, check (simulation known, step range, shape, finite, physical range) and
    reassemble STEP messages; FINISH messages are handed to ``on_finish``."""

    def __init__(self, token: bytes, steps: int, grid: int, max_payload: int,
                 bounds: tuple[float, float] | None = None,
                 on_finish: Callable[[FinishMessage], None] | None = None,
                 dtype: str | np.dtype | None = None) -> None:
        self.token, self.steps, self.grid = token, steps, grid
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.max_payload = max_payload
        self.bounds = bounds
        self.on_finish = on_finish
        self.assembler = Assembler()
        self.params: dict[int, np.ndarray] = {}  # simulations this rank may receive
        self.counts: Counter[str] = Counter()
        self.authentic = False  # the last message handled carried the run token

    def handle(self, frames: list[bytes], wait_for: Callable[[int], object] | None = None
               ) -> tuple[int, int, np.ndarray] | None:
        """A completed ``(sim_id, step, field)`` or None (partial, duplicate or rejected).
        ``wait_for(sim_id)`` may fetch an assignment that trails the client's first step."""
        self.authentic = False
        if len(frames) > 2 and len(frames[2]) > self.max_payload:
            return self.reject(f"frame of {len(frames[2])} bytes, at most {self.max_payload}",
                               "oversized")
        try:
            msg = decode(frames, self.token, max_payload=self.max_payload)
        except AuthError:
            return self.reject("data message with a wrong or missing token", "rejected_token")
        except ProtocolError as exc:
            return self.reject(f"malformed data message: {exc}", "malformed")
        self.authentic = True
        if isinstance(msg, FinishMessage):
            if self.on_finish is not None:
                self.on_finish(msg)
            self.counts["finish"] += 1
            return None
        if not isinstance(msg, StepMessage):
            return self.reject(f"{type(msg).__name__} on the data socket", "malformed")
        if msg.sim_id not in self.params and wait_for is not None:
            wait_for(msg.sim_id)
        problem = self.check(msg)
        if problem:
            return self.reject(*problem)
        try:
            out = self.assembler.add(msg)
        except ProtocolError as exc:
            return self.reject(f"inconsistent block: {exc}", "malformed")
        self.counts["blocks"] += 1
        return out

    def check(self, msg: StepMessage) -> tuple[str, str] | None:
        if msg.sim_id not in self.params:
            return f"step for unknown simulation {msg.sim_id}", "unknown_sim"
        return check_step(msg, self.steps, self.grid, self.dtype, self.bounds)

    def reject(self, text: str, counter: str) -> None:
        self.counts[counter] += 1
        n = self.counts[counter]
        if n <= 5 or n % 1000 == 0:  # rate-limited: a flood must not fill the disk
            log.warning("rejected (%s #%d): %s", counter, n, text)
        return None


def check_step(msg: StepMessage, steps: int, grid: int, dtype: np.dtype | None,
               bounds: tuple[float, float] | None) -> tuple[str, str] | None:
    """Why a step of a known simulation is refused (message, counter), or None."""
    if not 0 <= msg.step <= steps:
        return f"step {msg.step} outside 0..{steps}", "bad_step"
    if msg.global_rows != grid or msg.block.shape[1] != grid:
        return (f"field {msg.global_rows}x{msg.block.shape[1]}, run has {grid}x{grid}"),\
            "bad_shape"
    if dtype is not None and msg.block.dtype != dtype:
        return f"dtype {msg.block.dtype}, run has {dtype}", "bad_dtype"
    if not np.isfinite(msg.block).all():
        return f"non-finite values in sim {msg.sim_id} step {msg.step}", "non_finite"
    if bounds is not None:
        lo, hi = bounds
        tol = 0.01 * (hi - lo)  # the maximum principle keeps u within the bounds
        if msg.block.min() < lo - tol or msg.block.max() > hi + tol:
            return (f"values outside the bounds [{lo:g}, {hi:g}] in sim {msg.sim_id} step "
                    f"{msg.step}"), "out_of_range"
    return None
