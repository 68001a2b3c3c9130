"""The receiver: one data path for both ingest modes.

A real receiver thread (thread ingest, or the data path in a child process with ``ingest:
process``), a real simulation table and reservoir, and a client's real ZeroMQ sockets play the
same scripted exchange — a client killed and retried re-sending every step, a client that
finishes with a step missing, a client that breaks the problem — and both modes must keep the
same books: the same simulations done and handed out again, the same samples in the buffer,
the same counters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
import zmq

from breed.config import validate
from breed.learning.reservoir import buffer_from_config
from breed.problems import problem_of
from breed.protocol import Kind, decode, encode_control, encode_finish, encode_step, encode_steps
from breed.sampling import make_sampler
from breed.server.receiver import Receiver, ReceiverOptions
from breed.server.simtable import SimTable

GRID, STEPS = 8, 4
TOKEN = bytes(range(32))
BOOKS = (
    "samples",
    "duplicate_steps",
    "finish",
    "incomplete_sims",
    "refused_sims",
    "bad_shape",
    "assigned",
)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Harness:
    """A receiver in one ingest mode, with a client's control (REQ) and data (DEALER) sockets."""

    def __init__(self, ingest: str, capacity: int = 200, watermark: int = 5) -> None:
        cfg = validate(
            {
                "study": {"simulations": 4},
                "solver": {"grid": GRID, "steps": STEPS},
                "buffer": {"capacity": capacity, "watermark": watermark},
            }
        )
        problem = problem_of(cfg)
        self.table = SimTable(
            4, make_sampler(cfg), threading.Lock(), max_retries=2, problem=problem
        )
        self.buffer = buffer_from_config(cfg)
        self.done: list[int] = []
        self.rx = Receiver(
            token=TOKEN,
            host="127.0.0.1",
            table=self.table,
            buffer=self.buffer,
            problem=problem,
            status=lambda: {},
            on_sim_done=self.done.append,
            on_launcher=lambda body: None,
            options=ReceiverOptions(simulation_timeout=60.0, ingest=ingest),
        )
        self.rx.start()
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.setsockopt(zmq.RCVTIMEO, 5000)
        self.req.connect(self.rx.control_address)
        self.data = self.data_socket()

    def data_socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(self.rx.data_address)
        return sock

    def assign(self) -> dict:
        self.req.send_multipart(
            encode_control(Kind.REQUEST, TOKEN, {"client": "test", "job_id": None, "nranks": 1})
        )
        msg = decode(self.req.recv_multipart(), TOKEN)
        assert msg.kind is Kind.ASSIGN, msg
        return msg.body

    def step(self, sim: int, t: int, cols: int = GRID) -> None:
        self.data.send_multipart(encode_step(TOKEN, sim, t, np.full((GRID, cols), 200.0 + t)))

    def finish(self, sim: int, sent: int) -> Kind:
        """Send FINISH and read the answer (after every step before it): PONG or REJECT."""
        self.data.send_multipart(encode_finish(TOKEN, sim, sent))
        return self.finish_answer(sim)

    def finish_answer(self, sim: int) -> Kind:
        while True:
            msg = decode(self.data.recv_multipart(), TOKEN)
            if msg.body.get("sim_id") == sim:
                return msg.kind

    def books(self) -> dict[str, int]:
        if self.rx.ingest is not None:  # the worker's counters arrive with its reports
            self.rx.ingest.poll_counts()
            self.rx.merge_worker_counts()
        return {k: int(self.rx.counts.get(k, 0)) for k in BOOKS}

    def close(self) -> None:
        self.rx.stop_event.set()
        self.rx.join(timeout=10)
        self.ctx.destroy(linger=0)


@pytest.fixture(params=["thread", "process"])
def harness(request: pytest.FixtureRequest):
    h = Harness(request.param)
    yield h
    h.close()


def script(h: Harness) -> dict[str, object]:
    """The exchange both modes play; returns what the run's books hold afterwards."""
    # 1. killed after two steps, retried: the retry re-sends every step, two are duplicates
    a = h.assign()["sim_id"]
    for t in range(2):
        h.step(a, t)
    wait_for("the first steps", lambda: h.rx.ledger.count(a) == 2)
    assert h.table.fail(a, "killed") == "retry"
    again = h.assign()
    assert again["sim_id"] == a and again["attempt"] == 2
    for t in range(STEPS + 1):
        h.step(a, t)
    assert h.finish(a, STEPS + 1) is Kind.PONG
    wait_for("simulation a done", lambda: a in h.done)
    # 2. finishes with a step missing: handed out again at once
    b = h.assign()["sim_id"]
    for t in (0, 1, 3):
        h.step(b, t)
    assert h.finish(b, 3) is Kind.REJECT
    wait_for("b handed out again", lambda: h.table.records[b].status == "failed")
    # 3. b's retry, by another client process (a new connection), breaks the problem (a wrong
    # field shape): refused on its connection, failed now
    retry = h.assign()
    c = retry["sim_id"]
    assert c == b and retry["attempt"] == 2
    h.data.close(0)
    h.data = h.data_socket()
    h.step(c, 0, cols=GRID - 1)
    msg = decode(h.data.recv_multipart(), TOKEN)
    assert msg.kind is Kind.REJECT and msg.body["sim_id"] == c
    wait_for("c handed out again", lambda: h.table.records[c].status == "failed")
    wait_for("the worker's counters", lambda: h.books()["bad_shape"] == 1)
    return {
        "done": sorted(h.done),
        "ledger": h.rx.ledger.pairs().tolist(),
        "received": h.buffer.stats()["received"],
        "status": {s: r.status for s, r in h.table.records.items()},
        "books": h.books(),
    }


