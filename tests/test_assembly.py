"""Reassembly of per-rank row blocks (breed.server.assembly), including hostile and re-sent input."""

from __future__ import annotations

import numpy as np
import pytest

from breed.protocol import FinishMessage, ProtocolError, StepMessage, decode, encode_step
from breed.server.assembly import Assembler

ROWS, COLS = 10, 4


def field(step: int, sim: int = 0) -> np.ndarray:
    return np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS) + 1000 * step + sim


def split(nranks: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, ROWS, nranks + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def blocks(step: int, nranks: int, sim: int = 0) -> list[StepMessage]:
    f = field(step, sim)
    return [
        StepMessage(sim, step, r, nranks, a, ROWS, f[a:b].copy())
        for r, (a, b) in enumerate(split(nranks))
    ]


@pytest.mark.parametrize("nranks", [1, 2, 3, 10])
def test_any_arrival_order_reassembles_each_step_once(nranks):
    msgs = [m for step in range(5) for m in blocks(step, nranks)]
    rng = np.random.default_rng(nranks)
    rng.shuffle(msgs)
    asm = Assembler()
    out = [r for m in msgs if (r := asm.add(m)) is not None]
    assert sorted(s for _, s, _ in out) == list(range(5))
    for sim_id, step, fields in out:
        assert sim_id == 0 and len(fields) == 1 and np.array_equal(fields[0], field(step))
    assert asm.completed_steps(0) == frozenset(range(5))
    assert asm.partial_steps(0) == 0 and asm.buffered_bytes == 0


def test_blocks_through_the_wire_format_reassemble_bit_exactly(token):
    asm = Assembler()
    f = np.random.default_rng(0).standard_normal((ROWS, COLS))
    results = []
    for r, (a, b) in enumerate(split(3)):
        frames = encode_step(token, 7, 2, f[a:b], rank=r, nranks=3, row_offset=a, global_rows=ROWS)
        results.append(asm.add(decode(frames, token)))
    assert results[:2] == [None, None]
    sim_id, step, got = results[2]
    assert (sim_id, step) == (7, 2) and len(got) == 1 and np.array_equal(got[0], f)


def test_duplicates_are_ignored_and_counted_never_returned_twice():
    asm = Assembler()
    first = blocks(0, 2)
    assert asm.add(first[0]) is None
    assert asm.add(first[0]) is None  # same rank, same step, still partial
    assert asm.duplicates == 1
    assert asm.add(first[1]) is not None
    for m in blocks(0, 2):  # a retried client re-sends the complete step
        assert asm.add(m) is None
    assert asm.duplicates == 3


def test_interleaved_simulations_are_independent():
    asm = Assembler()
    a, b = blocks(0, 2, sim=1), blocks(0, 3, sim=2)
    assert asm.add(a[0]) is None and asm.add(b[0]) is None and asm.add(b[1]) is None
    sim, step, (f,) = asm.add(a[1])
    assert sim == 1 and np.array_equal(f, field(0, 1))
    sim, step, (f,) = asm.add(b[2])
    assert sim == 2 and np.array_equal(f, field(0, 2))


def test_finish_is_true_once_when_all_ranks_finished_and_frees_partials():
    asm = Assembler()
    for m in blocks(0, 2):
        asm.add(m)
    asm.add(blocks(1, 2)[0])  # step 1 never completes
    assert asm.partial_steps(0) == 1 and asm.buffered_bytes == ROWS * COLS * 8
    assert asm.finish(FinishMessage(0, 0, 2, 2)) is False
    assert asm.finish(FinishMessage(0, 0, 2, 2)) is False  # duplicate
    assert asm.finish(FinishMessage(0, 1, 2, 2)) is True
    assert asm.finish(FinishMessage(0, 1, 2, 2)) is False
    assert asm.is_finished(0) and asm.partial_steps(0) == 0 and asm.buffered_bytes == 0
    assert asm.add(blocks(1, 2)[1]) is None and asm.stale == 1
    assert asm.completed_steps(0) == frozenset({0})


def test_discard_drops_partials_keeps_completed_and_allows_another_rank_count():
    asm = Assembler()
    for m in blocks(0, 2):
        asm.add(m)
    asm.add(blocks(1, 2)[0])
    asm.discard(0)
    assert asm.partial_steps(0) == 0 and asm.completed_steps(0) == frozenset({0})
    # the retry runs on 3 ranks: step 0 is a duplicate, step 1 assembles afresh
    assert all(asm.add(m) is None for m in blocks(0, 3))
    out = [asm.add(m) for m in blocks(1, 3)]
    assert out[:2] == [None, None] and np.array_equal(out[2][2][0], field(1))
    asm.discard(0, forget_completed=True)
    assert asm.completed_steps(0) == frozenset()
    assert asm.add(blocks(0, 1)[0]) is not None  # forgotten: delivered again, by request
    asm.discard(12345)  # unknown simulation: nothing to do


def test_overlapping_blocks_raise():
    asm = Assembler()
    asm.add(StepMessage(0, 0, 0, 2, 0, ROWS, field(0)[0:6]))
    with pytest.raises(ProtocolError, match="overlap"):
        asm.add(StepMessage(0, 0, 1, 2, 5, ROWS, field(0)[5:10]))


def test_gap_between_blocks_raises():
    asm = Assembler()
    asm.add(StepMessage(0, 0, 0, 2, 0, ROWS, field(0)[0:4]))
    with pytest.raises(ProtocolError, match="cover"):
        asm.add(StepMessage(0, 0, 1, 2, 5, ROWS, field(0)[5:10]))


def test_rank_changing_its_row_range_raises():
    asm = Assembler()
    asm.add(StepMessage(0, 0, 0, 2, 0, ROWS, field(0)[0:5]))
    with pytest.raises(ProtocolError, match="earlier"):
        asm.add(StepMessage(0, 1, 0, 2, 0, ROWS, field(0)[0:4]))


@pytest.mark.parametrize(
    "bad, match",
    [
        (StepMessage(0, 1, 0, 2, 0, ROWS + 1, np.zeros((5, COLS))), "shape"),
        (StepMessage(0, 1, 0, 2, 0, ROWS, np.zeros((5, COLS + 1))), "shape"),
        (StepMessage(0, 1, 0, 2, 0, ROWS, np.zeros((5, COLS), np.float32)), "dtype"),
        (StepMessage(0, 1, 0, 3, 0, ROWS, np.zeros((5, COLS))), "nranks"),
        (StepMessage(0, 1, 0, 2, 8, ROWS, np.zeros((5, COLS))), "outside"),
    ],
)
def test_inconsistent_blocks_raise(bad, match):
    asm = Assembler()
    asm.add(blocks(0, 2)[0])
    with pytest.raises(ProtocolError, match=match):
        asm.add(bad)


def test_expect_fixes_the_shape_before_data_arrives():
    asm = Assembler()
    asm.expect(3, (ROWS, COLS), "float64", nranks=2)
    with pytest.raises(ProtocolError, match="shape"):
        asm.add(StepMessage(3, 0, 0, 2, 0, 64, np.zeros((32, COLS))))
    with pytest.raises(ProtocolError, match="nranks"):
        asm.add(StepMessage(3, 0, 0, 1, 0, ROWS, np.zeros((ROWS, COLS))))
    with pytest.raises(ProtocolError, match="ranks for"):
        Assembler().add(StepMessage(4, 0, 0, 11, 0, ROWS, np.zeros((1, COLS))))


def test_finish_before_any_data_completes_the_simulation_at_once():
    """A client whose solver failed before its first step finishes with nothing sent: the
    server must learn now that every rank is done (and hand the simulation out again)."""
    asm = Assembler()
    assert asm.finish(FinishMessage(9, 0, 1, 0))
    assert not asm.finish(FinishMessage(9, 0, 1, 0))  # once only
    assert not asm.finish(FinishMessage(8, 1, 2, 0))  # rank 1 of 2 gave up early ...
    assert asm.add(blocks(0, 2, sim=8)[0]) is None  # ... rank 0 still streams
    assert asm.finish(FinishMessage(8, 0, 2, 1))


def test_nranks_mismatch_on_finish_raises():
    asm = Assembler()
    asm.add(blocks(0, 2)[0])
    with pytest.raises(ProtocolError, match="nranks"):
        asm.finish(FinishMessage(0, 0, 3, 1))


def test_memory_is_bounded():
    asm = Assembler(max_partial_steps=4)
    for step in range(4):
        asm.add(blocks(step, 2)[0])
    with pytest.raises(ProtocolError, match="incomplete steps"):
        asm.add(blocks(4, 2)[0])
    assert asm.buffered_bytes == 4 * ROWS * COLS * 8


def test_a_step_of_several_fields_is_handed_out_once_every_field_is_complete():
    asm = Assembler(nfields=2)
    asm.expect(0, (ROWS, COLS), "float64", nranks=2, field=0)
    asm.expect(0, (ROWS, 1), "float64", nranks=2, field=1)
    second = np.arange(ROWS, dtype=np.float64).reshape(ROWS, 1)
    msgs = blocks(0, 2) + [
        StepMessage(0, 0, r, 2, a, ROWS, second[a:b].copy(), field=1)
        for r, (a, b) in enumerate(split(2))
    ]
    rng = np.random.default_rng(0)
    rng.shuffle(msgs)
    out = [r for m in msgs if (r := asm.add(m)) is not None]
    assert len(out) == 1
    sim_id, step, fields = out[0]
    assert (sim_id, step) == (0, 0) and len(fields) == 2
    assert np.array_equal(fields[0], field(0)) and np.array_equal(fields[1], second)
    assert asm.partial_steps(0) == 0 and asm.buffered_bytes == 0
    with pytest.raises(ProtocolError, match="field 2 out of range"):
        asm.add(StepMessage(0, 1, 0, 2, 0, ROWS, second[:5].copy(), field=2))
    with pytest.raises(ProtocolError, match="shape"):
        asm.add(StepMessage(0, 1, 0, 2, 0, ROWS, np.zeros((5, COLS)), field=1))
