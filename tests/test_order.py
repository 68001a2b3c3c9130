"""Deterministic mode's ordering (breed.server.order): the batches, the reservoir and every λ
depend on the config and seed only, not on the order or the moment samples arrive.

Real parts throughout: a validated config, the heat problem, Breed, the simulation table, the
sample sink and the reservoir; only the clients are replaced by a driver that delivers each
simulation's steps (in an order and at moments a schedule seed picks), and the trainer by a
loss computed from the batch (what matters here is which samples a batch holds).
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import pytest
import torch

from breed.config import validate
from breed.learning.reservoir import buffer_from_config
from breed.problems import problem_of
from breed.sampling import make_sampler
from breed.server.checkpoint import from_plain, to_plain
from breed.server.order import OrderedIngest, Pace, StagedIntake
from breed.server.simtable import SimTable
from breed.server.sink import SampleSink

S, T, LAG, PER = 16, 6, 3, 3
CFG = {
    "seed": 4,
    "study": {"simulations": S},
    "solver": {"grid": 4, "steps": T},
    "model": {"batch_size": 8},
    "training": {"deterministic": True, "iterations_per_simulation": PER},
    "buffer": {"capacity": 40, "watermark": 14},
    "sampler": {
        "name": "breed",
        "lag": LAG,
        "breed": {"sigma": 0.05, "period": 4, "window": 6, "r_start": 0.9, "r_end": 0.9},
    },
}


class Run:
    """The server's pieces of one deterministic run, driven in one thread."""

    def __init__(self, cfg: dict | None = None) -> None:
        self.cfg = validate(cfg or CFG)
        self.problem = problem_of(self.cfg)
        self.sampler = make_sampler(self.cfg)
        self.lock = threading.Lock()
        self.table = SimTable(S, self.sampler, self.lock, 1, "resample", problem=self.problem)
        self.reservoir = buffer_from_config(self.cfg)
        self.intake = StagedIntake(self.reservoir, T + 1)
        self.sink = SampleSink(self.table, self.intake, T, Counter(), self.done)
        tc = self.cfg["training"]
        self.order = (
            OrderedIngest(
                self.intake,
                self.table,
                self.sampler,
                self.lock,
                tc["iterations_per_simulation"],
                self.cfg["sampler"]["lag"],
            )
            if tc["deterministic"]
            else None
        )
        self.iteration = 0
        self.batches: list[tuple[list[int], list[int]]] = []

    def done(self, sim_id: int) -> None:
        self.table.complete(sim_id)

    def train(self) -> None:
        batch = self.reservoir.sample_batch(8, timeout=0)
        assert batch is not None
        losses = batch.targets.astype(np.float64).mean(axis=1) ** 2
        self.batches.append((batch.sim_ids.tolist(), batch.steps.tolist()))
        self.sampler.on_losses(self.iteration, batch.sim_ids, batch.steps, losses)
        self.iteration += 1
        self.sampler.on_iteration(self.iteration)


def field(sim_id: int, step: int, size: int) -> np.ndarray:
    """A simulation's step, the same whoever sends it (kelvin, within solver.bounds)."""
    return np.random.default_rng([sim_id, step]).uniform(100.0, 500.0, size)


def drive(run: Run, clients: int, schedule: int, budget: int = S * PER) -> Run:
    """Clients take work when they can, send their steps in a shuffled order and at moments
    picked by ``schedule``; training runs whenever the order lets it."""
    rng = np.random.default_rng(schedule)
    size = run.problem.sample_size
    held: list[tuple[int, list[int]]] = []  # (sim, steps still to send) per busy client
    for _ in range(100_000):
        while len(held) < clients:
            rec = run.table.request(None, "driver")
            if isinstance(rec, str):
                break
            held.append((rec.sim_id, rng.permutation(T + 1).tolist()))
        if held and (rng.random() < 0.7 or not run.order.advance(run.iteration)):
            k = int(rng.integers(len(held)))
            sim_id, todo = held[k]
            n = int(rng.integers(1, 4))
            steps = np.array(todo[:n])
            run.sink.store(
                np.full(len(steps), sim_id),
                steps,
                np.stack([field(sim_id, t, size) for t in steps]),
            )
            del todo[:n]
            if not todo:
                held.pop(k)
        elif run.order.advance(run.iteration):
            if run.order.drained and not run.reservoir.closed:
                run.reservoir.close()
            if run.iteration >= budget:
                return run
            run.train()
    raise AssertionError("the driver did not finish")


def params(run: Run) -> list[tuple]:
    return [
        (r.sim_id, tuple(r.params), r.source, r.generation, r.parent, r.sigma)
        for r in sorted(run.table.records.values(), key=lambda r: r.sim_id)
    ]


