"""The launcher loop: keep at most ``m`` client jobs alive, watch the server, stop cleanly.

It pings the server over its control socket; the pong says how many clients the server wants
(never more than the simulations left), whether it finished, and progress. Jobs the backend
reports FAILED (non-zero exit, killed, scheduler FAILED/TIMEOUT) are told to the server, which
hands their simulations out again with the same parameters (``launcher.max_retries``, then
``launcher.on_give_up``); jobs the server reports silent (``stale_jobs``: no step for
``simulation_timeout`` s) are cancelled. A server that exits or stops answering for
``ping_timeout`` s raises :class:`ServerDied`; :mod:`breed.launcher.runner` restarts it from its checkpoint.

``DIR/jobs.csv`` is rewritten on every change of the job table, so a launcher that is killed
leaves behind the jobs it had submitted: ``breed run --resume DIR`` cancels them
(:meth:`Launcher.adopt`) instead of leaving them orphaned.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, cast

import zmq

from breed.launcher.backend import Backend, JobSpec, JobState
from breed.problems import problem_of
from breed.protocol import ControlMessage, Kind, ProtocolError, decode, encode_control
from breed.rundir import JOBS, LOGS
from breed.runlog import write_table
from breed.security import ENV_JOB_KEY, ENV_ONCE, job_key_digest, new_job_key

log = logging.getLogger("breed.launcher")
JOB_COLUMNS = ["name", "job_id", "pgid", "state", "submit_time", "end_time", "exit_code", "reason"]


class ServerStatus(TypedDict, total=False):
    """The keys of the server's pong that the launcher and ``breed run`` read (the server
    sends more: buffer and rejection counts, in-flight simulations)."""

    finished: bool
    failed: str | None  # why the run cannot finish
    wanted_clients: int  # never more than the simulations left
    stale_jobs: list[str]  # jobs silent for launcher.simulation_timeout
    sims_done: int
    target: int
    iteration: int
    warnings: dict[str, str]  # topic -> one line, while the condition lasts
    phase: str  # what the server is doing (waiting for data, training, final validation)
    resamplings: int  # how many times the sampler resampled so far (Breed)
    last_resampling: dict[str, Any]  # the last one's record (generation, K, r, proposal)


Row = dict[str, str | int | float | None]  # one row of jobs.csv as written


class LauncherError(RuntimeError):
    """The run cannot go on (server dead for good, clients failing over and over)."""


class ServerDied(LauncherError):
    """The server process exited or stopped answering pings."""


@dataclass
class Job:
    name: str  # launcher-side name, given to the client as BREED_JOB_ID
    job_id: str  # the scheduler's id
    state: JobState = JobState.SUBMITTED
    submit_time: float = field(default_factory=time.time)
    end_time: float | None = None
    exit_code: int | None = None
    reason: str = ""
    pgid: int | None = None  # local backend: the job's process group
    key_digest: str = ""  # SHA-256 of the job's key (breed.security.JobKeys)


class ServerLink:
    """REQ socket to the server's control address; a timed-out request recreates it."""

    def __init__(
        self, address: str, token: bytes, timeout: float, curve_serverkey: bytes | None = None
    ) -> None:
        self.address, self.token, self.timeout = address, token, timeout
        self.curve_serverkey = curve_serverkey
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None

    def ping(self, body: dict[str, Any]) -> dict[str, Any] | None:  # JSON both ways
        """Pong body, or None if the server did not answer within ``timeout``."""
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            if self.curve_serverkey is not None:
                from breed.security import make_curve_client

                make_curve_client(self._sock, self.curve_serverkey)
            self._sock.connect(self.address)
        self._sock.send_multipart(encode_control(Kind.PING, self.token, body))
        if not self._sock.poll(int(self.timeout * 1000)):
            self.close()
            return None
        try:
            msg = decode(self._sock.recv_multipart(), self.token)
        except ProtocolError as exc:
            raise LauncherError(f"server answered with a bad message: {exc}") from exc
        if not isinstance(msg, ControlMessage):  # a step on the control socket
            raise LauncherError(f"server answered with a {type(msg).__name__}")
        return msg.body

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None


JOB_NAME = re.compile(r"client-\d{1,9}")


