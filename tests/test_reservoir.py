"""Reservoir and FIFO invariants: capacity, watermark, no unseen sample evicted, backpressure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breed.config import validate
from breed.learning.buffer import Batch, BufferClosedError, SampleBuffer
from breed.learning.normalisation import Normalisation
from breed.learning.reservoir import (
    FifoBuffer,
    Reservoir,
    buffer_from_config,
    make_buffer,
)
from breed.learning.validation import heat_problem

F = 4  # field size of the tiny samples used here


def sample(i: int) -> tuple[np.ndarray, int, np.ndarray, int]:
    """Sample number ``i`` as put's (params, step, field, sim_id): every value encodes ``i``
    so a batch row can be traced back."""
    return np.full(5, i, np.float64), i % 7, np.full(F, i, np.float32), i


def fill(buf: SampleBuffer, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        assert buf.offer(*sample(i))


def drain(buf: SampleBuffer, size: int) -> set[int]:
    """Close the buffer and train until finished; returns every sim id seen in a batch."""
    buf.close()
    seen: set[int] = set()
    for _ in range(100_000):
        batch = buf.sample_batch(size, timeout=1.0)
        if batch is None:
            break
        seen.update(batch.sim_ids.tolist())
    assert buf.finished()
    return seen


@pytest.mark.parametrize("cls", [Reservoir, FifoBuffer])
def test_rows_are_consistent_and_typed(cls: type[SampleBuffer]) -> None:
    buf = cls(capacity=8, watermark=3, field_size=F, seed=1)
    fill(buf, 5)
    batch = buf.sample_batch(3)
    assert isinstance(batch, Batch) and len(batch) == 3
    assert batch.inputs.shape == (3, 6) and batch.inputs.dtype == np.float32
    assert batch.targets.shape == (3, F) and batch.targets.dtype == np.float32
    assert batch.sim_ids.dtype == np.int64 and batch.steps.dtype == np.int64
    assert not batch.normalised  # no Normalisation given: raw values, the trainer refuses
    for row in range(3):  # field, inputs, id and step of a row all come from the same sample
        i = batch.sim_ids[row]
        assert (batch.targets[row] == i).all() and (batch.inputs[row, :5] == i).all()
        assert batch.steps[row] == i % 7 and batch.inputs[row, 5] == i % 7


def test_capacity_never_exceeded_and_replacement_once_full() -> None:
    buf = Reservoir(capacity=5, watermark=2, field_size=F, seed=0)
    for i in range(50):
        if not buf.can_accept():
            buf.sample_batch(2)
        assert buf.offer(*sample(i))
        assert buf.fill <= 5
    stats = buf.stats()
    assert stats["fill"] == 5 and stats["received"] == 50 and stats["evicted"] == 45


def test_watermark_starts_training_and_stays_started() -> None:
    buf = Reservoir(capacity=10, watermark=4, field_size=F, seed=0)
    fill(buf, 3)
    assert not buf.ready()
    assert buf.sample_batch(2, timeout=0.05) is None  # not started: waits, then times out
    assert buf.stats()["batch_waits"] == 1
    fill(buf, 1, start=3)
    assert buf.ready()
    for _ in range(20):
        assert buf.sample_batch(4) is not None
    assert buf.ready()  # sticky, however many times the samples were reused


def test_closed_below_watermark_still_trains() -> None:
    buf = Reservoir(capacity=10, watermark=8, field_size=F, seed=0)
    fill(buf, 2)
    assert not buf.ready()
    assert drain(buf, 4) == {0, 1}


def test_batch_without_replacement_when_possible_and_counters() -> None:
    buf = Reservoir(capacity=6, watermark=6, field_size=F, seed=3)
    fill(buf, 6)
    batch = buf.sample_batch(6)
    assert sorted(batch.sim_ids.tolist()) == list(range(6))
    assert buf.all_seen() and (buf.seen_counts() == 1).all()
    big = buf.sample_batch(10)  # larger than the buffer: with replacement
    assert len(big) == 10
    assert buf.seen_counts().sum() == 16


def test_batches_are_independent_copies() -> None:
    buf = Reservoir(capacity=3, watermark=3, field_size=F, seed=0)
    fill(buf, 3)
    batch = buf.sample_batch(3)
    before = (batch.inputs.copy(), batch.targets.copy(), batch.sim_ids.copy())
    fill(buf, 3, start=100)  # every slot is replaced
    assert drain(buf, 3) >= {100, 101, 102}
    assert (batch.inputs == before[0]).all() and (batch.targets == before[1]).all()
    assert (batch.sim_ids == before[2]).all()
    batch.targets[:] = -1  # and writing into a batch does not touch the buffer
    assert buf.stats()["fill"] == 3


def test_offer_refuses_when_every_sample_is_unseen() -> None:
    buf = Reservoir(capacity=3, watermark=2, field_size=F, seed=0)
    fill(buf, 3)
    assert not buf.can_accept()
    assert not buf.offer(*sample(9))
    assert buf.stats()["refused"] == 1 and buf.stats()["received"] == 3
    buf.sample_batch(1)
    assert buf.can_accept() and buf.offer(*sample(9))
    assert not buf.can_accept()  # the one seen sample was replaced by an unseen one


def test_normalised_on_the_way_in() -> None:
    norm = Normalisation.from_problem(heat_problem(grid=2, steps=20, bounds=(100.0, 500.0)))
    buf = Reservoir(capacity=2, watermark=1, field_size=F, seed=0, normalisation=norm)
    params = np.array([100.0, 200.0, 300.0, 400.0, 500.0])
    field = np.array([100.0, 300.0, 500.0, 400.0])
    buf.offer(params, 5, field, 0)
    batch = buf.sample_batch(1)
    assert batch.normalised
    np.testing.assert_allclose(batch.targets[0], [-1.0, 0.0, 1.0, 0.5])
    np.testing.assert_allclose(batch.inputs[0], [-1.0, -0.5, 0.0, 0.5, 1.0, 0.25])
    np.testing.assert_allclose(batch.inputs[0], norm.inputs(params, 5))
    np.testing.assert_allclose(batch.targets[0], norm.field(field))


def test_buffer_from_config() -> None:
    cfg = validate(
        {
            "buffer": {"kind": "fifo", "capacity": 7, "watermark": 3},
            "solver": {"grid": 4, "bounds": [0.0, 10.0]},
        }
    )
    buf = buffer_from_config(cfg)
    assert isinstance(buf, FifoBuffer) and buf.capacity == 7 and buf.field_size == 16
    expected = Normalisation.from_problem(heat_problem(grid=4, steps=100, bounds=(0.0, 10.0)))
    assert buf.normalisation == expected


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="watermark"):
        Reservoir(capacity=3, watermark=4, field_size=F)
    buf = Reservoir(capacity=3, watermark=1, field_size=F, dim=5)
    with pytest.raises(ValueError, match="expects 4"):
        buf.offer(np.zeros(5), 0, np.zeros(5), 0)
    with pytest.raises(ValueError, match="parameters"):
        buf.offer(np.zeros(4), 0, np.zeros(4), 0)
    with pytest.raises(ValueError, match="batch size"):
        buf.sample_batch(0)
    with pytest.raises(ValueError, match="buffer.kind"):
        make_buffer("lifo", 3, 1, F)
    buf.close()
    with pytest.raises(BufferClosedError):
        buf.offer(*sample(0))


def test_deterministic_given_seed() -> None:
    def run(seed: int) -> list[list[int]]:
        buf = Reservoir(capacity=8, watermark=4, field_size=F, seed=seed)
        out = []
        for i in range(40):
            if not buf.offer(*sample(i)):
                out.append(buf.sample_batch(3).sim_ids.tolist())
                assert buf.offer(*sample(i))
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 12),
    ops=st.lists(st.one_of(st.just(0), st.integers(1, 6)), min_size=1, max_size=120),
    seed=st.integers(0, 2**16),
)
def test_no_unseen_sample_is_ever_evicted(capacity: int, ops: list[int], seed: int) -> None:
    """Random interleavings of offers (0) and batches (size k): every accepted sample is in
    some batch by the end of the stream, the buffer never exceeds its capacity, and a refusal
    happens only when every held sample is unseen."""
    buf = Reservoir(capacity=capacity, watermark=1, field_size=F, seed=seed)
    accepted: set[int] = set()
    trained: set[int] = set()
    nxt = 0
    for op in ops:
        if op == 0:
            unseen_before = buf.stats()["unseen"]
            if buf.offer(*sample(nxt)):
                accepted.add(nxt)
            else:
                assert buf.fill == capacity and unseen_before == capacity
            nxt += 1
        else:
            batch = buf.sample_batch(op, timeout=0)
            if batch is not None:
                trained.update(batch.sim_ids.tolist())
        assert buf.fill <= capacity
        assert buf.stats()["unseen"] == len(accepted - trained)
    trained |= drain(buf, 3)
    assert trained == accepted


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 10),
    ops=st.lists(st.one_of(st.just(0), st.integers(1, 5)), min_size=1, max_size=80),
)
def test_fifo_pops_oldest_first_each_once(capacity: int, ops: list[int]) -> None:
    buf = FifoBuffer(capacity=capacity, watermark=1, field_size=F, seed=0)
    queue: list[int] = []
    popped: list[int] = []
    nxt = 0
    for op in ops:
        if op == 0:
            ok = buf.offer(*sample(nxt))
            assert ok == (len(queue) < capacity)
            if ok:
                queue.append(nxt)
            nxt += 1
        else:
            batch = buf.sample_batch(op, timeout=0)
            want = min(op, capacity)
            if len(queue) >= want:
                assert batch is not None and batch.sim_ids.tolist() == queue[:op]
                del queue[:op]
                popped += batch.sim_ids.tolist()
            else:
                assert batch is None
        assert buf.fill == len(queue) <= capacity
    buf.close()
    while (batch := buf.sample_batch(3, timeout=0)) is not None:
        popped += batch.sim_ids.tolist()
    assert popped == sorted(popped) and len(set(popped)) == len(popped)
    assert buf.finished()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["reservoir", "fifo"])
def test_backpressure_blocks_put_until_a_batch_is_drawn(kind: str) -> None:
    buf = make_buffer(kind, capacity=4, watermark=4, field_size=F, seed=0)
    fill(buf, 4)
    assert not buf.wait_can_accept(timeout=0.05)
    assert buf.put(*sample(4), timeout=0.05) is False  # times out, stores nothing
    done = threading.Event()
    results: list[bool] = []

    def producer() -> None:
        results.append(buf.put(*sample(5), timeout=5.0))
        done.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        assert not done.wait(0.3), "put returned while every sample was unseen"
        assert buf.stats()["received"] == 4
        assert buf.sample_batch(2) is not None
        assert done.wait(3.0), "put still blocked after a batch made room"
        assert results == [True]
        assert buf.stats()["received"] == 5 and buf.stats()["put_waits"] == 2
    finally:
        buf.close()
        thread.join(5)
    assert not thread.is_alive()


@pytest.mark.timeout(10)
def test_close_wakes_a_blocked_put_and_a_waiting_trainer() -> None:
    buf = Reservoir(capacity=2, watermark=2, field_size=F, seed=0)
    fill(buf, 2)
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            buf.put(*sample(2))
        except BufferClosedError as exc:
            errors.append(exc)

    empty = Reservoir(capacity=2, watermark=2, field_size=F, seed=0)
    got: list[Batch | None] = []
    threads = [
        threading.Thread(target=producer, daemon=True),
        threading.Thread(target=lambda: got.append(empty.sample_batch(2)), daemon=True),
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    buf.close()
    empty.close()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 1 and got == [None]


@pytest.mark.timeout(20)
def test_threaded_stream_trains_on_every_sample() -> None:
    """A real receiver thread and a training loop: nothing dropped, nothing exceeds capacity."""
    buf = Reservoir(capacity=16, watermark=8, field_size=F, seed=2)
    total = 400

    def receiver() -> None:
        for i in range(total):
            while not buf.wait_can_accept(timeout=0.01):
                pass
            assert buf.offer(*sample(i))
        buf.close()

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    trained: set[int] = set()
    max_fill = 0
    while not buf.finished():
        batch = buf.sample_batch(5, timeout=1.0)
        if batch is not None:
            trained.update(batch.sim_ids.tolist())
        max_fill = max(max_fill, buf.fill)
    thread.join(5)
    assert trained == set(range(total)) and max_fill <= 16
    assert buf.stats()["received"] == total


def test_a_recycling_reservoir_keeps_serving_after_the_stream() -> None:
    """``training.iterations``: once closed and all seen, batches still come (reused samples)
    when ``recycle`` is set; without it the buffer says it is finished."""
    for recycle in (False, True):
        buf = Reservoir(capacity=8, watermark=4, field_size=F, seed=0)
        buf.recycle = recycle
        fill(buf, 6)
        buf.close()
        while not buf.all_seen():
            assert buf.sample_batch(4, timeout=1.0) is not None
        assert buf.finished()
        after = [buf.sample_batch(4, timeout=0.1) for _ in range(3)]
        if recycle:
            assert all(b is not None and set(b.sim_ids.tolist()) <= set(range(6)) for b in after)
        else:
            assert after == [None, None, None]