@pytest.mark.timeout(60)
def test_batches_and_parameters_do_not_depend_on_arrival() -> None:
    one = drive(Run(), clients=1, schedule=0)
    many = drive(Run(), clients=4, schedule=1)
    other = drive(Run(), clients=3, schedule=7)
    assert one.batches == many.batches == other.batches
    assert params(one) == params(many) == params(other)
    assert len(params(one)) == S and one.iteration == S * PER
    assert any(p[2] == "proposal" for p in params(one)), "Breed never steered"
    assert one.reservoir.stats()["evicted"] > 0  # eviction happened, and in the same slots
    assert np.array_equal(one.reservoir.seen_counts(), many.reservoir.seen_counts())


@pytest.mark.timeout(10)
def test_a_client_waits_until_its_predecessors_are_ingested() -> None:
    run = Run()
    recs = [run.table.request(None, "c") for _ in range(LAG)]
    assert [r.sim_id for r in recs] == list(range(LAG))
    assert run.table.request(None, "c") == "wait"  # sim LAG needs sim 0 ingested
    assert run.table.drawn == LAG and not run.table.finished()
    size = run.problem.sample_size
    for sim_id in (1, 2):  # later simulations complete first: nothing is ingested
        steps = np.arange(T + 1)
        run.sink.store(
            np.full(T + 1, sim_id), steps, np.stack([field(sim_id, t, size) for t in steps])
        )
    assert not run.order.advance(0) and run.order.next_id == 0 and run.reservoir.fill == 0
    assert run.table.request(None, "c") == "wait"
    steps = np.arange(T + 1)[::-1]  # reversed: ingested in step order all the same
    run.sink.store(np.full(T + 1, 0), steps, np.stack([field(0, t, size) for t in steps]))
    assert run.order.advance(0)  # two simulations (14 samples) reach the watermark: train
    assert run.order.next_id == 2 and run.order.target == 2 * PER
    assert run.intake.stats()["staged_sims"] == 1  # sim 2 waits for its iterations
    first = run.reservoir.snapshot()["arrays"]
    assert first["_sim_ids"][: T + 1].tolist() == [0] * (T + 1)
    assert first["_steps"][: T + 1].tolist() == list(range(T + 1))
    rec = run.table.request(None, "c")
    assert not isinstance(rec, str) and rec.sim_id == LAG  # bound once sim 0 was ingested


@pytest.mark.timeout(10)
def test_a_lost_simulation_is_skipped_and_replaced() -> None:
    run = Run()
    first = run.table.request(None, "c")
    assert run.table.fail(first.sim_id, "killed") == "retry"
    again = run.table.request(None, "c")
    assert again.sim_id == 0 and run.table.fail(0, "killed") == "lost"
    assert not run.order.advance(0) and run.order.next_id == 1 and run.order.ingested == 0
    assert run.sampler.handed == LAG + 1  # sim 0's replacement, bound at once
    assert [d[0] for d in run.table.bound][-1] == LAG


@pytest.mark.timeout(10)
def test_order_and_bound_draws_survive_a_checkpoint(tmp_path) -> None:
    run = Run()
    size = run.problem.sample_size
    run.table.request(None, "c")
    run.sink.store(np.full(3, 0), np.arange(3), np.stack([field(0, t, size) for t in range(3)]))
    path = tmp_path / "state.pt"
    torch.save(to_plain({"order": run.order.state_dict(), "table": run.table.snapshot()}), path)
    state = from_plain(torch.load(path, weights_only=True))
    again = Run()
    again.sampler.load_state_dict(state["table"]["sampler"])
    again.table.load_state_dict(state["table"]["table"])
    again.order.load_state_dict(state["order"])
    assert [(i, d.params.tolist()) for i, d in again.table.bound] == [
        (i, d.params.tolist()) for i, d in run.table.bound
    ]
    assert again.intake.stats()["staged"] == 3 and again.order.next_id == 0


@pytest.mark.timeout(10)
def test_pace_holds_training_at_n_per_received_simulation() -> None:
    cfg = {**CFG, "training": {"iterations_per_simulation": 2}}
    run = Run(cfg)
    pace = Pace(2, run.table, run.reservoir)
    rec = run.table.request(None, "c")
    assert pace.hold(0)  # nothing received yet
    run.table.complete(rec.sim_id)
    assert not pace.hold(1) and pace.hold(2)
    for _ in range(run.reservoir.capacity):  # full of unseen samples: the clients are blocked
        run.reservoir.offer(np.full(5, 300.0), 0, field(0, 0, run.problem.sample_size), 0)
    assert not run.reservoir.can_accept() and not pace.hold(2)
