"""Checkpoint contents for restarts: received-steps ledger, buffer samples, table + sampler cut,
run-log truncation, atomic writes under SIGKILL (breed.server.recovery, breed.server.simtable)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from breed.config import validate
from breed.learning.reservoir import FifoBuffer, Reservoir
from breed.sampling import make_sampler
from breed.server.recovery import (
    StepLedger,
    capture,
    restore,
    truncate_logs,
)
from breed.server.simtable import SimTable

F = 4


def put(buf, i: int) -> None:
    buf.put(np.full(5, 100.0 + i), i % 5, np.full(F, float(i), np.float32), i // 5)


# -- ledger -------------------------------------------------------------------------------------
def test_ledger_records_each_step_once_and_round_trips() -> None:
    led = StepLedger(11)
    assert not led.has(3, 4) and led.count(3) == 0
    assert led.add(3, 4) and not led.add(3, 4)
    assert led.add(3, 10) and led.add(40, 0)  # grows
    assert led.has(3, 4) and led.count(3) == 2 and led.total() == 3
    with pytest.raises(ValueError):
        led.add(3, 11)
    state = led.state_dict()
    assert len(state["bits"]) <= (41 * 11 + 7) // 8  # compact: one bit per (sim, step)
    again = StepLedger(11)
    again.load_state_dict(state)
    assert again.pairs().tolist() == [[3, 4], [3, 10], [40, 0]] and again.count(3) == 2
    with pytest.raises(ValueError, match="steps"):
        StepLedger(12).load_state_dict(state)


# -- buffer snapshot ----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [Reservoir, FifoBuffer])
def test_buffer_snapshot_restores_samples_seen_counters_and_rng(cls) -> None:
    a = cls(capacity=12, watermark=4, field_size=F, seed=7)
    for i in range(12):
        put(a, i)
    for _ in range(2):
        a.sample_batch(3)
    for i in range(12, 14 if cls is Reservoir else 12):
        put(a, i)  # the reservoir replaces seen samples
    snap = a.snapshot()
    b = cls(capacity=12, watermark=4, field_size=F, seed=99)
    b.restore(snap)
    assert b.stats() == a.stats()
    for _ in range(2):  # same RNG, same samples, same bookkeeping -> same batches
        x, y = a.sample_batch(3, timeout=1), b.sample_batch(3, timeout=1)
        assert (x.sim_ids == y.sim_ids).all() and (x.targets == y.targets).all()
    assert b.stats() == a.stats()
    with pytest.raises(ValueError, match="capacity"):
        cls(capacity=13, watermark=4, field_size=F).restore(snap)


def test_restored_reservoir_never_evicts_an_unseen_sample() -> None:
    a = Reservoir(capacity=6, watermark=2, field_size=F, seed=1)
    for i in range(6):
        put(a, i)
    a.sample_batch(2)
    b = Reservoir(capacity=6, watermark=2, field_size=F, seed=1)
    b.restore(a.snapshot())
    seen_before = b.stats()["fill"] - b.stats()["unseen"]
    for i in range(6, 6 + seen_before):
        assert b.offer(np.full(5, 1.0), 0, np.zeros(F, np.float32), 100 + i)
    assert not b.can_accept()  # only unseen samples left: backpressure, nothing evicted
    assert b.stats()["unseen"] == 6


# -- table + sampler + ledger + buffer ----------------------------------------------------------
def test_capture_is_one_cut_and_restore_hands_in_flight_out_again() -> None:
    cfg = validate(
        {
            "study": {"simulations": 4},
            "solver": {"grid": 3, "steps": 4},
            "sampler": {"name": "breed"},
        }
    )
    lock = threading.Lock()
    sampler = make_sampler(cfg)
    table = SimTable(4, sampler, lock, max_retries=1)
    led, buf, counts = StepLedger(5), Reservoir(40, 2, F, seed=0), Counter(samples=3)
    first = table.request("job-1", "c")
    second = table.request("job-2", "c")
    for step in range(5):
        led.add(first.sim_id, step)
        put(buf, step)
    table.complete(first.sim_id)
    led.add(second.sim_id, 0)
    state = capture(
        ingest_lock=threading.Lock(), ledger=led, table=table, buffer=buf, counts=counts
    )
    assert len(state["table"]["records"]) == state["sampler"]["handed"] == 2

    sampler2 = make_sampler(cfg)
    table2 = SimTable(4, sampler2, lock, max_retries=1)
    led2, buf2, counts2 = StepLedger(5), Reservoir(40, 2, F, seed=0), Counter()
    restore(state, ledger=led2, table=table2, sampler=sampler2, buffer=buf2, counts=counts2)
    assert led2.count(first.sim_id) == 5 and led2.has(second.sim_id, 0)
    assert buf2.stats()["received"] == 5 and counts2["samples"] == 3
    again = table2.request("job-3", "c")  # the simulation in flight, same parameters
    assert again.sim_id == second.sim_id and again.params == second.params
    assert again.attempts == 2 and again.restarts == 1
    # a server restart is not the simulation's fault: max_retries=1 still allows one failure
    assert table2.fail(again.sim_id, "client died") == "retry"
    third = table2.request("job-4", "c")
    assert third.sim_id == second.sim_id and table2.fail(third.sim_id, "again") == "lost"
    fresh = table2.request("job-5", "c")  # the next draw continues the sampler's sequence
    assert fresh.sim_id == 2 and sampler2.handed == 3


# -- run logs -----------------------------------------------------------------------------------
def test_truncate_logs_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    rows = [{"kind": "train", "iteration": i} for i in (5, 10, 15, 20)]
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"kind": "tra'
    )  # torn last line
    (tmp_path / "per_sample_loss.csv").write_text(
        "iteration,sim_id,step,sample_loss,batch_loss,delta,Q,uniform\n"
        "10,0,1,0.5,0.4,,,1\n20,0,2,0.5,0.4,0.1,,1\n"
    )
    dropped = truncate_logs(tmp_path, 10)
    assert dropped == {"metrics.jsonl": 3, "per_sample_loss.csv": 1}
    kept = [
        json.loads(x)["iteration"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert kept == [5, 10]
    assert (tmp_path / "per_sample_loss.csv").read_text().splitlines()[1:] == ["10,0,1,0.5,0.4,,,1"]


# -- atomic checkpoint writes -------------------------------------------------------------------
WRITER = """
import sys
from pathlib import Path
from breed.fsio import atomic_write_bytes
path, size = Path(sys.argv[1]), int(sys.argv[2])
k = 0
while True:
    k = k % 250 + 1
    atomic_write_bytes(path, bytes([k]) * size)
"""


@pytest.mark.timeout(60)
def test_sigkill_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path: Path) -> None:
    path, size = tmp_path / "checkpoint.pt", 4 << 20
    for kill in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(size)])
        try:
            deadline = time.monotonic() + 20
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.05 + 0.037 * kill)  # land at different points of a write
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        data = path.read_bytes()
        assert len(data) == size and data == data[:1] * size  # one whole version, never mixed
