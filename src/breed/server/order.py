"""Deterministic mode (``training.deterministic``): the training sequence as a function of the
config and seed only, not of when data arrives (docs/breed.md, "Deterministic mode").

Three rules take arrival timing out of the run:

* **ingest in id order**: the sink stores samples in a :class:`StagedIntake` (whole
  simulations, by id) instead of the reservoir; the training loop moves simulation ``i`` into
  the reservoir only after ``0..i-1``, sorted by step (:class:`OrderedIngest`), so the
  reservoir's writes, evictions, "seen" counters, watermark and normalisation happen in the
  same order between the same batches in every run;
* **a fixed pace**: exactly ``n = training.iterations_per_simulation`` iterations per ingested
  simulation (``n x ingested`` in all), the rest of the budget after the last one;
* **parameters fixed at a point of the training sequence**: simulation ``j``'s λ is drawn
  (``SimTable.bind``) once ``0..j-k`` are ingested (``k = sampler.lag``, the paper's S_{k+m}
  rule with a k of its own); a client asking before gets WAIT.

Everything the sampler and the reservoir see is then called from the training loop's thread at
fixed iterations. What remains timing-dependent is listed in docs/breed.md.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import torch

from breed.learning.buffer import SampleBuffer
from breed.learning.normalisation import Normalisation
from breed.sampling.base import Sampler
from breed.server.simtable import SimTable


def use_deterministic_torch(threads: int | None) -> int:
    """Deterministic kernels and a fixed intra-op thread count (1 unless ``threads``): a
    reduction split over threads sums in another order when their number changes. Returns the
    thread count."""
    # cuBLAS needs a fixed workspace to be deterministic (a CUDA run; breed's promise is CPU)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms also imports torch._inductor, 1.7-2 s of every run's
    # start on this machine, only to set torch.compile's flag; breed compiles nothing, so it
    # sets the eager flag alone (the public call where a torch lacks the private one)
    eager = getattr(torch._C, "_set_deterministic_algorithms", None)
    if eager is None:
        torch.use_deterministic_algorithms(True)
    else:
        eager(True)
    if not torch.are_deterministic_algorithms_enabled():
        raise RuntimeError("torch did not enable its deterministic algorithms")
    n = threads or 1
    torch.set_num_threads(n)
    return n


class StagedIntake:
    """The sink's buffer in deterministic mode: samples wait here, per simulation, until the
    training loop ingests their simulation in id order. Never full: at most ``sampler.lag``
    simulations are bound ahead of the ingested ones, so at most that many stream at once."""

    def __init__(self, reservoir: SampleBuffer, steps: int) -> None:
        self.reservoir = reservoir
        self.steps = steps  # samples of a whole simulation (T + 1)
        self.normalised = False  # the ingest process hands fields in model units
        self._sims: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self._arrived = threading.Condition(threading.Lock())

    @property
    def normalisation(self) -> Normalisation | None:
        return self.reservoir.normalisation

    def can_accept(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        with self._arrived:
            staged = {"staged_sims": len(self._sims), "staged": sum(map(len, self._sims.values()))}
        return {**self.reservoir.stats(), **staged}

    def offer_many(
        self,
        params: np.ndarray,
        steps: np.ndarray,
        fields: np.ndarray,
        sim_ids: np.ndarray,
        normalised: bool = False,
    ) -> int:
        params = np.asarray(params, dtype=np.float64).reshape(len(sim_ids), -1)
        fields = np.asarray(fields).reshape(len(sim_ids), -1)
        with self._arrived:
            self.normalised = normalised
            for k, sim_id in enumerate(np.asarray(sim_ids).tolist()):
                # copies: the ingest process's ring slots are reused
                self._sims.setdefault(int(sim_id), {})[int(steps[k])] = (
                    params[k].copy(),
                    np.array(fields[k]),
                )
            self._arrived.notify_all()
        return len(sim_ids)

    def complete(self, sim_id: int) -> bool:
        with self._arrived:
            return len(self._sims.get(sim_id, ())) == self.steps

    def take(self, sim_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A whole simulation, removed, in step order: (params, steps, fields)."""
        with self._arrived:
            rows = self._sims.pop(sim_id)
        order = sorted(rows)
        return (
            np.stack([rows[t][0] for t in order]),
            np.asarray(order, dtype=np.int64),
            np.stack([rows[t][1] for t in order]),
        )

    def drop(self, sim_id: int) -> None:
        with self._arrived:
            self._sims.pop(sim_id, None)

    def wait(self, timeout: float) -> None:
        """Until a sample arrives or ``timeout`` s pass."""
        with self._arrived:
            self._arrived.wait(timeout)

    def state_dict(self) -> dict[str, Any]:
        with self._arrived:
            return {
                "normalised": self.normalised,
                "sims": [
                    [sim_id, [[t, p, f] for t, (p, f) in rows.items()]]
                    for sim_id, rows in self._sims.items()
                ],
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._arrived:
            self.normalised = bool(state["normalised"])
            self._sims = {
                int(sim_id): {int(t): (np.asarray(p), np.asarray(f)) for t, p, f in rows}
                for sim_id, rows in state["sims"]
            }


class OrderedIngest:
    """The training loop's side: ingest simulations in id order at a fixed pace, and bind
    parameters ``lag`` simulations ahead of the ingested ones. Main thread only."""

    def __init__(
        self,
        intake: StagedIntake,
        table: SimTable,
        sampler: Sampler,
        sampler_lock: threading.Lock,
        per_simulation: int,
        lag: int,
    ) -> None:
        self.intake, self.reservoir, self.table = intake, intake.reservoir, table
        self.sampler, self.sampler_lock = sampler, sampler_lock
        self.per_simulation, self.lag = per_simulation, lag
        self.next_id = 0  # the next simulation to ingest
        self.ingested = 0  # simulations ingested (lost ones are skipped, not counted)
        self.drained = False  # every simulation ingested: the stream has ended
        self._partial: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        table.gated = True
        table.bind(lag)  # 0..lag-1 have no predecessor to wait for

    @property
    def target(self) -> int:
        """Iterations owed so far: n per ingested simulation."""
        return self.per_simulation * self.ingested

    def advance(self, iteration: int) -> bool:
        """Bring the reservoir to where ``iteration`` is in the fixed sequence; True: train one
        batch now, False: wait (:meth:`wait`) for the next simulation in id order."""
        while not self.drained:
            if self._partial is not None:
                self._store_partial()
                if self._partial is not None:
                    return True  # the reservoir needs seen samples before it takes the rest
            if iteration < self.target and self.reservoir.ready():
                return True
            if not self._ingest_next():
                self.table.bind(self.next_id + self.lag)  # a lost one's replacement
                return False
        return True

    def wait(self, timeout: float) -> None:
        self.intake.wait(timeout)

    def _ingest_next(self) -> bool:
        """Ingest (or skip, when given up) simulation ``next_id`` if it can be; False if it
        has to be waited for."""
        sim_id = self.next_id
        if sim_id >= self.sampler.handed:  # nothing bound beyond: the stream's end?
            if self.table.finished():
                self.drained = True
                return True
            return False
        rec = self.table.records.get(sim_id)
        if rec is not None and rec.status == "lost":
            self.intake.drop(sim_id)
        elif rec is not None and self.intake.complete(sim_id):
            params, steps, fields = self.intake.take(sim_id)
            with self.sampler_lock:  # Breed's Λ_J: the step count of a done simulation
                self.sampler.on_simulation_done(sim_id, len(steps))
            self._partial = (params, steps, fields, np.full(len(steps), sim_id, dtype=np.int64))
            self.ingested += 1
            self._store_partial()
        else:
            return False
        self.next_id += 1
        self.table.bind(self.next_id + self.lag)
        return True

    def _store_partial(self) -> None:
        assert self._partial is not None
        params, steps, fields, ids = self._partial
        n = self.reservoir.offer_many(params, steps, fields, ids, normalised=self.intake.normalised)
        rest = (params[n:], steps[n:], fields[n:], ids[n:])
        self._partial = rest if len(rest[0]) else None

    def state_dict(self) -> dict[str, Any]:
        """For a checkpoint, with the table (its bound draws) in the same cut."""
        return {
            "next_id": self.next_id,
            "ingested": self.ingested,
            "drained": self.drained,
            "partial": None if self._partial is None else list(self._partial),
            "staged": self.intake.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_id, self.ingested = int(state["next_id"]), int(state["ingested"])
        self.drained = bool(state["drained"])
        partial = state["partial"]
        self._partial = None if partial is None else tuple(np.asarray(a) for a in partial)  # type: ignore[assignment]
        self.intake.load_state_dict(state["staged"])


class Pace:
    """``training.iterations_per_simulation`` outside deterministic mode: at most n iterations
    per simulation received (in any order), a ceiling. It gives way when the reservoir holds
    only unseen samples: the clients are blocked then, and waiting for them would never end."""

    def __init__(self, per_simulation: int, table: SimTable, buffer: SampleBuffer) -> None:
        self.per_simulation, self.table, self.buffer = per_simulation, table, buffer

    def hold(self, iteration: int) -> bool:
        """True: do not train now, wait for the next simulation."""
        return (
            iteration >= self.per_simulation * self.table.done_count()
            and not self.table.finished()
            and self.buffer.can_accept()
        )