def read_jobs(run_dir: Path) -> list[dict[str, str]]:
    """Rows of ``DIR/jobs.csv`` (empty if a launcher never wrote one).

    Raises ValueError naming the line for a table that is not one this launcher wrote: a
    resume must know every job it has to cancel, so it refuses rather than guesses.
    """
    path = run_dir / JOBS
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a jobs table ({exc})") from None
    states = {s.value for s in JobState}
    for line, row in enumerate(rows, start=2):
        problem = None
        if None in row or None in row.values() or set(row) != set(JOB_COLUMNS):
            problem = f"columns are not {','.join(JOB_COLUMNS)}"
        elif not JOB_NAME.fullmatch(row["name"]):
            problem = f"job name {row['name']!r} is not client-N"
        elif row["state"] not in states:
            problem = f"state {row['state']!r} is not one of {', '.join(sorted(states))}"
        elif not _number_or_empty(row["submit_time"]) or not _number_or_empty(row["pgid"]):
            problem = "submit_time and pgid must be numbers"
        if problem:
            raise ValueError(
                f"{path} line {line}: {problem}; this is not a table breed "
                "wrote (fix or remove it, and cancel any job it listed by hand)"
            )
    return rows


def _number_or_empty(text: str) -> bool:
    try:
        return text == "" or math.isfinite(float(text))
    except ValueError:
        return False


