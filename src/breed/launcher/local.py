"""Local backend: client jobs are subprocesses of the launcher (``mpiexec -n P`` when P > 1).

Each job runs in its own process group so a cancel reaches every MPI rank, not just mpiexec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from breed import procs
from breed.launcher.backend import Backend, JobSpec, JobState, JobStatus
from breed.launcher.mpi import find_mpiexec


class LocalBackend(Backend):
    name = "local"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._cancelled: set[str] = set()

    def command(self, spec: JobSpec) -> list[str]:
        if spec.ranks <= 1:
            return list(spec.argv)
        mpiexec = find_mpiexec(self.options.get("mpiexec", "mpiexec"))
        return [mpiexec, "-n", str(spec.ranks), *spec.argv]

    def _bind(self) -> None:
        """In the child before exec: off the trainer's cores (``cpus``: breed.cores)."""
        if self.options.get("cpus"):
            os.sched_setaffinity(0, self.options["cpus"])

    def submit(self, spec: JobSpec) -> str:
        log = open(spec.log_path, "ab") if spec.log_path else None  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.command(spec),
                cwd=spec.workdir,
                env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._bind,
            )
        finally:
            if log is not None:
                log.close()
        job_id = f"local-{proc.pid}"
        self._procs[job_id] = proc
        return job_id

    def poll(self, job_ids: list[str]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        for job_id in job_ids:
            proc = self._procs.get(job_id)
            if proc is None:
                out[job_id] = JobStatus(JobState.FAILED, None, "unknown to this launcher")
                continue
            code = proc.poll()
            if code is None:
                out[job_id] = JobStatus(JobState.RUNNING)
            elif job_id in self._cancelled:
                out[job_id] = JobStatus(JobState.CANCELLED, code)
            elif code == 0:
                out[job_id] = JobStatus(JobState.DONE, 0)
            else:
                reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                out[job_id] = JobStatus(JobState.FAILED, code, reason)
        return out

    def cancel(self, job_id: str, grace: float = 3.0) -> None:
        proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return
        self._cancelled.add(job_id)
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait(timeout=5)

    def close(self) -> None:
        for job_id in list(self._procs):
            self.cancel(job_id)

    def pgid(self, job_id: str) -> int | None:  # overrides Backend.pgid
        """The job's process group (its own session: ``start_new_session``), for jobs.csv."""
        proc = self._procs.get(job_id)
        return proc.pid if proc is not None else None

    def cancel_orphan(self, job_id: str, name: str, grace: float = 3.0) -> None:
        """Kill the process group of a job left by a dead launcher, if it is still that job:
        a pid may have been reused, so the group leader must carry this job's name and run
        directory in its environment."""
        try:
            pid = int(job_id.removeprefix("local-"))
        except ValueError:
            return
        if not _is_job(pid, name, self.options.get("run_dir")):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and procs.alive(pid):
                time.sleep(0.05)
            if not procs.alive(pid):
                return


def _is_job(pid: int, name: str, run_dir: str | None) -> bool:
    """``pid`` leads its own process group and carries this job's name and run directory."""
    want = {"BREED_JOB_ID": name}
    if run_dir:
        want["BREED_RUN_DIR"] = str(Path(run_dir).resolve())
    try:
        leader = os.getpgid(pid) == pid
    except OSError:  # ProcessLookupError included
        return False
    return leader and procs.carries(pid, want)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
