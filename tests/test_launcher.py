"""The launcher's job pool (``breed.launcher.launcher``) with the real local backend: real
client processes, real ZeroMQ, and on the other end of the control socket the server's side of
the protocol, scripted per test (a real server cannot be told to call a job silent).

The contract: at most ``wanted_clients`` jobs alive, each job's key told to the server before
the job exists, failed jobs reported once and replaced, silent (``stale_jobs``) jobs
cancelled, too many failures in a row stop the run, a dead or silent server raises
:class:`ServerDied`, ``jobs.csv`` always says what is alive, and a resumed launcher cancels
what a dead one left.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from breed import procs
from breed.config import validate
from breed.launcher.backend import JobState
from breed.launcher.launcher import (
    Job,
    Launcher,
    LauncherError,
    ServerDied,
    ServerLink,
    read_jobs,
)
from breed.launcher.local import LocalBackend
from breed.launcher.oar import OarBackend
from breed.launcher.slurm import SlurmBackend
from breed.protocol import Kind, decode, encode_control
from breed.security import job_key_digest

pytestmark = pytest.mark.timeout(60)
PY = sys.executable
# prints what the job was given (the digest of its key, never the key), then hangs
SHOW_AND_HANG = (
    "import hashlib, os, time; e = os.environ; "
    "print(e['BREED_JOB_ID'], hashlib.sha256(e['BREED_JOB_KEY'].encode())"
    ".hexdigest(), e.get('BREED_ONCE'), e['BREED_SERVER'], e['X'], flush=True); "
    "time.sleep(300)"
)
Answer = Callable[[dict[str, Any]], dict[str, Any]]


class ControlPeer:
    """The server's end of the control socket (REP on loopback): answers every PING with
    ``answer(body)`` and keeps the bodies it got."""

    def __init__(self, token: bytes, answer: Answer) -> None:
        self.token, self.answer = token, answer
        self.pings: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._sock = zmq.Context.instance().socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self.address = f"tcp://127.0.0.1:{self._sock.bind_to_random_port('tcp://127.0.0.1')}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            msg = decode(self._sock.recv_multipart(), self.token)
            assert msg.kind is Kind.PING
            with self._lock:
                self.pings.append(msg.body)
                try:
                    reply = self.answer(msg.body)
                except Exception as exc:  # a broken script: the test fails, not hangs
                    self.error, reply = exc, {"finished": True}
            self._sock.send_multipart(encode_control(Kind.PONG, self.token, reply))

    def seen(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.pings)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close(0)
        if self.error is not None:
            raise self.error


@pytest.fixture
def peers(token: bytes) -> Iterator[Callable[[Answer], ControlPeer]]:
    made: list[ControlPeer] = []

    def make(answer: Answer) -> ControlPeer:
        made.append(ControlPeer(token, answer))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


def config(command: list[str], **launcher: Any) -> dict[str, Any]:
    """A validated run config whose client is ``command`` (one rank, env X=1)."""
    return validate(
        {
            "problem": {
                "name": "toy",
                "parameters": [{"name": "a", "low": 0, "high": 1}],
                "fields": [{"name": "u", "shape": [4]}],
                "steps": 2,
                "client": {"command": command, "env": {"X": "1"}},
            },
            "launcher": {"max_jobs": 2, "ping_interval": 0.02, "poll_interval": 0.02, **launcher},
        }
    )


@pytest.fixture
def make_launcher(tmp_path: Path) -> Iterator[Callable[..., Launcher]]:
    made: list[Launcher] = []

    def make(
        command: list[str], alive: Callable[[], bool] = lambda: True, **launcher: Any
    ) -> Launcher:
        (tmp_path / "logs").mkdir(exist_ok=True)
        made.append(
            Launcher(
                config(command, **launcher),
                tmp_path,
                LocalBackend(),
                {"BREED_SERVER": "tcp://127.0.0.1:1"},
                alive,
            )
        )
        return made[-1]

    yield make
    for launcher in made:
        launcher.backend.close()  # every client process a test started is stopped


def run(launcher: Launcher, peer: ControlPeer, token: bytes) -> dict[str, Any]:
    link = ServerLink(peer.address, token, timeout=2.0)
    try:
        return launcher.run(link, lambda _: None)
    finally:
        link.close()


def names(pings: list[dict[str, Any]], key: str) -> list[str]:
    return [name for body in pings for name in body.get(key, [])]


def test_keeps_wanted_jobs_alive_and_tells_each_key_first(make_launcher, peers, token):
    launcher = make_launcher([PY, "-c", SHOW_AND_HANG])
    logs = launcher.run_dir / "logs"

    after = [0]  # pings since both jobs said what they were given

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        after[0] += all(
            (logs / f"client-0000{i}.log").exists() and (logs / f"client-0000{i}.log").read_text()
            for i in (1, 2)
        )
        return {"wanted_clients": 2, "finished": after[0] > 20, "sims_done": 0}

    peer = peers(answer)
    status = run(launcher, peer, token)
    assert status["finished"] is True
    assert sorted(launcher.jobs) == ["client-00001", "client-00002"]  # never more than 2
    told = {k: v for body in peer.seen() for k, v in body.get("job_keys", {}).items()}
    for name, job in launcher.jobs.items():
        shown = (logs / f"{name}.log").read_text().split()
        assert shown == [name, told[name], "None", "tcp://127.0.0.1:1", "1"]
        assert job.key_digest == told[name] and job.state is JobState.RUNNING
        assert job.pgid == int(job.job_id.removeprefix("local-"))
        # the first ping naming a job registers its key alone: sent before the job exists
        first = next(b for b in peer.seen() if name in json.dumps(b))
        assert first == {"job_keys": {name: told[name]}}
    rows = {r["name"]: r for r in read_jobs(launcher.run_dir)}
    assert {r["state"] for r in rows.values()} == {"running"}
    assert rows["client-00001"]["pgid"] == str(launcher.jobs["client-00001"].pgid)
    pids = [j.pgid for j in launcher.jobs.values()]
    launcher.shutdown(grace=0.2)
    assert not any(procs.alive(p) for p in pids)
    rows = read_jobs(launcher.run_dir)
    assert {(r["state"], r["reason"]) for r in rows} == {
        ("cancelled", "still running at the end of the run")
    }


def test_a_failed_job_is_reported_once_and_replaced(make_launcher, peers, token):
    launcher = make_launcher(["sh", "-c", "echo failing; exit 3"], max_jobs=1)

    failed: list[str] = []

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        failed.extend(body.get("failed_jobs", []))
        return {
            "wanted_clients": 1,
            "finished": "client-00001" in failed and "client-00002" in body.get("jobs", {}),
        }

    peer = peers(answer)
    run(launcher, peer, token)
    reported = names(peer.seen(), "failed_jobs")
    assert reported.count("client-00001") == 1
    first = launcher.jobs["client-00001"]
    assert (first.state, first.exit_code, first.reason) == (JobState.FAILED, 3, "exit code 3")
    assert (launcher.run_dir / "logs" / "client-00001.log").read_text() == "failing\n"


def test_five_failures_in_a_row_stop_the_run(make_launcher, peers, token):
    launcher = make_launcher(["sh", "-c", "exit 1"], max_jobs=1)
    peer = peers(lambda _: {"wanted_clients": 1})
    with pytest.raises(LauncherError, match="5 client jobs failed in a row; see .*logs"):
        run(launcher, peer, token)
    assert len(launcher.jobs) == 5


def test_a_success_resets_the_failure_count(make_launcher, peers, token):
    """Jobs fail but every fifth succeeds: never five failures in a row, the run goes on."""
    count = "n=$(cat count 2>/dev/null || echo 0); echo $((n + 1)) > count; [ $((n % 5)) = 4 ]"
    launcher = make_launcher(["sh", "-c", count], max_jobs=1)
    peer = peers(lambda body: {"wanted_clients": 1, "finished": len(body.get("jobs", {})) >= 10})
    run(launcher, peer, token)
    states = [launcher.jobs[f"client-{i:05d}"].state for i in range(1, 10)]
    assert states == [JobState.FAILED] * 4 + [JobState.DONE] + [JobState.FAILED] * 4


def test_a_silent_job_is_cancelled_reported_and_replaced(make_launcher, peers, token):
    launcher = make_launcher([PY, "-c", SHOW_AND_HANG], max_jobs=1)
    log = launcher.run_dir / "logs" / "client-00001.log"

    failed: list[str] = []

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        running = log.exists() and log.read_text() != ""
        failed.extend(body.get("failed_jobs", []))
        gone = "client-00001" in failed
        return {
            "wanted_clients": 1,
            "stale_jobs": ["client-00001"] if running and not gone else [],
            "finished": gone and "client-00002" in body.get("jobs", {}),
        }

    peer = peers(answer)
    run(launcher, peer, token)
    silent = launcher.jobs["client-00001"]
    assert silent.state is JobState.CANCELLED
    assert silent.reason == "silent for longer than launcher.simulation_timeout"
    assert not procs.alive(silent.pgid)
    assert names(peer.seen(), "failed_jobs") == ["client-00001"]
    assert launcher.failures_in_a_row == 0  # a cancel of ours is not a client failure
    row = next(r for r in read_jobs(launcher.run_dir) if r["name"] == "client-00001")
    assert row["state"] == "cancelled"


def test_a_server_that_exited_is_declared_dead_and_reports_are_kept(make_launcher, token):
    launcher = make_launcher(["true"], alive=lambda: False)
    launcher.failed_to_report = ["client-00007"]
    link = ServerLink("tcp://127.0.0.1:9", token, timeout=0.1)  # nobody listens
    with pytest.raises(ServerDied, match="the server process exited"):
        launcher.run(link, lambda _: None)
    link.close()
    assert launcher.failed_to_report == ["client-00007"]  # told to the next server


def test_a_silent_server_is_declared_dead_after_ping_timeout(make_launcher, token):
    launcher = make_launcher(["true"], ping_timeout=0.5)
    link = ServerLink("tcp://127.0.0.1:9", token, timeout=0.1)
    with pytest.raises(ServerDied, match="did not answer for 0.5 s"):
        launcher.run(link, lambda _: None)
    link.close()


def test_client_spec_carries_the_run_environment(make_launcher):
    launcher = make_launcher(["client", "--flag"], persistent=False)
    spec, digest = launcher.client_spec()
    key = spec.env.pop("BREED_JOB_KEY")
    assert (
        len(key) == 32 and digest == job_key_digest(key) == hashlib.sha256(key.encode()).hexdigest()
    )
    assert spec.env == {
        "X": "1",
        "BREED_SERVER": "tcp://127.0.0.1:1",
        "BREED_JOB_ID": "client-00001",
        "BREED_ONCE": "1",
    }
    assert (spec.name, spec.argv, spec.ranks) == ("client-00001", ["client", "--flag"], 1)
    assert (spec.workdir, spec.log_path) == (
        launcher.run_dir,
        launcher.run_dir / "logs" / "client-00001.log",
    )
    assert launcher.client_spec()[0].name == "client-00002"


def test_resume_cancels_what_a_dead_launcher_left(make_launcher, tmp_path):
    """A launcher killed with a job alive; the next one (a new backend, as after a restart)
    cancels it from ``jobs.csv``, reports it, keeps finished rows, numbers on after them."""
    dead = make_launcher([PY, "-c", SHOW_AND_HANG])
    dead.client_env["BREED_RUN_DIR"] = str(tmp_path.resolve())
    dead.count = 4  # client-00001..4 ran before
    spec, _ = dead.client_spec()
    job_id = dead.backend.submit(spec)
    pid = int(job_id.removeprefix("local-"))
    dead.jobs = {
        "client-00002": Job("client-00002", "local-1", JobState.DONE, exit_code=0),
        spec.name: Job(spec.name, job_id, pgid=pid),
    }
    dead.write_jobs()
    until(lambda: spec.log_path.exists() and spec.log_path.read_text())  # it has started

    fresh = Launcher(dead.cfg, tmp_path, LocalBackend({"run_dir": str(tmp_path)}), {}, lambda: True)
    try:
        assert fresh.adopt(read_jobs(tmp_path)) == ["client-00005"]
        assert not procs.alive(pid)
        assert fresh.failed_to_report == ["client-00005"]
        assert fresh.jobs["client-00002"].state is JobState.DONE
        assert fresh.jobs["client-00005"].reason == (
            "left by a launcher that died; cancelled on resume"
        )
        assert fresh.client_spec()[0].name == "client-00006"
        assert {r["name"]: r["state"] for r in read_jobs(tmp_path)} == {
            "client-00002": "done",
            "client-00005": "cancelled",
        }
    finally:
        fresh.backend.close()


def until(check: Callable[[], object], timeout: float = 15.0) -> None:
    """Wait for ``check()`` to be true, asking every 20 ms (a process start has no event)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.02)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("name,job_id\nclient-1,1\n", "columns are not"),
        (
            "name,job_id,pgid,state,submit_time,end_time,exit_code,reason\n"
            "worker-1,1,,running,0,,,\n",
            "job name 'worker-1' is not client-N",
        ),
        (
            "name,job_id,pgid,state,submit_time,end_time,exit_code,reason\nclient-1,1,,lost,0,,,\n",
            "state 'lost' is not one of",
        ),
        (
            "name,job_id,pgid,state,submit_time,end_time,exit_code,reason\n"
            "client-1,1,abc,running,0,,,\n",
            "submit_time and pgid must be numbers",
        ),
        (b"\xff\xfe".decode("latin-1"), "not a jobs table"),
    ],
)
def test_a_jobs_table_breed_did_not_write_is_refused(tmp_path, text, problem):
    (tmp_path / "jobs.csv").write_text(text, encoding="latin-1")
    with pytest.raises(ValueError, match=problem):
        read_jobs(tmp_path)
    (tmp_path / "jobs.csv").unlink()
    assert read_jobs(tmp_path) == []  # no table: an earlier launcher never submitted


def test_only_the_local_backend_has_process_groups():
    assert SlurmBackend().pgid("12") is None and OarBackend().pgid("12") is None
