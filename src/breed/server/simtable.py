"""The server's table of simulations: late-bound hand-out, completion, retries.

Parameters are drawn from the sampler only when a client asks for work (late binding, paper
Section 2.2), so Breed can rewrite every simulation not yet handed out. A failed simulation is
handed out again with the same λ up to ``max_retries`` times, then given up: with
``on_give_up="resample"`` a fresh simulation is drawn so the run still completes ``budget``
simulations; with ``"drop"`` the budget shrinks. A server restart hands the simulations that were
in flight at its checkpoint out again without counting it against their retries (the server
failed, not the simulation).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from breed.problems.problem import Problem
from breed.sampling.base import Draw, Sampler

IN_FLIGHT = ("assigned", "running")
# samples.csv: sim_id, one column per parameter (the problem's names), then these
RECORD_COLUMNS = [
    "source",
    "generation",
    "parent",
    "sigma",
    "Q",
    "status",
    "attempts",
    "job_id",
    "assign_time",
    "start_time",
    "end_time",
]


def columns(names: list[str]) -> list[str]:
    """The header of ``samples.csv`` for parameters ``names``."""
    return ["sim_id", *names, *RECORD_COLUMNS]


@dataclass
class SimRecord:
    sim_id: int
    params: list[float]
    source: str
    generation: int
    parent: int | None
    sigma: float | None
    status: str = "assigned"  # assigned | running | done | failed (awaiting retry) | lost
    attempts: int = 1
    job_id: str | None = None
    client: str = ""
    assign_time: float = field(default_factory=time.time)
    start_time: float | None = None
    end_time: float | None = None
    last_seen: float = field(default_factory=time.monotonic)
    failures: list[str] = field(default_factory=list)
    restarts: int = 0  # attempts cut short by a server restart (not the simulation's fault)

    def row(self, q: float | None, names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"sim_id": self.sim_id}
        out.update(zip(names, self.params, strict=True))
        out.update(
            source=self.source,
            generation=self.generation,
            parent=self.parent,
            sigma=self.sigma,
            Q=q,
            status=self.status,
            attempts=self.attempts,
            job_id=self.job_id,
            assign_time=self.assign_time,
            start_time=self.start_time,
            end_time=self.end_time,
        )
        return out


class StepTable(Protocol):
    """What the data path needs of a simulation table: rank 0's :class:`SimTable`, or a
    :class:`~breed.server.shard.RemoteTable` on the other ranks."""

    clock: Callable[[], float]

    def known(self, sim_id: int) -> bool: ...

    def on_step(self, sim_id: int) -> None: ...

    def params_of(self, sim_id: int) -> np.ndarray: ...

    def complete(self, sim_id: int) -> bool: ...

    def fail(self, sim_id: int, reason: str) -> str | None: ...

    def expire(self, timeout: float) -> list[int]: ...


class SimTable:
    """Thread-safe: the receiver thread hands out work, the launcher reports failures."""

    def __init__(
        self,
        budget: int,
        sampler: Sampler,
        sampler_lock: threading.Lock,
        max_retries: int = 2,
        on_give_up: str = "resample",
        problem: Problem | None = None,
    ) -> None:
        self.budget = budget
        self.sampler = sampler
        # draws are in sampling space; records hold physical parameters (log axes undone)
        self.to_params = problem.from_sampling if problem is not None else np.asarray
        self.names = problem.names if problem is not None else [f"p{k}" for k in range(sampler.dim)]
        self.sampler_lock = sampler_lock
        self.max_retries = max_retries
        self.on_give_up = on_give_up
        self.records: dict[int, SimRecord] = {}
        self.retry: deque[int] = deque()
        self.target = budget  # simulations that must finish; shrinks on "drop"
        # liveness clock: the receiver's, which stops while it does not read (back-pressure
        # is the server's doing, not the client's silence)
        self.clock: Callable[[], float] = time.monotonic
        # re-entrant: snapshot() holds it (with the sampler lock) around state_dict()
        self._lock = threading.RLock()
        # deterministic mode (breed.server.order): draws are made by bind() at fixed points of
        # the training sequence and wait here for a client; a request finding none gets WAIT
        self.gated = False
        self.bound: deque[tuple[int, Draw]] = deque()

    # -- hand-out -----------------------------------------------------------------------
    def request(self, job_id: str | None, client: str) -> SimRecord | str:
        """A record to run, or ``"stop"`` (nothing left) or ``"wait"`` (retries may come)."""
        with self._lock:
            if self.retry:
                rec = self.records[self.retry.popleft()]
                rec.status, rec.attempts = "assigned", rec.attempts + 1
            elif self.drawn < self._to_draw():
                if self.gated:
                    if not self.bound:
                        return "wait"  # its parameters are not fixed yet
                    sim_id, draw = self.bound.popleft()
                else:
                    with self.sampler_lock:
                        sim_id, draw = self.sampler.handed, self.sampler.next()
                rec = SimRecord(
                    sim_id,
                    [float(x) for x in self.to_params(draw.params)],
                    draw.source,
                    draw.generation,
                    draw.parent,
                    draw.sigma,
                )
                self.records[rec.sim_id] = rec
            else:
                return "stop" if self._finished() else "wait"
            rec.job_id, rec.client = job_id, client
            rec.assign_time, rec.last_seen = time.time(), self.clock()
            rec.start_time = rec.end_time = None
            return rec

    @property
    def drawn(self) -> int:
        """Simulations handed to a client so far: the sampler's hand-out count, its one owner,
        less the draws bound but not taken yet (deterministic mode)."""
        return self.sampler.handed - len(self.bound)

    def bind(self, limit: int) -> int:
        """Fix the parameters of every simulation with id < ``limit`` (and within the budget)
        now: the sampler hands them out to the table, which keeps them for the next requests
        (deterministic mode: the moment a draw is made is a point of the training sequence,
        not a client's request). Returns how many were bound."""
        n = 0
        with self._lock, self.sampler_lock:
            while self.sampler.handed < min(limit, self._to_draw()):
                sim_id = self.sampler.handed
                self.bound.append((sim_id, self.sampler.next()))
                n += 1
        return n

    def _to_draw(self) -> int:
        lost = sum(r.status == "lost" for r in self.records.values())
        return self.budget + (lost if self.on_give_up == "resample" else 0)

    def _finished(self) -> bool:
        return self.done_count() >= self.target or (
            not self.retry
            and not any(r.status in IN_FLIGHT for r in self.records.values())
            and self.drawn >= self._to_draw()
        )

    # -- progress -----------------------------------------------------------------------
    def known(self, sim_id: int) -> bool:
        rec = self.records.get(sim_id)
        return rec is not None and rec.status != "lost"

    def on_step(self, sim_id: int) -> None:
        rec = self.records[sim_id]
        rec.last_seen = self.clock()
        if rec.status == "assigned":
            rec.status, rec.start_time = "running", time.time()

    def complete(self, sim_id: int) -> bool:
        """All steps of ``sim_id`` arrived; False if it was already counted."""
        with self._lock:
            rec = self.records[sim_id]
            if rec.status == "done":
                return False
            if sim_id in self.retry:
                self.retry.remove(sim_id)  # a "dead" attempt that delivered after all
            rec.status, rec.end_time = "done", time.time()
            return True

    def fail(self, sim_id: int, reason: str) -> str:
        """Mark an in-flight simulation failed; returns ``retry`` or ``lost``."""
        with self._lock:
            rec = self.records[sim_id]
            if rec.status not in IN_FLIGHT:
                return rec.status
            rec.failures.append(reason)
            if rec.attempts - rec.restarts <= self.max_retries:
                rec.status = "failed"
                self.retry.append(sim_id)
                return "retry"
            rec.status, rec.end_time = "lost", time.time()
            if self.on_give_up == "drop":
                self.target -= 1
            return "lost"

    def fail_job(self, job_id: str, reason: str) -> list[int]:
        """A client job died: fail every simulation it was running."""
        ids = [
            r.sim_id for r in self.records.values() if r.job_id == job_id and r.status in IN_FLIGHT
        ]
        for sim_id in ids:
            self.fail(sim_id, reason)
        return ids

    def expire(self, timeout: float) -> list[int]:
        """Fail in-flight simulations silent for longer than ``timeout`` seconds of the
        liveness clock."""
        now = self.clock()
        with self._lock:
            ids = [
                r.sim_id
                for r in self.records.values()
                if r.status in IN_FLIGHT and now - r.last_seen > timeout
            ]
        for sim_id in ids:
            self.fail(sim_id, f"silent for more than {timeout:g} s")
        return ids

    def job_of(self, sim_id: int) -> str | None:
        rec = self.records.get(sim_id)
        return rec.job_id if rec is not None else None

    def in_flight_ids(self) -> list[int]:
        with self._lock:
            return [r.sim_id for r in self.records.values() if r.status in IN_FLIGHT]

    # -- views --------------------------------------------------------------------------
    def done_count(self) -> int:
        return sum(r.status == "done" for r in self.records.values())

    def in_flight(self) -> int:
        return sum(r.status in IN_FLIGHT for r in self.records.values())

    def finished(self) -> bool:
        with self._lock:
            return self._finished()

    def wanted_clients(self, max_jobs: int) -> int:
        """Client jobs worth having alive: never more than simulations left to finish."""
        with self._lock:
            if self._finished():
                return 0
            return min(max_jobs, self.target - self.done_count())

    def params_of(self, sim_id: int) -> np.ndarray:
        return np.asarray(self.records[sim_id].params, dtype=np.float64)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            recs = sorted(self.records.values(), key=lambda r: r.sim_id)
        with self.sampler_lock:
            return [r.row(self.sampler.quality(r.sim_id), self.names) for r in recs]

    @property
    def columns(self) -> list[str]:
        return columns(self.names)

    def state_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "records": [asdict(r) for r in self.records.values()],
                "retry": list(self.retry),
                "target": self.target,
                "bound": [
                    {**asdict(draw), "sim_id": sim_id, "params": draw.params.tolist()}
                    for sim_id, draw in self.bound
                ],
            }

    def snapshot(self) -> dict[str, Any]:
        """The table and its sampler in one cut (both locks, the hand-out order): every record
        is a simulation the sampler's state has handed out, and no other."""
        with self._lock, self.sampler_lock:
            return {"table": self.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: simulations that were in flight when the checkpoint was taken run again."""
        with self._lock:
            self.records = {d["sim_id"]: SimRecord(**d) for d in state["records"]}
            self.retry = deque(state["retry"])
            self.target = state["target"]
            self.bound = deque(
                (d.pop("sim_id"), Draw(**d)) for d in (dict(x) for x in state.get("bound", []))
            )
            for rec in self.records.values():
                if rec.status in IN_FLIGHT:
                    rec.status = "failed"
                    rec.restarts += 1
                    rec.failures.append("in flight at the checkpoint the server resumed from")
                    self.retry.append(rec.sim_id)
