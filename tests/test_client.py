"""The streaming client against a small receiving fixture over real ZeroMQ sockets.

``MiniServer`` is a test receiver, not the training server: a thread with a ROUTER (control)
and a ROUTER (data) socket on 127.0.0.1 speaking :mod:`breed.protocol`, reassembling blocks with
:class:`breed.server.assembly.Assembler` and answering each FINISH on the client's data connection
(PONG, or REJECT). Clients run as real subprocesses (``python -m breed.client``,
``python -m breed.problems.heat2d_client``, and under ``mpiexec -n 2``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import free_port

from breed.client import Assignment, Client, ClientConfigError, ClientError, FieldInfo
from breed.problems.heat2d import heat2d
from breed.problems.heat2d_solver import solve
from breed.protocol import (
    AuthError,
    ControlMessage,
    FinishMessage,
    Kind,
    ProtocolError,
    StepMessage,
    decode,
    encode_control,
)
from breed.server.assembly import Assembler

SMALL = {"grid": 16, "steps": 5, "dt": 0.01, "alpha": 1.0, "length": 2.0, "dtype": "float64"}
LAM = [300.0, 100.0, 500.0, 200.0, 400.0]


def problem_body(solver: dict[str, Any]) -> dict[str, Any]:
    """What the server tells a client about the heat problem in ASSIGN (name, steps,
    parameters, fields, settings)."""
    return heat2d({"bounds": [100.0, 500.0], "ranks": 1, **solver}).describe()


class MiniServer(threading.Thread):
    """Hands out ``params`` one per REQUEST (then STOP) and collects the reassembled fields."""

    def __init__(
        self,
        token: bytes,
        params: list[list[float]],
        solver: dict[str, Any],
        waits: int = 0,
        reject: str | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.token, self.solver, self.reject = token, solver, reject
        self.todo = deque(params)
        self.waits = waits
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.data = self.ctx.socket(zmq.ROUTER)
        self.data.setsockopt(zmq.RCVHWM, 1)
        for s in (self.control, self.data):
            s.setsockopt(zmq.LINGER, 0)
        self.control_address = (
            f"tcp://127.0.0.1:{self.control.bind_to_random_port('tcp://127.0.0.1')}"
        )
        self.data_address = f"tcp://127.0.0.1:{self.data.bind_to_random_port('tcp://127.0.0.1')}"
        self.problem = problem_body(solver)
        self.assembler = Assembler()
        self.fields: dict[tuple[int, int], np.ndarray] = {}
        self.finished: list[int] = []
        self.finish_msgs: list[FinishMessage] = []
        self.requests: list[dict] = []
        self.aborts: list[dict] = []
        self.counts = {"bad_token": 0, "malformed": 0, "inconsistent": 0}
        self.refused: set[tuple[int, bytes]] = set()  # (sim_id, connection) told off
        self.reading = threading.Event()
        self.reading.set()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.next_id = 0

    def run(self) -> None:
        try:
            poller = zmq.Poller()
            poller.register(self.control, zmq.POLLIN)
            poller.register(self.data, zmq.POLLIN)
            while not self.stop.is_set():
                events = dict(poller.poll(20))
                if self.control in events:
                    self._on_control(self.control.recv_multipart())
                if self.data in events and self.reading.is_set():
                    self._on_data(self.data.recv_multipart())
        except BaseException as exc:  # surfaced by the fixture's teardown
            self.errors.append(exc)
        finally:
            self.control.close(0)
            self.data.close(0)
            self.ctx.term()

    def _reply(self, ident: bytes, kind: Kind, body: dict | None = None) -> None:
        self.control.send_multipart([ident, b"", *encode_control(kind, self.token, body)])

    def _on_control(self, frames: list[bytes]) -> None:
        ident, msg_frames = frames[0], frames[2:]
        try:
            msg = decode(msg_frames, self.token)
        except AuthError:
            self.counts["bad_token"] += 1
            self._reply(ident, Kind.REJECT, {"reason": "wrong run token"})
            return
        assert isinstance(msg, ControlMessage)
        if msg.kind is Kind.ABORT:
            self.aborts.append(msg.body)
            self._reply(ident, Kind.PONG, {})
            return
        assert msg.kind is Kind.REQUEST
        self.requests.append(msg.body)
        if self.reject:
            self._reply(ident, Kind.REJECT, {"reason": self.reject})
        elif self.waits > 0:
            self.waits -= 1
            self._reply(ident, Kind.WAIT, {"retry_after": 0.05})
        elif self.todo:
            sim_id, self.next_id = self.next_id, self.next_id + 1
            self._reply(
                ident,
                Kind.ASSIGN,
                {
                    "sim_id": sim_id,
                    "params": self.todo.popleft(),
                    "data": self.data_address,
                    "attempt": 1,
                    **self.problem,
                },
            )
        else:
            self._reply(ident, Kind.STOP, {})

    def _answer(self, ident: bytes, kind: Kind, body: dict) -> None:
        self.data.send_multipart([ident, *encode_control(kind, self.token, body)])

    def _on_data(self, frames: list[bytes]) -> None:
        ident, frames = frames[0], frames[1:]
        try:
            msg = decode(frames, self.token)
        except ProtocolError:
            self.counts["malformed"] += 1
            return
        if isinstance(msg, StepMessage):
            try:
                out = self.assembler.add(msg)
            except ProtocolError as exc:
                self.counts["inconsistent"] += 1
                self.refused.add((msg.sim_id, ident))
                self._answer(ident, Kind.REJECT, {"reason": str(exc), "sim_id": msg.sim_id})
                return
            if out is not None:
                sim_id, step, fields = out
                self.fields[sim_id, step] = np.array(fields[0])  # the frame's view: keep it
        elif isinstance(msg, FinishMessage):
            self.finish_msgs.append(msg)
            if (msg.sim_id, ident) in self.refused or msg.steps_sent != self.problem["steps"] + 1:
                self._answer(ident, Kind.REJECT, {"reason": "refused", "sim_id": msg.sim_id})
            else:
                self._answer(ident, Kind.PONG, {"sim_id": msg.sim_id})
            if self.assembler.finish(msg):
                self.finished.append(msg.sim_id)

    def trajectory(self, sim_id: int, steps: int) -> np.ndarray:
        return np.array([self.fields[sim_id, t] for t in range(steps + 1)])

    def wait_finished(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.finished) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.finished) >= count, f"finished {self.finished}"


@pytest.fixture
def make_server(token):
    servers: list[MiniServer] = []

    def start(params=(LAM,), solver=SMALL, **kw) -> MiniServer:
        srv = MiniServer(token, [list(p) for p in params], dict(solver), **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop.set()
        srv.join(10)
        assert not srv.is_alive(), "fixture thread did not stop"
        assert not srv.errors, srv.errors


def client_env(server: str | None, token: bytes | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREED_")}
    if server is not None:
        env["BREED_SERVER"] = server
    if token is not None:
        env["BREED_TOKEN"] = token.hex()
    env.update(extra)
    return env


def run_proc(cmd: list[str], env: dict[str, str], timeout: float = 60.0):
    """Run a client in its own process group; kill the whole group if it overstays."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{cmd} did not finish within {timeout} s")
    return proc.returncode, out, err