class Launcher:
    """Submits, polls and cancels client jobs for one run."""

    def __init__(
        self,
        cfg: dict[str, Any],
        run_dir: Path,
        backend: Backend,
        client_env: dict[str, str],
        server_alive: Callable[[], bool],
    ) -> None:
        self.cfg = cfg
        self.lc = cfg["launcher"]
        self.problem = problem_of(cfg)
        self.run_dir = run_dir
        self.backend = backend
        self.client_env = client_env
        self.server_alive = server_alive
        self.jobs: dict[str, Job] = {}
        self.failed_to_report: list[str] = []
        self.failures_in_a_row = 0
        self.count = 0

    def client_spec(self) -> tuple[JobSpec, str]:
        """The next client job and the digest of its key (the key is in its environment
        only)."""
        self.count += 1
        name = f"client-{self.count:05d}"
        client = self.problem.client
        key = new_job_key()
        env = {**client.env, **self.client_env, "BREED_JOB_ID": name, ENV_JOB_KEY: key}
        if not self.lc["persistent"]:
            env[ENV_ONCE] = "1"  # one simulation per job: the client API stops after it
        return JobSpec(
            name=name,
            argv=list(client.command),
            ranks=client.ranks,
            env=env,
            workdir=self.run_dir,
            log_path=self.run_dir / LOGS / f"{name}.log",
        ), job_key_digest(key)

    def alive(self) -> list[Job]:
        return [j for j in self.jobs.values() if not j.state.finished]

    def _poll(self) -> None:
        alive = self.alive()
        if not alive:
            return
        states = self.backend.poll([j.job_id for j in alive])
        changed = False
        for job in alive:
            st = states.get(job.job_id)
            if st is None or st.state == job.state:
                continue
            changed = True
            job.state, job.exit_code, job.reason = st.state, st.exit_code, st.reason
            if st.state.finished:
                job.end_time = time.time()
            if st.state in (JobState.FAILED, JobState.CANCELLED):
                log.warning(
                    "client job %s (%s) %s: %s", job.name, job.job_id, st.state.value, st.reason
                )
                self.failed_to_report.append(job.name)
                self.failures_in_a_row += 1
            elif st.state is JobState.DONE:
                self.failures_in_a_row = 0
        if changed:
            self.write_jobs()

    def _top_up(self, wanted: int, link: ServerLink) -> None:
        limit = max(5, 3 * self.lc["max_jobs"])
        if self.failures_in_a_row >= limit:
            raise LauncherError(
                f"{self.failures_in_a_row} client jobs failed in a row; see {self.run_dir / 'logs'}"
            )
        submitted = False
        for _ in range(wanted - len(self.alive())):
            spec, digest = self.client_spec()
            # the server learns the job's key before the job exists: its first REQUEST is
            # never refused, and no one else can claim its id
            if link.ping({"job_keys": {spec.name: digest}}) is None:
                break  # the main loop notices a dead server
            job_id = self.backend.submit(spec)
            self.jobs[spec.name] = Job(
                spec.name, job_id, pgid=self.backend.pgid(job_id), key_digest=digest
            )
            log.info("submitted %s as %s", spec.name, job_id)
            submitted = True
        if submitted:
            self.write_jobs()

    def _cancel(self, job: Job, reason: str) -> None:
        """Cancel one of our jobs; a cancel we asked for is not a client failure."""
        self.backend.cancel(job.job_id)
        job.state, job.end_time, job.reason = JobState.CANCELLED, time.time(), reason

    def _cancel_stale(self, names: list[str]) -> None:
        """Jobs whose simulation went silent (the server already handed it out again): a hung
        client would hold its slot for ever."""
        hit = False
        for name in names:
            job = self.jobs.get(name)
            if job is not None and not job.state.finished:
                log.warning(
                    "client job %s (%s) silent for more than %g s: cancelled",
                    name,
                    job.job_id,
                    self.lc["simulation_timeout"],
                )
                self._cancel(job, "silent for longer than launcher.simulation_timeout")
                self.failed_to_report.append(name)
                hit = True
        if hit:
            self.write_jobs()

    def cancel_all(self, reason: str) -> list[str]:
        """Cancel every live job (the server they talk to is gone); returns their names."""
        names = []
        for job in self.alive():
            self._cancel(job, reason)
            names.append(job.name)
        self.write_jobs()
        return names

    def adopt(self, rows: list[dict[str, str]]) -> list[str]:
        """Resume after a launcher death: cancel the jobs an earlier launcher of this run left
        running (never orphaned, never two clients on one simulation), report them to the
        server as failed, and keep numbering new jobs after theirs. Returns the names cancelled.
        """
        cancelled = []
        for row in rows:
            name = row.get("name", "")
            if name.startswith("client-") and name[7:].isdigit():
                self.count = max(self.count, int(name[7:]))
            state = row.get("state", "")
            known = state in {s.value for s in JobState}
            job = Job(
                name,
                row.get("job_id", ""),
                JobState(state) if known else JobState.FAILED,
                float(row.get("submit_time") or 0),
                reason=row.get("reason", ""),
            )
            if not job.state.finished and job.job_id:
                self.backend.cancel_orphan(job.job_id, name)
                job.state, job.end_time = JobState.CANCELLED, time.time()
                job.reason = "left by a launcher that died; cancelled on resume"
                cancelled.append(name)
                log.warning(
                    "cancelled %s (%s), left running by the previous launcher", name, job.job_id
                )
            self.jobs[name] = job
        self.failed_to_report.extend(cancelled)
        self.write_jobs()
        return cancelled

    def run(self, link: ServerLink, on_status: Callable[[ServerStatus], None]) -> ServerStatus:
        """Loop until the server reports the run finished; returns its last status.

        Raises :class:`ServerDied` when the server process exits or is silent for
        ``launcher.ping_timeout`` seconds.
        """
        last_pong = time.monotonic()
        last_poll = 0.0
        status: ServerStatus = {}
        while True:
            now = time.monotonic()
            if now - last_poll >= self.lc["poll_interval"]:
                self._poll()
                last_poll = now
            reported, self.failed_to_report = self.failed_to_report, []
            pong = link.ping(
                {
                    "failed_jobs": reported,
                    "jobs": {j.name: j.job_id for j in self.jobs.values()},
                    "job_keys": {j.name: j.key_digest for j in self.alive() if j.key_digest},
                }
            )
            if pong is None:
                self.failed_to_report = reported + self.failed_to_report
                if not self.server_alive():
                    raise ServerDied("the server process exited; see logs/server.log")
                if time.monotonic() - last_pong > self.lc["ping_timeout"]:
                    raise ServerDied(f"the server did not answer for {self.lc['ping_timeout']:g} s")
                continue
            last_pong = time.monotonic()
            status = cast(ServerStatus, pong)  # JSON, as the server's status() builds it
            on_status(status)
            if status.get("finished"):
                return status
            self._cancel_stale(list(status.get("stale_jobs", [])))
            self._top_up(int(status.get("wanted_clients", 0)), link)
            time.sleep(self.lc["ping_interval"])

    def shutdown(self, grace: float = 10.0) -> None:
        """Persistent clients exit on STOP by themselves; cancel whatever is left."""
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            self._poll()
            time.sleep(0.1)
        for job in self.alive():
            self._cancel(job, "still running at the end of the run")
        self.backend.close()
        self.write_jobs()

    def job_rows(self) -> list[Row]:
        return [
            {
                "name": j.name,
                "job_id": j.job_id,
                "pgid": j.pgid,
                "state": j.state.value,
                "submit_time": j.submit_time,
                "end_time": j.end_time,
                "exit_code": j.exit_code,
                "reason": j.reason,
            }
            for j in self.jobs.values()
        ]

    def write_jobs(self) -> None:
        """``DIR/jobs.csv``, atomically: what a resumed launcher must find again."""
        write_table(self.run_dir / JOBS, self.job_rows(), JOB_COLUMNS)
