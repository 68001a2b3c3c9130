"""The launcher loop: keep at most ``m`` client jobs alive, watch the server, stop cleanly.

It pings the server over its control socket; the pong says how many clients the server wants
(never more than the simulations left), whether it finished, and progress. Jobs the backend
reports FAILED are told to the server, which hands their simulations out again.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from breed.launcher.backend import Backend, JobSpec, JobState
from breed.protocol import Kind, ProtocolError, decode, encode_control

log = logging.getLogger("breed.launcher")


class LauncherError(RuntimeError):
    """The run cannot go on (server dead, clients failing over and over)."""


@dataclass
class Job:
    name: str  # launcher-side name, given to the client as BREED_JOB_ID
    job_id: str  # the scheduler's id
    state: JobState = JobState.SUBMITTED
    submit_time: float = field(default_factory=time.time)
    end_time: float | None = None
    exit_code: int | None = None
    reason: str = ""


class ServerLink:
    """REQ socket to the server's control address; a timed-out request recreates it."""

    def __init__(self, address: str, token: bytes, timeout: float) -> None:
        self.address, self.token, self.timeout = address, token, timeout
        self._ctx = zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def ping(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """Pong body, or None if the server did not answer within ``timeout``."""
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            self._sock.connect(self.address)
        self._sock.send_multipart(encode_control(Kind.PING, self.token, body))
        if not self._sock.poll(int(self.timeout * 1000)):
            self.close()
            return None
        try:
            msg = decode(self._sock.recv_multipart(), self.token)
        except ProtocolError as exc:
            raise LauncherError(f"server answered with a bad message: {exc}") from exc
        return msg.body

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


class Launcher:
    """Submits, polls and cancels client jobs for one run."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path, backend: Backend,
                 client_env: dict[str, str], server_alive: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.lc = cfg["launcher"]
        self.run_dir = run_dir
        self.backend = backend
        self.client_env = client_env
        self.server_alive = server_alive
        self.jobs: dict[str, Job] = {}
        self.failed_to_report: list[str] = []
        self.failures_in_a_row = 0
        self.count = 0

    def client_spec(self) -> JobSpec:
        self.count += 1
        name = f"client-{self.count:05d}"
        argv = [sys.executable, "-m", "breed.client"]
        if not self.lc["persistent"]:
            argv.append("--once")
        return JobSpec(name=name, argv=argv, ranks=self.cfg["solver"]["ranks"],
                       env={**self.client_env, "BREED_JOB_ID": name}, workdir=self.run_dir,
                       log_path=self.run_dir / "logs" / f"{name}.log")

    def alive(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.state.finished]

    def _poll(self) -> None:
        alive = self.alive()
        if not alive:
            return
        states = self.backend.poll([j.job_id for j in alive])
        for job in alive:
            st = states.get(job.job_id)
            if st is None or st.state == job.state:
                continue
            job.state, job.exit_code, job.reason = st.state, st.exit_code, st.reason
            if st.state.finished:
                job.end_time = time.time()
            if st.state in (JobState.FAILED, JobState.CANCELLED):
                log.warning("client job %s (%s) %s: %s", job.name, job.job_id,
                            st.state.value, st.reason)
                self.failed_to_report.append(job.name)
                self.failures_in_a_row += 1
            elif st.state is JobState.DONE:
                self.failures_in_a_row = 0

    def _top_up(self, wanted: int) -> None:
        limit = max(5, 3 * self.lc["max_jobs"])
        if self.failures_in_a_row >= limit:
            raise LauncherError(
                f"{self.failures_in_a_row} client jobs failed in a row; see "
                f"{self.run_dir / 'logs'}")
        for _ in range(wanted - len(self.alive())):
            spec = self.client_spec()
            job_id = self.backend.submit(spec)
            self.jobs[spec.name] = Job(spec.name, job_id)
            log.info("submitted %s as %s", spec.name, job_id)

    def run(self, link: ServerLink, on_status: Callable[[dict[str, Any]], None]) -> dict:
        """Loop until the server reports the run finished; returns its last status."""
        last_pong = time.monotonic()
        last_poll = 0.0
        status: dict[str, Any] = {}
        while True:
            now = time.monotonic()
            if now - last_poll >= self.lc["poll_interval"]:
                self._poll()
                last_poll = now
            reported, self.failed_to_report = self.failed_to_report, []
            pong = link.ping({"failed_jobs": reported, "jobs": {
                j.name: j.job_id for j in self.jobs.values()}})
            if pong is None:
                self.failed_to_report = reported + self.failed_to_report
                if not self.server_alive():
                    raise LauncherError("the server process exited; see logs/server.log")
                if time.monotonic() - last_pong > self.lc["ping_timeout"]:
                    raise LauncherError(
                        f"the server did not answer for {self.lc['ping_timeout']:g} s")
                continue
            last_pong = time.monotonic()
            status = pong
            on_status(status)
            if status.get("finished"):
                return status
            self._top_up(int(status.get("wanted_clients", 0)))
            time.sleep(self.lc["ping_interval"])

    def shutdown(self, grace: float = 10.0) -> None:
        """Persistent clients exit on STOP by themselves; cancel whatever is left."""
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            self._poll()
            time.sleep(0.1)
        for job in self.alive():
            self.backend.cancel(job.job_id)
            job.state, job.end_time = JobState.CANCELLED, time.time()
        self.backend.close()

    def job_rows(self) -> list[dict[str, Any]]:
        return [{"name": j.name, "job_id": j.job_id, "state": j.state.value,
                 "submit_time": j.submit_time, "end_time": j.end_time,
                 "exit_code": j.exit_code, "reason": j.reason} for j in self.jobs.values()]
