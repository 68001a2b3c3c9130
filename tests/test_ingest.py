"""Ingest process: shared-memory ring, bulk hand-over to the buffer, real sockets."""

from __future__ import annotations

import secrets
import time

import numpy as np
import pytest
import zmq

from breed.config import validate
from breed.learning.reservoir import buffer_from_config
from breed.learning.trainer import Trainer
from breed.learning.validation import heat_problem
from breed.protocol import encode_step
from breed.server.datapath import StepSpec
from breed.server.ingest import IngestProcess, SampleRing, WorkerSpec

CFG = validate({"solver": {"grid": 8, "steps": 4}, "buffer": {"capacity": 10, "watermark": 5}})


def test_offer_many_equals_one_by_one_puts() -> None:
    norm = Trainer(CFG).normalisation
    one, many = buffer_from_config(CFG, norm), buffer_from_config(CFG, norm)
    rng = np.random.default_rng(0)
    params, fields = rng.uniform(100, 500, (7, 5)), rng.uniform(100, 500, (7, 64))
    steps, ids = np.arange(7), np.arange(7) + 3
    for k in range(7):
        one.put(params[k], int(steps[k]), fields[k], int(ids[k]))
    assert many.offer_many(params, steps, fields, ids) == 7
    a, b = one.sample_batch(7), many.sample_batch(7)
    order_a, order_b = np.argsort(a.sim_ids), np.argsort(b.sim_ids)
    assert np.allclose(a.inputs[order_a], b.inputs[order_b])
    assert np.allclose(a.targets[order_a], b.targets[order_b], atol=1e-6)
    pre = buffer_from_config(CFG, norm)  # already-normalised fields give the same samples
    assert pre.offer_many(params, steps, norm.field(fields), ids, normalised=True) == 7


def test_offer_many_never_evicts_unseen() -> None:
    buf = buffer_from_config(CFG, Trainer(CFG).normalisation)
    rng = np.random.default_rng(1)
    params, fields = rng.uniform(100, 500, (7, 5)), rng.uniform(100, 500, (7, 64))
    assert buf.offer_many(params, np.arange(7), fields, np.arange(7)) == 7
    assert buf.offer_many(params, np.arange(7), fields, np.arange(7)) == 3  # capacity 10
    assert buf.offer_many(params, np.arange(7), fields, np.arange(7)) == 0  # all unseen
    buf.sample_batch(4)
    assert buf.offer_many(params, np.arange(7), fields, np.arange(7)) >= 1


def test_ring_wraps_and_keeps_order() -> None:
    ring = SampleRing(4, 3)
    try:
        for round_ in range(3):
            for k in range(3):
                assert ring.free() > 0
                ring.write(10 * round_ + k, k, np.full(3, k, np.float32))
            assert ring.available() == 0  # staged, not yet published
            ring.publish()
            meta, fields = ring.peek(10)
            assert list(meta[:, 0]) == [10 * round_ + k for k in range(3)]
            assert (fields[:, 0] == np.arange(3)).all()
            ring.release(len(meta))
            assert ring.available() == 0 and ring.free() == 4
    finally:
        ring.close()


@pytest.mark.timeout(60)
def test_ingest_process_end_to_end() -> None:
    token = secrets.token_bytes(32)
    heat = heat_problem(grid=8, steps=4, bounds=(100.0, 500.0))
    spec = WorkerSpec(
        token=token,
        bind="tcp://127.0.0.1",
        ring="",
        slots=8,
        field_size=64,
        spec=StepSpec.of(heat),
        max_payload=64 * 8,
        max_message=1 << 16,
        center=300.0,
        scale=200.0,
        hwm=4,
    )
    ing = IngestProcess(spec)
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.DEALER)  # the client API's data socket
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    try:
        push.connect(ing.address)
        ing.assign(7)  # lambda stays with the server: the worker learns only the id
        fields = [np.full((8, 8), 200.0 + 10 * t) for t in range(5)]
        for t, field in enumerate(fields):
            push.send_multipart(encode_step(token, 7, t, field))
        push.send_multipart(encode_step(secrets.token_bytes(32), 7, 0, fields[0]))  # stranger
        push.send_multipart(encode_step(token, 99, 0, fields[0]))  # never assigned
        deadline = time.monotonic() + 20
        while ing.ring.available() < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        meta, got = ing.ring.peek(16)
        ing.ring.release(len(meta))
        assert sorted(meta[:, 1]) == [0, 1, 2, 3, 4] and set(meta[:, 0]) == {7}
        for row, t in zip(got, meta[:, 1].astype(int), strict=True):
            assert np.allclose(row, (200.0 + 10 * t - 300.0) / 200.0)  # normalised off-process
        deadline = time.monotonic() + 10
        while ing.poll_counts().get("unknown_sim", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        counts = ing.poll_counts()
        assert counts["rejected_token"] == 1 and counts["unknown_sim"] == 1
    finally:
        push.close(0)
        ing.close()
    assert not ing.alive()