@pytest.mark.timeout(120)
def test_both_ingest_modes_keep_the_same_books() -> None:
    outcomes = {}
    for mode in ("thread", "process"):
        h = Harness(mode)
        try:
            outcomes[mode] = script(h)
        finally:
            h.close()
    assert outcomes["thread"] == outcomes["process"]
    books = outcomes["thread"]["books"]
    # b's short FINISH is both refused (3 steps sent, the problem has 5) and incomplete
    assert books == {
        "samples": STEPS + 1 + 3,
        "duplicate_steps": 2,
        "finish": 2,
        "incomplete_sims": 1,
        "refused_sims": 2,
        "bad_shape": 1,
        "assigned": 4,
    }
    assert outcomes["thread"]["received"] == STEPS + 1 + 3


@pytest.mark.timeout(60)
def test_re_sent_steps_keep_a_retried_simulation_alive(harness: Harness) -> None:
    """A retried client re-sending steps the server already holds is not silent, in either
    mode (the ingest process drops them itself and reports which simulations it saw)."""
    sim = harness.assign()["sim_id"]
    for t in range(3):
        harness.step(sim, t)
    wait_for("three steps", lambda: harness.rx.ledger.count(sim) == 3)
    assert harness.table.fail(sim, "killed") == "retry"
    assert harness.assign()["attempt"] == 2
    before = harness.table.records[sim].last_seen
    for t in range(3):  # duplicates only: nothing new reaches the buffer
        harness.step(sim, t)
    wait_for("the liveness clock to move", lambda: harness.table.records[sim].last_seen > before)
    assert harness.rx.ledger.count(sim) == 3 and harness.buffer.stats()["received"] == 3


@pytest.mark.timeout(60)
def test_a_finish_before_any_step_hands_the_simulation_out_again(harness: Harness) -> None:
    """A rank whose solver failed at once sends FINISH with nothing before it."""
    sim = harness.assign()["sim_id"]
    assert harness.finish(sim, 0) is Kind.REJECT
    wait_for("handed out again", lambda: harness.table.records[sim].status == "failed")
    assert harness.assign()["sim_id"] == sim


def _reject_reasons() -> set[str]:
    """Every reason the server's code rejects a message for: the string passed to a
    ``reject``/``_reject`` call, and the reasons ``check_step`` returns."""
    import ast
    from pathlib import Path

    import breed.server

    reasons: set[str] = set()
    for path in Path(breed.server.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("reject", "_reject")
                and node.args
                and isinstance(node.args[-1], ast.Constant)
            ):
                reasons.add(node.args[-1].value)
            if (
                isinstance(node, ast.Return)
                and isinstance(node.value, ast.Tuple)
                and len(node.value.elts) == 2
                and isinstance(node.value.elts[1], ast.Constant)
                and path.name == "datapath.py"
            ):
                reasons.add(node.value.elts[1].value)
    return reasons


def test_summary_separates_rejections_from_message_counts() -> None:
    """summary.json's ``rejected`` holds rejections only (every reason the code rejects for),
    ``messages`` the rest (accepted blocks, samples, assignments...)."""
    from collections import Counter

    from breed.server.datapath import REJECTIONS, split_counts

    reasons = _reject_reasons()
    assert {"malformed", "rejected_token", "bad_shape", "out_of_range"} <= reasons
    assert reasons <= set(REJECTIONS), reasons - set(REJECTIONS)
    messages, rejected = split_counts(
        Counter({"samples": 66, "blocks": 66, "assigned": 6, "bad_shape": 2, "malformed": 1})
    )
    assert messages == {"assigned": 6, "blocks": 66, "samples": 66}
    assert rejected == {"bad_shape": 2, "malformed": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ingest", ["thread", "process"])
def test_a_steps_message_larger_than_the_room_left_loses_nothing(ingest: str) -> None:
    """One STEPS message completes all T + 1 samples of a simulation, and the buffer (3 slots,
    never evicting unseen samples) takes 3: the other 2 wait (held by the receiver thread, or
    in the ingest ring) and no data is read, so FINISH is answered after they are stored,
    once training has seen what was there."""
    h = Harness(ingest, capacity=3, watermark=3)
    try:
        job = h.assign()
        assert job["batch"] == {"steps": STEPS + 1, "linger": 1.0}  # auto: a whole simulation
        sim = job["sim_id"]
        blocks = [np.full((GRID, GRID), 200.0 + t) for t in range(STEPS + 1)]
        h.data.send_multipart(encode_steps(TOKEN, sim, 0, blocks))
        h.data.send_multipart(encode_finish(TOKEN, sim, STEPS + 1))
        wait_for("the buffer full", lambda: h.rx.ledger.count(sim) == 3)
        assert not h.buffer.can_accept() and sim not in h.done
        h.buffer.sample_batch(3)  # the trainer sees them: room again
        wait_for("the rest stored", lambda: h.rx.ledger.count(sim) == STEPS + 1)
        assert h.finish_answer(sim) is Kind.PONG
        wait_for("simulation done", lambda: sim in h.done)
        assert sorted(t for s, t in h.rx.ledger.pairs().tolist() if s == sim) == list(
            range(STEPS + 1)
        )
        assert h.books()["samples"] == STEPS + 1 and h.books()["duplicate_steps"] == 0
        assert h.buffer.stats()["received"] == STEPS + 1
    finally:
        h.close()