CLIENT = [sys.executable, "-m", "breed.client"]


@pytest.mark.timeout(60)
def test_client_streams_a_full_trajectory_bit_exactly(make_server, token):
    solver = {
        "grid": 64,
        "steps": 100,
        "dt": 0.01,
        "alpha": 1.0,
        "length": 10.0,
        "dtype": "float64",
    }
    srv = make_server(solver=solver)
    rc, out, err = run_proc(
        CLIENT + ["--once"], client_env(srv.control_address, token, BREED_JOB_ID="job-7")
    )
    assert rc == 0, err
    srv.wait_finished(1)
    assert np.array_equal(srv.trajectory(0, 100), solve(LAM))  # bit-exact
    assert srv.requests[0]["job_id"] == "job-7" and srv.requests[0]["nranks"] == 1
    assert [(f.rank, f.nranks, f.steps_sent) for f in srv.finish_msgs] == [(0, 1, 101)]


@pytest.mark.timeout(60)
def test_persistent_client_runs_until_stop(make_server, token, tmp_path):
    params = [[100.0 + 50 * k, 200, 300, 400, 500] for k in range(3)]
    srv = make_server(params=params)
    token_file = tmp_path / "token"
    token_file.write_text(token.hex() + "\n")
    rc, out, err = run_proc(
        CLIENT, client_env(srv.control_address, None, BREED_TOKEN_FILE=str(token_file))
    )
    assert rc == 0, err
    srv.wait_finished(3)
    assert len(srv.requests) == 4  # three assignments, then STOP
    for sim_id, lam in enumerate(params):
        ref = solve(lam, grid=16, steps=5, length=2.0)
        assert np.array_equal(srv.trajectory(sim_id, 5), ref)


