"""Conformance of client implementations to docs/PROTOCOL.md: scripted server-side exchanges
(harness.ScriptedServer) and each client's observable behaviour (exit status, the messages
it sent, one line on stderr). Python runs in the default tier; the compiled C and Fortran
clients (built from source with CMake) in the ``compiled`` tier. A third-party client joins
with ``BREED_CONFORMANCE_CLIENT="name=command args" pytest -m compiled tests/conformance``;
it must send what the reference clients send (every value sum(params) + t + field index)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conformance.conftest import extra_clients
from conformance.harness import PROBLEM, ScriptedServer, expected_block, wait_for

HERE = Path(__file__).resolve().parent
CLIENTS = [
    pytest.param("python", id="python"),
    pytest.param("c", id="c", marks=pytest.mark.compiled),
    pytest.param("fortran", id="fortran", marks=pytest.mark.compiled),
    *(pytest.param(name, id=name, marks=pytest.mark.compiled) for name, _ in extra_clients()),
]


@pytest.fixture(params=CLIENTS)
def client_cmd(request) -> list[str]:
    name = request.param
    if name == "python":
        return [sys.executable, str(HERE / "python_client.py")]
    extra = dict(extra_clients())
    if name in extra:
        return extra[name]
    build = request.getfixturevalue("clients_build")
    return [str(build / ("c/breed_c_client" if name == "c" else "fortran/breed_f_client"))]


@pytest.fixture
def token() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def serve(token):
    servers: list[ScriptedServer] = []

    def start(script, **kw) -> ScriptedServer:
        srv = ScriptedServer(token, script, **kw)
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


def run_client(
    cmd: list[str], server: str | None, token: bytes | None, timeout: float = 30, **extra: str
) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BREED_")}
    env.update(
        {"BREED_JOB_ID": "job-7", "BREED_JOB_KEY": "k" * 32, "BREED_CLIENT_TIMEOUT": "1", **extra}
    )
    if server is not None:
        env["BREED_SERVER"] = server
    if token is not None:
        env["BREED_TOKEN"] = token.hex()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{cmd} did not exit within {timeout} s")
    return proc.returncode, err, time.monotonic() - t0


def one_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def check_data(srv: ScriptedServer, sims: int) -> None:
    """Every step of every field of every simulation, as sent, then FINISH with the count."""
    steps = PROBLEM["steps"] + 1
    assert len(srv.steps) == sims * steps * len(PROBLEM["fields"])
    for msg in srv.steps:
        f = PROBLEM["fields"][msg.field]
        assert (msg.rank, msg.nranks, msg.row_offset, msg.global_rows) == (0, 1, 0, f["shape"][0])
        assert msg.block.dtype == np.dtype(f["dtype"])
        np.testing.assert_array_equal(
            msg.block, expected_block(srv.assigned[msg.sim_id], msg.step, msg.field, f["shape"])
        )
    assert sorted((m.sim_id, m.step, m.field) for m in srv.steps) == sorted(
        (s, t, k) for s in range(sims) for t in range(steps) for k in range(2)
    )
    assert [(f.sim_id, f.steps_sent, f.rank, f.nranks) for f in srv.finishes] == [
        (s, steps, 0, 1) for s in range(sims)
    ]


@pytest.mark.timeout(60)
def test_assign_then_accept_until_stop(serve, token, client_cmd) -> None:
    srv = serve([("assign",), ("assign",), ("stop",)])
    code, err, _ = run_client(client_cmd, srv.address, token)
    assert code == 0, err
    check_data(srv, 2)
    assert len(srv.requests) == 3
    body = srv.requests[0]
    assert body["job_id"] == "job-7" and body["job_key"] == "k" * 32 and body["nranks"] == 1
    assert isinstance(body["client"], str) and body["client"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("steps", "linger", "messages"), [(3, 60.0, [1, 1, 3, 3]), (8, 0.0, [1] * 8)]
)
def test_batched_steps(serve, token, client_cmd, steps, linger, messages) -> None:
    """An ASSIGN offering ``batch`` (PROTOCOL.md 6.1): up to ``steps`` consecutive steps per
    STEPS message and field (t = 0..3: one of 3 and the last alone at FINISH), or one per
    message when the oldest held step is always ``linger`` = 0 s old; the same data either way."""
    srv = serve([("assign", {"batch": {"steps": steps, "linger": linger}}), ("stop",)])
    code, err, _ = run_client(client_cmd, srv.address, token)
    assert code == 0, err
    check_data(srv, 1)
    assert sorted(srv.step_messages) == messages


@pytest.mark.timeout(60)
def test_wait_then_assign(serve, token, client_cmd) -> None:
    srv = serve([("wait", 0.05), ("wait", 0.05), ("assign",), ("stop",)])
    code, err, _ = run_client(client_cmd, srv.address, token)
    assert code == 0, err
    assert len(srv.requests) == 4
    check_data(srv, 1)


@pytest.mark.timeout(60)
def test_stop_at_once(serve, token, client_cmd) -> None:
    srv = serve([("stop",)])
    code, err, _ = run_client(client_cmd, srv.address, token)
    assert code == 0, err
    assert len(srv.requests) == 1 and not srv.steps and not srv.finishes


@pytest.mark.timeout(60)
def test_wrong_token(serve, client_cmd) -> None:
    srv = serve([("assign",)])
    code, err, _ = run_client(client_cmd, srv.address, secrets.token_bytes(32))
    assert code == 1, err
    one_line(err, "token")
    assert srv.undecodable == 1 and not srv.requests and not srv.steps


@pytest.mark.timeout(60)
def test_reject_on_request(serve, token, client_cmd) -> None:
    srv = serve([("reject", "job job-7 is not this run's")])
    code, err, _ = run_client(client_cmd, srv.address, token)
    assert code == 1, err
    one_line(err, "rejected", "job job-7 is not this run's")


@pytest.mark.timeout(60)
def test_reject_on_the_data_connection(serve, token, client_cmd) -> None:
    srv = serve([("assign",), ("assign",)], reject_step=True)
    code, err, elapsed = run_client(client_cmd, srv.address, token)
    assert code == 1, err
    one_line(err, "rejected", "simulation 0", "expected 5")
    assert len(srv.requests) == 1  # stopped at the refusal, did not ask for more
    assert elapsed < 10


@pytest.mark.timeout(60)
def test_server_gone_mid_run(serve, token, client_cmd) -> None:
    srv = serve([("assign",), ("gone",)])
    code, err, elapsed = run_client(client_cmd, srv.address, token)
    assert srv.gone.is_set() and code == 1, err
    one_line(err, "no reply")
    check_data(srv, 1)
    assert elapsed < 15  # BREED_CLIENT_TIMEOUT=1: a server gone is an error, not a hang


@pytest.mark.timeout(60)
def test_abort_gives_the_simulation_back(serve, token, client_cmd) -> None:
    srv = serve([("assign",)])
    code, err, _ = run_client(client_cmd, srv.address, token, BREED_CONFORMANCE_ABORT="1")
    assert code == 1, err
    assert wait_for(lambda: len(srv.aborts) == 1)
    assert srv.aborts[0]["sim_id"] == 0 and srv.aborts[0]["job_id"] == "job-7"
    assert srv.aborts[0]["job_key"] == "k" * 32 and srv.aborts[0]["reason"]
    assert not srv.finishes


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("server", "tok", "words"),
    [
        (None, b"x" * 32, ["BREED_SERVER"]),
        ("tcp://127.0.0.1:1", None, ["token"]),
        ("tcp://127.0.0.1:1", "nothex", ["token"]),
    ],
)
def test_bad_environment_is_exit_2(client_cmd, server, tok, words) -> None:
    extra = {"BREED_TOKEN": tok} if isinstance(tok, str) else {}
    code, err, _ = run_client(client_cmd, server, tok if isinstance(tok, bytes) else None, **extra)
    assert code == 2, err
    one_line(err, *words)
