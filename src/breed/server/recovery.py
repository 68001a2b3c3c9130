"""What a server checkpoint holds beyond model and optimiser, and how a restart restores it.

Why each piece is needed for "no simulation lost, none counted twice" after a server restart:

* :class:`StepLedger`, one bit per ``(sim, step)`` that entered the buffer. A simulation in
  flight at the checkpoint is handed out again (same λ); its client re-sends every step, and the
  receiver drops the ones the ledger already holds, so a step never enters the buffer twice,
  across any number of restarts.
* the buffer's samples (``SampleBuffer.snapshot``): the reservoir never evicts a sample before it
  was trained on (paper App. A); samples received but not yet trained on at the checkpoint would
  otherwise be lost with the process, because their simulations are already counted done.
* the simulation table together with the sampler, in one cut (``SimTable.snapshot``): Breed
  identifies simulations by hand-out order, and the sampler's hand-out count is the only one.

All three are captured under the receiver's ``ingest_lock`` (one consistent cut: a step is in the
ledger iff it is in the buffer snapshot or was evicted after training).
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from breed import rundir
from breed.fsio import atomic_write_bytes

if TYPE_CHECKING:
    from breed.learning.buffer import SampleBuffer
    from breed.sampling.base import Sampler
    from breed.server.simtable import SimTable

log = logging.getLogger("breed.server")


class StepLedger:
    """Set of received ``(sim_id, step)``, ``steps`` bits per simulation (compact, growable)."""

    def __init__(self, steps: int) -> None:
        if steps < 1:
            raise ValueError(f"StepLedger: steps must be >= 1, got {steps}")
        self.steps = int(steps)
        self._bits = np.zeros((0, self.steps), dtype=bool)
        self._count = np.zeros(0, dtype=np.int64)

    def _grow(self, sim_id: int) -> None:
        rows = len(self._count)
        if sim_id < rows:
            return
        new = max(sim_id + 1, 2 * rows, 16)
        bits = np.zeros((new, self.steps), dtype=bool)
        bits[:rows] = self._bits
        count = np.zeros(new, dtype=np.int64)
        count[:rows] = self._count
        self._bits, self._count = bits, count

    def has(self, sim_id: int, step: int) -> bool:
        return 0 <= sim_id < len(self._count) and bool(self._bits[sim_id, step])

    def add(self, sim_id: int, step: int) -> bool:
        """Record a step; False (and no change) if it was already there."""
        if not 0 <= step < self.steps or sim_id < 0:
            raise ValueError(f"StepLedger: ({sim_id}, {step}) outside 0..{self.steps - 1}")
        self._grow(sim_id)
        if self._bits[sim_id, step]:
            return False
        self._bits[sim_id, step] = True
        self._count[sim_id] += 1
        return True

    def count(self, sim_id: int) -> int:
        """Steps of ``sim_id`` received so far."""
        return int(self._count[sim_id]) if 0 <= sim_id < len(self._count) else 0

    def total(self) -> int:
        return int(self._count.sum())

    def pairs(self) -> np.ndarray:
        """All recorded ``(sim_id, step)`` as an (n, 2) array (tests, audits)."""
        return np.argwhere(self._bits)

    def state_dict(self) -> dict[str, Any]:
        rows = int(np.flatnonzero(self._count)[-1]) + 1 if self._count.any() else 0
        return {
            "steps": self.steps,
            "rows": rows,
            "bits": np.packbits(self._bits[:rows], axis=None).tobytes(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["steps"]) != self.steps:
            raise ValueError(
                f"checkpoint ledger has {state['steps']} steps per simulation, "
                f"this run {self.steps}"
            )
        rows = int(state["rows"])
        flat = np.unpackbits(
            np.frombuffer(state["bits"], dtype=np.uint8), count=rows * self.steps
        ).astype(bool)
        self._bits = flat.reshape(rows, self.steps).copy()
        self._count = self._bits.sum(axis=1).astype(np.int64)


# -- the whole server state -------------------------------------------------------------------
def capture(
    *,
    ingest_lock: AbstractContextManager[Any],
    ledger: StepLedger,
    table: SimTable,
    buffer: SampleBuffer,
    counts: dict[str, int],
) -> dict[str, Any]:
    """One consistent cut of what the receiver thread changes (see the module docstring).

    Lock order: ingest -> table -> sampler, the receiver's own order.
    """
    with ingest_lock:
        return {
            **table.snapshot(),
            "ledger": ledger.state_dict(),
            "buffer_data": buffer.snapshot(),
            "receiver_counts": dict(counts),
        }


def restore(
    state: dict[str, Any],
    *,
    ledger: StepLedger,
    table: SimTable,
    sampler: Sampler,
    buffer: SampleBuffer,
    counts: dict[str, int],
) -> None:
    """Inverse of :func:`capture`, before the receiver thread starts."""
    sampler.load_state_dict(state["sampler"])
    table.load_state_dict(state["table"])
    if "ledger" in state:
        ledger.load_state_dict(state["ledger"])
    if "buffer_data" in state:
        buffer.restore(state["buffer_data"])
    elif "buffer" in state:  # statistics only (checkpoints from before the ledger)
        buffer.load_state_dict(state["buffer"])
    counts.update(state.get("receiver_counts", {}))


# -- run-log files written after the checkpoint -----------------------------------------------
def truncate_logs(run_dir: Path, iteration: int) -> dict[str, int]:
    """Drop rows past ``iteration`` that a dead server wrote after its last checkpoint.

    The resumed server recomputes those iterations; keeping both would show each twice in
    ``metrics.jsonl`` and ``per_sample_loss.csv``. Returns the rows dropped per file.
    """
    dropped = {}
    path = run_dir / rundir.METRICS
    if path.exists():
        keep, n = [], 0
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                past = int(row.get("iteration", 0)) > iteration
            except (ValueError, TypeError, AttributeError):
                past = True  # a torn last line
            if past:
                n += 1
            else:
                keep.append(line)
        if n:
            atomic_write_bytes(path, "".join(x + "\n" for x in keep).encode())
        dropped[path.name] = n
    path = run_dir / rundir.PER_SAMPLE
    if path.exists():
        lines = path.read_text().splitlines()
        keep, n = lines[:1], 0
        for line in lines[1:]:
            head = line.split(",", 1)[0]
            if head.isdigit() and int(head) <= iteration and line.count(",") >= 7:
                keep.append(line)
            else:
                n += 1
        if n:
            atomic_write_bytes(path, "".join(x + "\n" for x in keep).encode())
        dropped[path.name] = n
    if any(dropped.values()):
        log.info(
            "resume at iteration %d: dropped rows written after the checkpoint: %s",
            iteration,
            dropped,
        )
    return dropped