HEAT_CLIENT = [sys.executable, "-m", "breed.problems.heat2d_client"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "cmd, env",
    [(CLIENT + ["--once"], {}), (HEAT_CLIENT + ["--once"], {}), (HEAT_CLIENT, {"BREED_ONCE": "1"})],
    ids=["--once", "heat2d_client --once", "BREED_ONCE=1"],
)
def test_once_runs_one_simulation_and_wait_is_honoured(make_server, token, cmd, env):
    srv = make_server(params=[LAM, LAM], waits=2)
    rc, out, err = run_proc(cmd, client_env(srv.control_address, token, **env))
    assert rc == 0, err
    srv.wait_finished(1)
    assert len(srv.requests) == 3 and srv.finished == [0] and len(srv.todo) == 1


def assert_one_line_error(rc: int, err: str, expected_rc: int, *words: str) -> None:
    assert rc == expected_rc
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("breed client: error:")
    for w in words:
        assert w in lines[0]


@pytest.mark.timeout(30)
def test_wrong_address_fails_in_one_line_within_the_timeout(token):
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    start = time.monotonic()
    rc, out, err = run_proc(
        CLIENT + ["--server", address, "--timeout", "1"], client_env(None, token)
    )
    assert time.monotonic() - start < 15
    assert_one_line_error(rc, err, 1, "no reply", address)


@pytest.mark.timeout(30)
def test_wrong_token_fails_in_one_line(make_server, token):
    srv = make_server()
    rc, out, err = run_proc(CLIENT + ["--timeout", "5"], client_env(srv.control_address, bytes(32)))
    assert_one_line_error(rc, err, 1, "token")
    assert srv.counts["bad_token"] == 1 and not srv.fields


@pytest.mark.timeout(30)
def test_rejected_request_reports_the_reason(make_server, token):
    srv = make_server(reject="run is over")
    rc, out, err = run_proc(CLIENT, client_env(srv.control_address, token))
    assert_one_line_error(rc, err, 1, "run is over")


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "args, env, words",
    [
        ([], {}, ["BREED_SERVER"]),
        (["--server", "tcp://127.0.0.1:1"], {"BREED_TOKEN": "xyz"}, ["hexadecimal"]),
        (["--server", "tcp://127.0.0.1:1"], {"BREED_TOKEN": "ab" * 8}, ["32 bytes"]),
        (
            ["--server", "tcp://127.0.0.1:1"],
            {"BREED_TOKEN_FILE": "/nonexistent/t"},
            ["BREED_TOKEN_FILE"],
        ),
        (["--server", "tcp://127.0.0.1:1"], {}, ["BREED_TOKEN"]),
        (
            ["--server", "not an address", "--timeout", "1"],
            {"BREED_TOKEN": "00" * 32},
            ["invalid server address"],
        ),
        (
            ["--server", "tcp://127.0.0.1:1", "--timeout", "-3"],
            {"BREED_TOKEN": "00" * 32},
            ["timeout"],
        ),
        (
            ["--server", "tcp://127.0.0.1:1"],
            {"BREED_TOKEN": "00" * 32, "BREED_CLIENT_TIMEOUT": "soon"},
            ["timeout"],
        ),
        (["--bogus"], {}, ["unrecognized"]),
    ],
)
def test_usage_errors_exit_2_in_one_line(args, env, words):
    rc, out, err = run_proc(CLIENT + args, client_env(None, None, **env))
    assert_one_line_error(rc, err, 2, *words)


@pytest.mark.timeout(30)
def test_api_abort_float32_and_context_manager(make_server, token):
    srv = make_server(solver={**SMALL, "dtype": "float32"})
    with Client(srv.control_address, token.hex(), timeout=5) as client:
        job = client.request()
        assert isinstance(job, Assignment) and job.params == tuple(LAM)
        with pytest.raises(ClientError, match="still open"):
            client.request()
        client.send(0, np.ones((16, 16)))
        assert client.abort("solver diverged") is True
        assert client.request() is None  # todo list exhausted: STOP
    # the job's id and key ride along: only the job holding a simulation may abort it
    assert srv.aborts == [
        {"sim_id": 0, "reason": "solver diverged", "job_id": None, "job_key": None}
    ]
    assert srv.assembler.completed_steps(0) == frozenset({0})
    assert srv.fields[0, 0].dtype == np.float32


