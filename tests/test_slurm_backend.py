"""The Slurm backend against the real local Slurm of ci/slurm.sh (`pytest -m slurm`)."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breed.launcher import make_backend
from breed.launcher.backend import JobSpec, JobState, JobStatus
from breed.launcher.scheduler_text import SchedulerError
from breed.launcher.slurm import SlurmBackend

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(90)]
PY = sys.executable
MPI_HELLO = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
             "print(f'rank {c.Get_rank()} of {c.Get_size()}', flush=True)")


@pytest.fixture(scope="module", autouse=True)
def slurm_up() -> None:
    try:
        ok = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        pytest.fail("no Slurm client on PATH: run `ci/slurm.sh up` (as root)")
    if ok.returncode != 0 or "UP" not in ok.stdout:
        pytest.fail(f"the local Slurm is not up ({ok.stdout.strip()}): run `ci/slurm.sh up`")


@pytest.fixture
def slurm(mpiexec):
    backend = make_backend("slurm", {"mpiexec": mpiexec, "min_poll_interval": 0.2})
    yield backend
    backend.close()  # cancels whatever a failed test left running


def wait(backend: SlurmBackend, job_id: str, until: set[JobState], timeout: float = 30.0
         ) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll([job_id])[job_id]
        if status.state in until:
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout} s"
        time.sleep(0.1)


def job(tmp_path: Path, name: str, argv: list[str], ranks: int = 1, **env: str) -> JobSpec:
    return JobSpec(name, argv, ranks, env, tmp_path, tmp_path / "logs" / f"{name}.log")


FINISHED = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


def test_python_job_gets_the_token_only_through_its_environment(slurm, tmp_path):
    token = secrets.token_hex(32)
    code = ("import os, hashlib; "
            "print('token', hashlib.sha256(os.environ['BREED_TOKEN'].encode()).hexdigest())")
    spec = job(tmp_path, "ok", [PY, "-c", code], BREED_TOKEN=token)
    job_id = slurm.submit(spec)
    assert wait(slurm, job_id, FINISHED) == JobStatus(JobState.DONE, 0)
    assert f"token {hashlib.sha256(token.encode()).hexdigest()}" in spec.log_path.read_text()
    shown = subprocess.run(["scontrol", "show", "job", "-dd", job_id], capture_output=True,
                           text=True).stdout
    script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"],
                            capture_output=True, text=True).stdout
    assert f"JobId={job_id}" in shown and "exec " in script
    assert token not in shown + script


def test_failing_command_reports_its_exit_code(slurm, tmp_path):
    job_id = slurm.submit(job(tmp_path, "fail", ["sh", "-c", "echo oops >&2; exit 3"]))
    status = wait(slurm, job_id, FINISHED)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert "exit code 3" in status.reason
    assert "oops" in (tmp_path / "logs" / "fail.log").read_text()


def test_cancel_of_a_running_job_is_noticed(slurm, tmp_path):
    job_id = slurm.submit(job(tmp_path, "sleeper", ["sleep", "300"]))
    wait(slurm, job_id, {JobState.RUNNING})
    slurm.cancel(job_id)
    assert wait(slurm, job_id, FINISHED).state is JobState.CANCELLED
    slurm.cancel(job_id)  # already ended: no error


@pytest.mark.parametrize("mpi", ["srun", "mpiexec"])
def test_two_rank_mpi_job(mpi, mpiexec, tmp_path):
    backend = SlurmBackend({"mpi": mpi, "mpiexec": mpiexec, "min_poll_interval": 0.2})
    try:
        spec = job(tmp_path, f"mpi-{mpi}", [PY, "-c", MPI_HELLO], ranks=2)
        job_id = backend.submit(spec)
        assert wait(backend, job_id, FINISHED, timeout=60) == JobStatus(JobState.DONE, 0)
        log = spec.log_path.read_text()
        assert "rank 0 of 2" in log and "rank 1 of 2" in log, log
    finally:
        backend.close()


def test_one_squeue_call_per_poll_for_all_jobs(slurm, tmp_path):
    held = SlurmBackend({"extra_args": ["--hold"], "min_poll_interval": 30})
    try:
        ids = [held.submit(job(tmp_path, f"held{i}", ["true"])) for i in range(3)]
        for _ in range(5):
            statuses = held.poll(ids)
        assert {s.state for s in statuses.values()} == {JobState.SUBMITTED}
        assert statuses[ids[0]].reason == "JobHeldUser"
        assert len(held.timings["squeue"]) == 1  # rate-limited: one call, all three jobs
        assert "sacct" not in held.timings and "scontrol" not in held.timings
    finally:
        held.close()
    assert subprocess.run(["squeue", "-h", "-t", "PD", "-j", ",".join(ids)], capture_output=True,
                          text=True).stdout.strip() == ""


def test_a_job_slurm_has_no_record_of_is_failed_not_running_forever(tmp_path):
    never = "60000000"  # above any id this cluster hands out
    patient = SlurmBackend({"min_poll_interval": 0, "forget_grace": 60})
    assert patient.poll([never])[never].state is JobState.SUBMITTED  # within its grace
    prompt = SlurmBackend({"min_poll_interval": 0, "forget_grace": 0})
    status = prompt.poll([never])[never]
    assert status.state is JobState.FAILED and "no record of job 60000000" in status.reason
    assert len(prompt.timings["sacct"]) == 1  # accounting was asked before giving up


def test_sacct_reads_finished_jobs(slurm, tmp_path):
    """What the backend sees once squeue forgot a job (MinJobAge): its accounting record."""
    job_id = slurm.submit(job(tmp_path, "acct", ["sh", "-c", "exit 4"]))
    wait(slurm, job_id, FINISHED)
    deadline = time.monotonic() + 20
    while (status := slurm._sacct([job_id])[job_id]) is None or not status.state.finished:
        assert time.monotonic() < deadline, "no final sacct record (is slurmdbd up?)"
        time.sleep(0.5)
    assert (status.state, status.exit_code) == (JobState.FAILED, 4)
    assert SlurmBackend({"sacct": False})._sacct([job_id]) == {job_id: None}


def test_rejected_submission_is_one_clear_error(tmp_path):
    backend = SlurmBackend({"partition": "no-such-partition"})
    with pytest.raises(SchedulerError, match="sbatch failed.*invalid partition"):
        backend.submit(job(tmp_path, "bad", ["true"]))
