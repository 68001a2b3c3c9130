"""What the Slurm and OAR backends share: timed scheduler commands and rate-limited polling.

A cluster backend fills in ``_submit``, ``_query`` and ``_cancel``; this base class keeps
finished states once known (a finished job is never asked about again), asks the scheduler at
most once per ``min_poll_interval`` seconds with one command for all jobs, and declares FAILED
a job the scheduler has had no record of for ``forget_grace`` seconds in a row (a job aged out
of ``squeue`` with no accounting record would otherwise look alive forever).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from breed.launcher.backend import Backend, JobSpec, JobState, JobStatus
from breed.launcher.scheduler_text import SchedulerError, first_error_line

log = logging.getLogger(__name__)

# Options of every cluster backend: seconds between two scheduler queries (in the schema, as
# launcher.<backend>.min_poll_interval), seconds without any record before a job is declared
# forgotten, seconds one scheduler command may take (these two are not: tests set them).
DEFAULTS = {"min_poll_interval": 2.0, "forget_grace": 60.0, "command_timeout": 30.0}


# The command each scheduler's jobs are submitted with, by the backends and by the workflow's
# cluster profiles. Without it nothing can run, so callers check it first and fail at once.
SUBMIT_COMMANDS = {"slurm": "sbatch", "oar": "oarsub"}


def missing_submit_command(scheduler: str) -> str | None:
    """One line saying ``scheduler``'s submit command is not on PATH, or None (found, or not a
    scheduler: ``local``)."""
    command = SUBMIT_COMMANDS.get(scheduler)
    if command is None or shutil.which(command):
        return None
    return (
        f"{command} not found on PATH: {scheduler} jobs cannot be submitted from this machine "
        f"(run on a {scheduler} submit host, or without the {scheduler} profile/backend)"
    )


def resolve_mpiexec(name: str) -> str:
    """``name`` on PATH, else next to the running interpreter (a venv's mpich wheel), else as is
    (the job's own PATH may have it)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent)) or name


class ClusterBackend(Backend):
    """Common state of the Slurm and OAR backends (see the module docstring)."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__({**DEFAULTS, **(options or {})})
        self.min_poll_interval = float(self.options["min_poll_interval"])
        self.forget_grace = float(self.options["forget_grace"])
        self.command_timeout = float(self.options["command_timeout"])
        self.timings: dict[str, list[float]] = {}  # command name -> wall seconds of each call
        self._final: dict[str, JobStatus] = {}
        self._last: dict[str, JobStatus] = {}
        self._missing_since: dict[str, float] = {}
        self._submitted: list[str] = []
        self._cancelled: set[str] = set()
        self._last_query = -float("inf")

    # -- hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _submit(self, spec: JobSpec) -> str:
        """Submit; return the job id or raise SchedulerError."""

    @abstractmethod
    def _query(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        """Ask the scheduler once: a status per job it knows, None for a job it has no record
        of; a job left out is one it could not tell about this time (kept as it was)."""

    @abstractmethod
    def _cancel(self, job_ids: list[str]) -> None:
        """Ask the scheduler to stop the jobs (already finished ones included: no error)."""

    # -- commands ------------------------------------------------------------------------
    def run(
        self,
        argv: list[str],
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        label: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a scheduler command, timed in ``self.timings[label]``; a non-zero exit is the
        caller's to judge (squeue exits 1 for unknown jobs)."""
        name = label or Path(argv[0]).name
        start = time.perf_counter()
        try:
            return subprocess.run(
                argv,
                input=input,
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=self.command_timeout,
                check=False,
            )
        except FileNotFoundError:
            raise SchedulerError(
                f"{argv[0]}: command not found (is the scheduler's client installed and on PATH?)"
            ) from None
        except subprocess.TimeoutExpired:
            raise SchedulerError(
                f"{name} did not answer within {self.command_timeout:g} s"
            ) from None
        finally:
            self.timings.setdefault(name, []).append(time.perf_counter() - start)

    def check(self, res: subprocess.CompletedProcess[str], what: str) -> str:
        """stdout of a command that must succeed, else a one-line SchedulerError."""
        if res.returncode != 0:
            raise SchedulerError(
                f"{what} failed (exit {res.returncode}): {first_error_line(res.stderr, res.stdout)}"
            )
        return res.stdout

    # -- Backend -------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> str:
        job_id = self._submit(spec)
        self._submitted.append(job_id)
        return job_id

    def poll(self, job_ids: list[str]) -> dict[str, JobStatus]:
        todo = [j for j in job_ids if j not in self._final]
        now = time.monotonic()
        due = now - self._last_query >= self.min_poll_interval
        if todo and (due or any(j not in self._last for j in todo)):
            self._last_query = now
            try:
                seen = self._query(todo)
            except SchedulerError as e:  # a busy or restarting controller: ask again later
                log.warning("%s poll failed, keeping the last states: %s", self.name, e)
                seen = {}
            for job_id in todo:
                if job_id in seen:
                    self._record(job_id, seen[job_id], now)
        pending = JobStatus(JobState.SUBMITTED)
        return {j: self._final.get(j) or self._last.get(j, pending) for j in job_ids}

    def _record(self, job_id: str, status: JobStatus | None, now: float) -> None:
        if status is None:
            since = self._missing_since.setdefault(job_id, now)
            if now - since < self.forget_grace:
                return
            status = JobStatus(
                JobState.FAILED,
                None,
                (
                    f"the scheduler has no record of job {job_id} (for {now - since:.0f} s): "
                    "it ended and was forgotten, or never existed"
                ),
            )
        else:
            self._missing_since.pop(job_id, None)
        if status.state.finished:
            self._final[job_id] = status
            self._last.pop(job_id, None)
        else:
            self._last[job_id] = status

    def cancel(self, job_id: str) -> None:
        if job_id in self._final:
            return
        self._cancelled.add(job_id)
        try:
            self._cancel([job_id])
        except SchedulerError as e:
            log.warning("%s cancel of %s failed: %s", self.name, job_id, e)

    def close(self) -> None:
        """Cancel the jobs this backend submitted that are neither finished nor cancelled: a
        client job outliving its launcher would wait for a server that is gone."""
        left = [j for j in self._submitted if j not in self._final and j not in self._cancelled]
        if left:
            self._cancelled.update(left)
            try:
                self._cancel(left)
            except SchedulerError as e:
                log.warning("%s cancel of %s failed: %s", self.name, left, e)
