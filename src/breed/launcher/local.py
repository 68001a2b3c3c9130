"""Local backend: client jobs are subprocesses of the launcher (``mpiexec -n P`` when P > 1).

Each job runs in its own process group so a cancel reaches every MPI rank, not just mpiexec.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from breed.launcher.backend import Backend, JobSpec, JobState, JobStatus


def find_mpiexec(name: str = "mpiexec") -> str:
    """``mpiexec`` on PATH, else next to the running interpreter (a venv's mpich wheel)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(f"launcher.mpiexec: {name!r} not found on PATH")
    return found


class LocalBackend(Backend):
    name = "local"

    def __init__(self, options: dict | None = None) -> None:
        super().__init__(options)
        self._procs: dict[str, subprocess.Popen] = {}
        self._cancelled: set[str] = set()

    def command(self, spec: JobSpec) -> list[str]:
        if spec.ranks <= 1:
            return list(spec.argv)
        mpiexec = find_mpiexec(self.options.get("mpiexec", "mpiexec"))
        return [mpiexec, "-n", str(spec.ranks), *spec.argv]

    def submit(self, spec: JobSpec) -> str:
        log = open(spec.log_path, "ab") if spec.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                self.command(spec), cwd=spec.workdir, env={**os.environ, **spec.env},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
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


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
