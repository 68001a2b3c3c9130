"""The live receiver (real ZeroMQ sockets on 127.0.0.1) against garbage, strangers and fuzzing:
every bad message is rejected and counted, nothing bad reaches the buffer, the thread survives
and a real client still gets its simulation through afterwards."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breed.config import validate
from breed.learning.reservoir import buffer_from_config
from breed.problems import problem_of
from breed.protocol import Kind, decode, encode_control, encode_finish, encode_step, encode_steps
from breed.sampling import make_sampler
from breed.server.checkpoint import load as load_checkpoint
from breed.server.receiver import Receiver, ReceiverOptions
from breed.server.simtable import SimTable

GRID, STEPS = 8, 4
DATA_COUNTERS = (
    "rejected_token",
    "malformed",
    "oversized",
    "unknown_sim",
    "bad_step",
    "bad_field",
    "bad_shape",
    "bad_dtype",
    "non_finite",
    "out_of_range",
    "duplicate_steps",
    "blocks",
    "finish",
)


class Live:
    """A receiver thread with a real table and reservoir, plus a client's sockets."""

    def __init__(self, token: bytes) -> None:
        cfg = validate(
            {
                "study": {"simulations": 4},
                "solver": {"grid": GRID, "steps": STEPS},
                "buffer": {"capacity": 200, "watermark": 5},
            }
        )
        assert cfg["solver"]["bounds"] == [100.0, 500.0]  # the field's range: u in [100, 500]
        lock = threading.Lock()
        self.token = token
        problem = problem_of(cfg)
        self.table = SimTable(4, make_sampler(cfg), lock, max_retries=2, problem=problem)
        self.buffer = buffer_from_config(cfg)
        self.done: list[int] = []
        self.rx = Receiver(
            token=token,
            host="127.0.0.1",
            table=self.table,
            buffer=self.buffer,
            problem=problem,
            status=lambda: {},
            on_sim_done=self.done.append,
            on_launcher=lambda body: None,
            options=ReceiverOptions(simulation_timeout=60.0),
        )
        self.rx.start()
        self.ctx = zmq.Context()
        self.push = self.data_socket()
        self.req = self.ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.setsockopt(zmq.RCVTIMEO, 5000)
        self.req.connect(self.rx.control_address)

    def data_socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)  # the data socket is a ROUTER: it answers
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.rx.data_address)
        return sock

    def call(self, kind: Kind, body: dict, token: bytes | None = None) -> tuple[Kind, dict]:
        self.req.send_multipart(encode_control(kind, token or self.token, body))
        msg = decode(self.req.recv_multipart(), self.token)
        return msg.kind, msg.body

    def assign(self) -> dict:
        kind, body = self.call(Kind.REQUEST, {"client": "test", "job_id": "j", "nranks": 1})
        assert kind is Kind.ASSIGN
        return body

    def handled(self) -> int:
        return sum(self.rx.counts[c] for c in DATA_COUNTERS)

    def settle(self, expected: int, timeout: float = 10.0) -> None:
        """Wait until the receiver has accounted for ``expected`` data messages."""
        deadline = time.monotonic() + timeout
        while self.handled() < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.handled() == expected, dict(self.rx.counts)

    def close(self) -> None:
        self.rx.stop_event.set()
        self.rx.join(timeout=5)
        self.ctx.destroy(linger=0)


@pytest.fixture
def live(token: bytes):
    obj = Live(token)
    yield obj
    obj.close()


def field(
    value: float = 300.0, dtype: str = "float64", rows: int = GRID, cols: int = GRID
) -> np.ndarray:
    return np.full((rows, cols), value, dtype=dtype)


def run_clean_simulation(live: Live) -> int:
    """A well-behaved client's whole simulation; returns its id once the buffer has it."""
    job = live.assign()
    before = live.buffer.stats()["received"]
    have = live.rx.ledger.count(job["sim_id"])  # a retry: steps already taken are not again
    for t in range(STEPS + 1):
        live.push.send_multipart(encode_step(live.token, job["sim_id"], t, field(200.0 + t)))
    live.push.send_multipart(encode_finish(live.token, job["sim_id"], STEPS + 1))
    deadline = time.monotonic() + 10
    while job["sim_id"] not in live.done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job["sim_id"] in live.done
    assert live.buffer.stats()["received"] == before + STEPS + 1 - have
    return job["sim_id"]