@pytest.mark.timeout(30)
def test_a_one_field_step_is_an_array_a_mapping_or_a_sequence_of_one(make_server, token):
    """The three spellings send() documents reach the server as the same field (a list of
    one array once arrived as a block one axis too deep and was refused as the wrong shape)."""
    srv = make_server()
    with Client(srv.control_address, token, timeout=5, send_timeout=5) as client:
        job = client.request()
        spellings = [
            lambda a: a,
            lambda a: {"u": a},
            lambda a: [a],
            lambda a: (a,),
        ]
        for t in range(job.steps + 1):
            client.send(t, spellings[t % 4](np.full((16, 16), 100.0 + t)))
        client.finish()
    assert client.finished == 1
    want = np.stack([np.full((16, 16), 100.0 + t) for t in range(SMALL["steps"] + 1)])
    assert np.array_equal(srv.trajectory(0, SMALL["steps"]), want)


@pytest.mark.timeout(30)
def test_finish_waits_for_the_answer_and_raises_a_reject(make_server, token):
    srv = make_server(params=[LAM, LAM])
    with Client(srv.control_address, token, timeout=5, send_timeout=5) as client:
        job = client.request()
        for t in range(job.steps + 1):
            client.send(t, {"u": np.full((16, 16), 300.0)})
        client.finish()  # acknowledged (PONG)
        assert client.finished == 1 and client.assignment is None
        client.request()
        client.send(0, np.full((16, 16), 300.0))  # one step of six
        with pytest.raises(ClientError, match="rejected"):
            client.finish()
        assert client.assignment is None and client.finished == 1


@pytest.mark.timeout(30)
def test_a_late_reject_of_a_given_back_simulation_spares_the_next(make_server, token):
    """The server refuses a block of simulation 0, which the client has aborted meanwhile:
    the REJECT arriving later on the same connection belongs to sim 0, not to sim 1."""
    srv = make_server(params=[LAM, LAM])
    with Client(srv.control_address, token, timeout=5, send_timeout=5) as client:
        client.request()
        client.send(0, np.ones((8, 16)))  # rows 0..8 of step 0
        client.send(0, np.ones((8, 15)), row_offset=8)  # rows 8..16, one column short
        deadline = time.monotonic() + 10
        while not srv.refused and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.refused  # the REJECT of sim 0 is on its way, unread
        client.abort("given back")
        job = client.request()
        assert job.sim_id == 1
        for t in range(job.steps + 1):
            client.send(t, np.full((16, 16), 300.0))
        client.finish()  # acknowledged: the stale REJECT was dropped
        assert client.finished == 1


def test_api_needs_an_assignment_and_a_server(token, monkeypatch):
    monkeypatch.delenv("BREED_SERVER", raising=False)
    with pytest.raises(ClientConfigError, match="BREED_SERVER"):
        Client(token=token)
    with Client("tcp://127.0.0.1:1", token, timeout=1) as client:
        with pytest.raises(ClientError, match="request"):
            client.send(0, np.zeros((2, 2)))
        with pytest.raises(ClientError, match="without an assignment"):
            client.finish()


def assign(**over: Any) -> dict[str, Any]:
    body = {"sim_id": 0, "params": LAM, "data": "tcp://x:1", "attempt": 1, **problem_body(SMALL)}
    body.update(over)
    return body


def test_a_well_formed_assignment_describes_the_problem():
    job = Assignment.from_body(assign(sim_id=3))
    assert (job.sim_id, job.params, job.data, job.attempt, job.steps) == (
        3,
        tuple(LAM),
        "tcp://x:1",
        1,
        5,
    )
    assert job.names == ("T0", "T1", "T2", "T3", "T4")
    assert job.named == dict(zip(job.names, LAM, strict=True))
    assert job.fields == (FieldInfo("u", (16, 16), "float64"),)
    assert (
        job.solver
        == job.settings
        == {k: SMALL[k] for k in ("grid", "steps", "dt", "alpha", "length")}
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        assign(sim_id=-1),
        assign(params=LAM[:4]),
        assign(params=[float("nan")] * 5),
        assign(data=""),
        assign(fields=[{"name": "u", "shape": [16, 16], "dtype": "int8"}]),
        assign(fields=[{"name": "u", "shape": [], "dtype": "float64"}]),
        assign(fields=[]),
        {k: v for k, v in assign().items() if k != "parameters"},
        {k: v for k, v in assign().items() if k != "steps"},
        assign(sim_id=True),
    ],
)
def test_malformed_assignments_are_client_errors(body):
    with pytest.raises(ClientError, match="ASSIGN"):
        Assignment.from_body(body)


