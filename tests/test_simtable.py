"""Simulation table: late binding, completion counted once, retries with the same λ, give-up."""

from __future__ import annotations

import threading

import numpy as np

from breed.sampling.base import Draw, Sampler
from breed.server.simtable import SimTable


class CountingSampler(Sampler):
    """Deterministic draws 0, 1, 2, ... (the table only needs ``next``)."""

    def __init__(self) -> None:
        super().__init__(budget=0, bounds=(100.0, 500.0), dim=5)
        self.calls = 0

    def _draw(self, sim_id: int) -> Draw:
        self.calls += 1
        return Draw(np.full(5, 100.0 + self.calls))


def table(budget: int = 3, retries: int = 1, give_up: str = "resample") -> SimTable:
    return SimTable(budget, CountingSampler(), threading.Lock(), retries, give_up)


def test_late_binding_draws_only_when_asked() -> None:
    t = table()
    assert t.sampler.calls == 0
    rec = t.request("job-a", "host:1")
    assert t.sampler.calls == 1 and rec.sim_id == 0 and rec.params[0] == 101.0


def test_budget_then_wait_then_stop() -> None:
    t = table(budget=2)
    a, b = t.request(None, "c"), t.request(None, "c")
    assert t.request(None, "c") == "wait"  # both in flight: one may still fail
    assert t.complete(a.sim_id) and t.complete(b.sim_id)
    assert not t.complete(b.sim_id)  # counted once
    assert t.request(None, "c") == "stop" and t.finished()
    assert t.wanted_clients(10) == 0


def test_retry_same_params_then_resample() -> None:
    t = table(budget=1, retries=1)
    first = t.request("j1", "c")
    assert t.fail(first.sim_id, "killed") == "retry"
    again = t.request("j2", "c")
    assert again.sim_id == first.sim_id and again.params == first.params and again.attempts == 2
    assert t.fail(again.sim_id, "killed") == "lost"
    fresh = t.request("j3", "c")  # given up: a new simulation keeps the budget
    assert fresh.sim_id == 1 and fresh.params != first.params
    t.complete(fresh.sim_id)
    assert t.finished() and t.done_count() == 1


def test_drop_shrinks_target() -> None:
    t = table(budget=2, retries=0, give_up="drop")
    a, b = t.request(None, "c"), t.request(None, "c")
    assert t.fail(a.sim_id, "x") == "lost"
    t.complete(b.sim_id)
    assert t.finished() and t.target == 1


def test_fail_job_and_expire() -> None:
    t = table(budget=3)
    a = t.request("job-1", "c")
    b = t.request("job-2", "c")
    assert t.fail_job("job-1", "node failure") == [a.sim_id]
    assert t.expire(timeout=-1.0) == [b.sim_id]
    statuses = {r["sim_id"]: r["status"] for r in t.rows()}
    assert statuses == {a.sim_id: "failed", b.sim_id: "failed"}


def test_late_delivery_after_failure_counts_once() -> None:
    t = table(budget=1)
    a = t.request("j", "c")
    t.fail(a.sim_id, "silent")
    assert t.complete(a.sim_id)  # the "dead" attempt delivered everything after all
    assert not t.retry and t.request(None, "c") == "stop"


def test_state_round_trip_requeues_in_flight() -> None:
    t = table(budget=3)
    a, b = t.request("j", "c"), t.request("j", "c")
    t.complete(a.sim_id)
    u = table(budget=3)
    u.load_state_dict(t.state_dict())
    assert u.done_count() == 1 and list(u.retry) == [b.sim_id]
    again = u.request("k", "c")
    assert again.sim_id == b.sim_id and again.params == b.params