@pytest.mark.timeout(60)
def test_each_kind_of_bad_data_is_rejected_counted_and_never_stored(live: Live) -> None:
    sim = live.assign()["sim_id"]
    wrong = bytes(32)
    bad = {
        "malformed": [
            [b"\x00garbage"],
            [b"BRED"],
            [b"x" * 39, b"y"],
            encode_step(live.token, sim, 0, field())[:2],
        ],  # truncated: no payload
        "rejected_token": [encode_step(wrong, sim, 0, field()), encode_finish(wrong, sim, 5)],
        # more than a whole batch of the field (a batch has at most the T + 1 steps)
        "oversized": [
            encode_step(live.token, sim, 0, field(rows=(STEPS + 2) * GRID)),
            encode_steps(live.token, sim, 0, [field()] * (STEPS + 2)),
        ],
        "unknown_sim": [
            encode_step(live.token, 999, 0, field()),
            encode_finish(live.token, 999, 5),
        ],
        "bad_step": [
            encode_step(live.token, sim, STEPS + 1, field()),
            encode_steps(live.token, sim, STEPS - 1, [field()] * 3),  # t = 3..5: past T = 4
        ],
        "bad_field": [encode_step(live.token, sim, 0, field(), field=1)],
        "bad_shape": [
            encode_step(live.token, sim, 0, field(cols=GRID - 1)),
            encode_step(live.token, sim, 0, field(), global_rows=GRID + 2),
        ],
        "bad_dtype": [encode_step(live.token, sim, 0, field(dtype="float32"))],
        "non_finite": [
            encode_step(live.token, sim, 0, field(np.nan)),
            encode_step(live.token, sim, 1, field(np.inf)),
            encode_steps(live.token, sim, 0, [field(), field(np.nan)]),  # one bad step of two
        ],
        "out_of_range": [encode_step(live.token, sim, 0, field(1e6))],
    }
    sent = 0
    for counter, messages in bad.items():
        for frames in messages:
            live.push.send_multipart(frames)
            sent += 1
        live.settle(sent)
        assert live.rx.counts[counter] == len(messages), (counter, dict(live.rx.counts))
    assert live.buffer.stats()["received"] == 0 and live.rx.is_alive()
    # a step that breaks the problem is answered on its connection, and fails the attempt once
    refusals = sum(len(bad[c]) for c in ("bad_step", "bad_field", "bad_shape", "bad_dtype"))
    answers = []
    while live.push.poll(1000):
        answers.append(decode(live.push.recv_multipart(), live.token))
    about_sim = [a for a in answers if a.body.get("sim_id") == sim]
    assert len(about_sim) == refusals and all(a.kind is Kind.REJECT for a in about_sim)
    assert live.rx.counts["refused_sims"] == 1
    # a frame above the hard limit (ZMQ_MAXMSGSIZE): libzmq drops that connection
    big = live.data_socket()
    big.send_multipart(encode_step(live.token, sim, 0, field(rows=4096)))
    time.sleep(0.3)
    assert live.handled() == sent and live.rx.is_alive()
    # the control socket: garbage, a wrong token, a data message
    dealer = live.ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(live.rx.control_address)
    dealer.send_multipart([b"", b"\xff" * 50])
    assert dealer.poll(5000) and decode(dealer.recv_multipart()[1:], live.token).kind is Kind.REJECT
    kind, body = live.call(Kind.REQUEST, {"client": "stranger"}, token=wrong)
    assert kind is Kind.REJECT and "token" in body["reason"]
    dealer.send_multipart([b"", *encode_step(live.token, sim, 0, field())])
    assert dealer.poll(5000) and dealer.recv_multipart()
    assert live.rx.counts["rejected_token"] == 3
    # the sim the garbage named is still intact: its real client completes it
    for t in range(STEPS + 1):
        live.push.send_multipart(encode_step(live.token, sim, t, field(300.0)))
    live.push.send_multipart(encode_finish(live.token, sim, STEPS + 1))
    deadline = time.monotonic() + 10
    while sim not in live.done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert live.done == [sim] and live.buffer.stats()["received"] == STEPS + 1
    run_clean_simulation(live)


@pytest.mark.timeout(60)
def test_raw_tcp_garbage_does_not_stop_the_receiver(live: Live) -> None:
    for address in (live.rx.data_address, live.rx.control_address):
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        for payload in (b"\xff" * 64, b"GET / HTTP/1.0\r\n\r\n", bytes(range(256)) * 40):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(payload)
    time.sleep(0.2)
    assert live.rx.is_alive() and live.handled() == 0
    run_clean_simulation(live)