@pytest.mark.timeout(60)
def test_slow_server_applies_backpressure_and_loses_nothing(make_server, token):
    solver = {**SMALL, "grid": 256, "steps": 40}
    srv = make_server(solver=solver)
    srv.reading.clear()  # the server stops reading its data socket
    sent: list[int] = []

    def stream(client: Client) -> None:
        rng = np.random.default_rng(0)
        for t in range(41):
            client.send(t, rng.standard_normal((256, 256)))
            sent.append(t)
        client.finish()

    with Client(srv.control_address, token, timeout=5, sndhwm=2) as client:
        client.request()
        th = threading.Thread(target=stream, args=(client,))
        th.start()
        time.sleep(1.0)
        blocked_at = len(sent)
        assert blocked_at < 41, "send never blocked: no backpressure"
        srv.reading.set()
        th.join(30)
        assert not th.is_alive()
    srv.wait_finished(1)
    assert sorted(s for (_, s) in srv.fields) == list(range(41))
    rng = np.random.default_rng(0)
    assert all(np.array_equal(srv.fields[0, t], rng.standard_normal((256, 256))) for t in range(41))


@pytest.mark.timeout(30)
def test_server_that_never_reads_gives_a_send_timeout(make_server, token):
    srv = make_server(solver={**SMALL, "grid": 256})
    srv.reading.clear()
    with Client(srv.control_address, token, timeout=5, send_timeout=0.5, sndhwm=1) as client:
        client.request()
        with pytest.raises(ClientError, match="took no data"):
            for t in range(1000):
                client.send(t, np.zeros((256, 256)))


MPI_SCRIPT = Path(__file__).parent / "mpi_scripts" / "solve_mpi.py"


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_mpi_client_streams_blocks_reassembled_bit_exactly(make_server, token, mpiexec, tmp_path):
    solver = {"grid": 37, "steps": 20, "dt": 0.01, "alpha": 1.0, "length": 1.0, "dtype": "float64"}
    srv = make_server(params=[LAM, LAM[::-1]], solver=solver)
    env = client_env(srv.control_address, token)
    rc, out, err = run_proc([mpiexec, "-n", "2", *CLIENT], env, timeout=90)
    assert rc == 0, err
    srv.wait_finished(2)
    assert srv.requests[0]["nranks"] == 2
    assert sorted((f.sim_id, f.rank, f.nranks, f.steps_sent) for f in srv.finish_msgs) == [
        (0, 0, 2, 21),
        (0, 1, 2, 21),
        (1, 0, 2, 21),
        (1, 1, 2, 21),
    ]
    # reference: the same MPI solver on 2 ranks, gathered by MPI instead of the network
    ref_file = tmp_path / "ref.npy"
    rc, out, err = run_proc(
        [
            mpiexec,
            "-n",
            "2",
            sys.executable,
            str(MPI_SCRIPT),
            str(ref_file),
            "37",
            "20",
            "1.0",
            *map(str, LAM),
        ],
        env,
    )
    assert rc == 0, err
    got = srv.trajectory(0, 20)
    assert np.array_equal(got, np.load(ref_file))  # bit-exact through ZeroMQ + Assembler
    serial = solve(LAM, grid=37, steps=20, length=1.0)
    assert np.abs(got - serial).max() <= 1e-10 * np.abs(serial).max()
    serial_rev = solve(LAM[::-1], grid=37, steps=20, length=1.0)
    assert np.abs(srv.trajectory(1, 20) - serial_rev).max() <= 1e-10 * serial_rev.max()


@pytest.mark.timeout(60)
def test_terminated_client_aborts_its_simulation(make_server, token):
    srv = make_server(solver={**SMALL, "steps": 10**6})  # would run for a long time
    proc = subprocess.Popen(
        CLIENT,
        env=client_env(srv.control_address, token),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while len(srv.fields) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(srv.fields) >= 10, "client streamed nothing"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert len(srv.aborts) == 1 and srv.aborts[0]["sim_id"] == 0
    assert "terminated by signal 15" in srv.aborts[0]["reason"]
