"""Scheduler backend interface: the launcher only needs submit, poll and cancel.

One small module per scheduler (``local``, ``slurm``, ``oar``); adding one is a new file plus a
line in :data:`breed.launcher.BACKENDS`. Secrets (the run token) travel in ``JobSpec.env`` and
must never appear on a command line or in a job script. Every hook the launcher calls is a
method here (the optional ones with a default), so a backend is read off this class alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class JobState(StrEnum):
    PENDING = "pending"  # known to the launcher, not yet submitted
    SUBMITTED = "submitted"  # accepted by the scheduler, not running yet
    RUNNING = "running"
    DONE = "done"  # exited 0
    FAILED = "failed"  # non-zero exit, killed, node failure, timeout
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobSpec:
    """One client job: ``argv`` is the client command per MPI rank (no MPI wrapper)."""

    name: str
    argv: list[str]
    ranks: int = 1
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path = Path(".")
    log_path: Path | None = None


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    exit_code: int | None = None
    reason: str = ""


class Backend(ABC):
    """Submit, poll and cancel client jobs on one kind of scheduler."""

    name: str = "base"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        # the config section launcher.<backend> (YAML values) plus launcher.mpiexec, run_dir
        self.options: dict[str, Any] = dict(options or {})

    @abstractmethod
    def submit(self, spec: JobSpec) -> str:
        """Start or queue a job; return the scheduler's job id."""

    @abstractmethod
    def poll(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """States of the given jobs (rate-limiting is the caller's business)."""

    @abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop a job; no error if it already ended."""

    def pgid(self, job_id: str) -> int | None:
        """The job's process group on this machine, recorded in ``jobs.csv`` so that a job
        outliving its launcher can be found; None where the scheduler owns the processes."""
        return None

    def cancel_orphan(self, job_id: str, name: str) -> None:
        """Cancel a job that an earlier launcher of this run submitted (``jobs.csv``) and
        died before ending. Scheduler ids are unique, so the default is :meth:`cancel`."""
        self.cancel(job_id)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the backend holds (local processes are cancelled)."""