@pytest.mark.timeout(120)
def test_re_sent_steps_enter_the_buffer_once(live: Live) -> None:
    """A retried client re-sends every step: only the missing ones are taken."""
    job = live.assign()
    sim = job["sim_id"]
    for t in range(2):  # first attempt dies after two steps
        live.push.send_multipart(encode_step(live.token, sim, t, field(300.0)))
    live.settle(2)
    assert live.table.fail(sim, "killed") == "retry"
    again = live.assign()
    assert again["sim_id"] == sim and again["attempt"] == 2 and again["params"] == job["params"]
    for t in range(STEPS + 1):
        live.push.send_multipart(encode_step(live.token, sim, t, field(300.0)))
    live.push.send_multipart(encode_finish(live.token, sim, STEPS + 1))
    live.settle(2 + STEPS + 2)
    assert live.rx.counts["duplicate_steps"] == 2 and live.done == [sim]
    assert live.buffer.stats()["received"] == STEPS + 1 == live.rx.ledger.count(sim)


@pytest.mark.timeout(60)
def test_finish_with_missing_steps_hands_the_simulation_out_again(live: Live) -> None:
    sim = live.assign()["sim_id"]
    for t in (0, 1, 3):
        live.push.send_multipart(encode_step(live.token, sim, t, field(300.0)))
    live.push.send_multipart(encode_finish(live.token, sim, 3))
    live.settle(4)
    assert live.rx.counts["incomplete_sims"] == 1 and live.done == []
    again = live.assign()
    assert again["sim_id"] == sim and again["attempt"] == 2


FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.timeout(300)
def test_fuzz_live_receiver(live: Live) -> None:
    """Random frames and mutated valid messages (right token, known simulations): each is
    accounted for exactly once, the buffer only ever holds finite in-bounds fields."""
    sims = [live.assign()["sim_id"] for _ in range(2)]
    valid = [
        encode_step(live.token, sims[0], 1, field(250.0)),
        encode_step(
            live.token,
            sims[1],
            2,
            field(350.0, rows=GRID // 2),
            rank=1,
            nranks=2,
            row_offset=GRID // 2,
            global_rows=GRID,
        ),
        encode_finish(live.token, sims[0], 5),
    ]
    sent = [0]

    @FUZZ
    @given(data=st.data())
    def one(data) -> None:
        if data.draw(st.booleans()):
            frames = data.draw(st.lists(st.binary(max_size=300), min_size=1, max_size=4))
        else:
            frames = [bytearray(f) for f in data.draw(st.sampled_from(valid))]
            i = data.draw(st.integers(0, len(frames) - 1))
            j = data.draw(st.integers(0, max(len(frames[i]) - 1, 0)))
            op = data.draw(st.sampled_from(["flip", "truncate", "extend", "byte"]))
            if op == "flip" and frames[i]:
                frames[i][j] ^= 1 << data.draw(st.integers(0, 7))
            elif op == "truncate":
                del frames[i][j:]
            elif op == "extend":
                frames[i] += data.draw(st.binary(min_size=1, max_size=16))
            elif frames[i]:
                frames[i][j] = data.draw(st.integers(0, 255))
            frames = [bytes(f) for f in frames]
        live.push.send_multipart(frames)
        sent[0] += 1

    one()
    live.settle(sent[0], timeout=30)
    assert live.rx.is_alive()
    held = buffer_snapshot_fields(live)
    assert np.isfinite(held).all() and np.abs(held).max(initial=0.0) <= 1.01  # u' in [-1, 1]
    run_clean_simulation(live)


def buffer_snapshot_fields(live: Live) -> np.ndarray:
    return live.buffer.snapshot()["arrays"]["_fields"]


# -- a real run: token hygiene, a stranger with a wrong token, CURVE ----------------------------
STRANGER = r"""
import json, sys, time
import numpy as np, zmq
from breed.protocol import Kind, encode_control, encode_finish, encode_step, decode
info = json.loads(open(sys.argv[1]).read())
wrong = bytes.fromhex("ab" * 32)
ctx = zmq.Context()
req = ctx.socket(zmq.REQ); req.setsockopt(zmq.LINGER, 0); req.connect(info["control"])
replies = []
for kind in (Kind.REQUEST, Kind.PING):
    req.send_multipart(encode_control(kind, wrong, {"client": "stranger"}))
    assert req.poll(10000), "no reply"
    frames = req.recv_multipart()
    replies.append(frames[0][6])  # the kind byte of the header
push = ctx.socket(zmq.DEALER); push.setsockopt(zmq.LINGER, 5000); push.connect(info["data"][0])
sent = 0
for sim in range(8):
    for t in range(101):
        push.send_multipart(encode_step(wrong, sim, t, np.full((32, 32), 300.0)))
        sent += 1
    push.send_multipart(encode_finish(wrong, sim, 101))
    sent += 1
push.close(); req.close(); ctx.term()
print(json.dumps({"sent": sent, "replies": replies}))
"""


@pytest.fixture
def fault_run(tmp_path):
    from faultkit import RunUnderTest

    runs = []

    def make(changes=None):
        run = RunUnderTest(tmp_path, changes)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.kill_everything()


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_token_never_on_a_command_line_or_in_logs(fault_run) -> None:
    import subprocess
    from pathlib import Path

    from faultkit import PACED, belongs

    run = fault_run({**PACED, "study": {"simulations": 4}})
    proc = run.start()
    while not (run.dir / "token").exists():
        time.sleep(0.01)
    token = (run.dir / "token").read_text().strip()
    seen: dict[int, str] = {}
    ps_snapshots = 0
    while proc.poll() is None:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            assert token.encode() not in cmd and bytes.fromhex(token) not in cmd, cmd
            if belongs(int(entry.name), run.dir):
                seen[int(entry.name)] = cmd.replace(b"\0", b" ").decode()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert token not in ps
        ps_snapshots += 1
        time.sleep(0.05)
    assert proc.returncode == 0, run.stderr()
    # not vacuous: the server and client processes were among those looked at
    assert any("breed.server.server" in c for c in seen.values())
    assert sum("heat2d_client" in c for c in seen.values()) >= 2 and ps_snapshots > 3
    for path in run.dir.rglob("*"):
        if path.is_file() and path.name != "token" and path.suffix not in (".pt", ".npz"):
            assert token not in path.read_text(errors="replace"), path
    assert (run.dir / "token").stat().st_mode & 0o777 == 0o600


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_stranger_with_a_wrong_token_is_rejected_and_changes_nothing(fault_run) -> None:
    import json
    import subprocess
    import sys

    from faultkit import PACED, audit

    from breed.problems.heat2d_solver import HeatSolver

    run = fault_run(PACED)
    proc = run.start()
    run.wait_until("the server", lambda p: True)
    stranger = subprocess.run(
        [sys.executable, "-c", STRANGER, str(run.dir / "server.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stranger.returncode == 0, stranger.stderr
    report = json.loads(stranger.stdout)
    assert report["replies"] == [int(Kind.REJECT)] * 2
    assert run.finish(proc) == 0, run.stderr()
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["rejected"]["rejected_token"] == report["sent"] + 2  # every one, counted
    assert "rejected (rejected_token" in (run.dir / "logs" / "server.log").read_text()
    a = audit(run.dir)
    assert a["done"] == 8 and a["lost"] == a["extra"] == a["duplicated_puts"] == 0
    # the data trained on is exactly the solver's: nothing of the stranger's 300 K fields
    snap = torch_load(run.dir)["buffer_data"]
    rows = {
        (int(s), int(t)): k
        for k, (s, t) in enumerate(
            zip(snap["arrays"]["_sim_ids"], snap["arrays"]["_steps"], strict=True)
        )
    }
    records = a["records"]
    cfg = run.cfg["solver"]
    for sim in range(8):
        solver = HeatSolver(records[sim]["params"], cfg["grid"], 0.01, 1.0, 10.0)
        for t, u in solver.blocks(cfg["steps"]):
            stored = snap["arrays"]["_fields"][rows[(sim, t)]]
            assert np.allclose(stored, ((u - 300.0) / 200.0).ravel(), atol=1e-6)


def torch_load(run_dir):

    return load_checkpoint(run_dir / "checkpoints" / "checkpoint.pt")


@pytest.mark.faults
@pytest.mark.timeout(240)
def test_curve_encrypted_run(fault_run) -> None:
    from faultkit import PACED, audit

    run = fault_run(
        {**PACED, "study": {"simulations": 4}, "launcher": {**PACED["launcher"], "curve": True}}
    )
    proc = run.start()
    run.wait_until("the server over CURVE", lambda p: True)
    info = run.server_info()
    plain = zmq.Context.instance().socket(zmq.REQ)  # a client without the server's key
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(info["control"])
    plain.send_multipart(encode_control(Kind.PING, bytes(32), {}))
    assert plain.poll(1500) == 0  # no CURVE handshake, no answer, not even a REJECT
    plain.close()
    assert run.finish(proc) == 0, run.stderr()
    assert audit(run.dir)["done"] == 4
    secret = run.dir / "curve" / "server.secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.read_bytes().strip().decode() not in (run.dir / "server.json").read_text()
