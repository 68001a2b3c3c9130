"""Where checked, reassembled samples enter the run: the one stage after the data path.

Both ingest modes end here (``ingest: thread`` calls it from the receiver thread for every
sample :class:`~breed.server.datapath.DataPath` completes; ``ingest: process`` for every run of
records the ingest process left in its ring), so they keep the same books:

* a step enters the buffer at most once per run (:class:`~breed.server.recovery.StepLedger`,
  checkpointed: retried clients and server restarts re-send steps, they are counted
  ``duplicate_steps`` and dropped);
* a simulation is done when its ledger holds every step, and reported once
  (``on_sim_done``);
* a simulation whose every rank finished with steps missing, or whose client broke the problem,
  fails now (its table hands it out again) rather than after ``simulation_timeout``.

``lock`` (re-entrant) makes ledger, buffer and table move together: a checkpoint takes it for
its cut (:func:`breed.server.recovery.capture`).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from breed.learning.normalisation import Normalisation
from breed.server.recovery import StepLedger
from breed.server.simtable import StepTable

log = logging.getLogger("breed.server")


class Buffer(Protocol):
    """What the receiver needs of a buffer (a reservoir, a FIFO, a collection run's store)."""

    @property
    def normalisation(self) -> Normalisation | None: ...  # None: raw samples (collection)

    def can_accept(self) -> bool: ...

    def stats(self) -> dict[str, Any]: ...

    def offer_many(
        self,
        params: np.ndarray,
        steps: np.ndarray,
        fields: np.ndarray,
        sim_ids: np.ndarray,
        normalised: bool = False,
    ) -> int: ...


class SampleSink:
    """Ledger + buffer + table progress + the FINISH and refusal policy, for one rank."""

    def __init__(
        self,
        table: StepTable,
        buffer: Buffer,
        steps: int,
        counts: Counter[str],
        on_sim_done: Callable[[int], None],
        ledger: StepLedger | None = None,
    ) -> None:
        self.table, self.buffer, self.counts = table, buffer, counts
        self.steps = steps  # T: a simulation has the T + 1 steps t = 0..T
        self.on_sim_done = on_sim_done
        self.ledger = ledger or StepLedger(steps + 1)
        self.lock = threading.RLock()

    def seen(self, sim_id: int) -> None:
        """A client is streaming ``sim_id`` (even steps already held): it is not silent."""
        if self.table.known(sim_id):
            self.table.on_step(sim_id)

    def store(
        self, sims: np.ndarray, steps: np.ndarray, fields: np.ndarray, normalised: bool = False
    ) -> int:
        """Store a run of samples in order; returns how many were consumed (stored or dropped).
        Stops at the first one the buffer refuses (the rest wait: back-pressure)."""
        with self.lock:
            known = np.array([self.table.known(int(s)) for s in sims], dtype=bool)
            keep = known & ~np.array(
                [self.ledger.has(int(s), int(t)) for s, t in zip(sims, steps, strict=True)],
                dtype=bool,
            )
            idx = np.flatnonzero(keep)
            params = {int(s): self.table.params_of(int(s)) for s in np.unique(sims[idx])}
            stored = (
                self.buffer.offer_many(
                    np.array([params[int(s)] for s in sims[idx]]).reshape(len(idx), -1),
                    steps[idx],
                    fields[idx],
                    sims[idx],
                    normalised=normalised,
                )
                if len(idx)
                else 0
            )
            consumed = int(idx[stored]) if stored < len(idx) else len(sims)
            self.counts["unknown_sim"] += int((~known[:consumed]).sum())  # given up meanwhile
            self.counts["duplicate_steps"] += int((known & ~keep)[:consumed].sum())
            for k in idx[:stored]:
                self.ledger.add(int(sims[k]), int(steps[k]))
                self.counts["samples"] += 1
            for sim_id in {int(s) for s in sims[:consumed]}:
                if self.table.known(sim_id):
                    self.table.on_step(sim_id)
                    if self.ledger.count(sim_id) == self.steps + 1 and self.table.complete(sim_id):
                        self.on_sim_done(sim_id)
            return consumed

    def finish(self, sim_id: int, every_rank: bool) -> None:
        """One rank's FINISH, after every step it sent before was stored; ``every_rank``:
        it was the last rank (the data path counts them)."""
        with self.lock:
            if not self.table.known(sim_id):
                return
            self.counts["finish"] += 1
            have = self.ledger.count(sim_id)
            if have == self.steps + 1 or not every_rank:  # complete, or ranks still to come
                return
            self._fail(
                sim_id,
                f"client finished with {self.steps + 1 - have} steps missing",
                "incomplete_sims",
            )

    def refused(self, sim_id: int, reason: str) -> None:
        """The client broke the problem: its simulation fails now."""
        with self.lock:
            self.counts["refused_sims"] += 1
            if self.table.known(sim_id):
                self._fail(sim_id, f"client refused: {reason}", None)

    def _fail(self, sim_id: int, reason: str, counter: str | None) -> None:
        outcome = self.table.fail(sim_id, reason)
        if outcome is None:  # rank r > 0: rank 0's timeout retries it
            return
        if counter is not None:
            self.counts[counter] += 1
        log.warning("simulation %d: %s -> %s", sim_id, reason, outcome)
