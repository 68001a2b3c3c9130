"""The Slurm and OAR backends against the real local daemons of ci/ (``pytest -m slurm``,
``pytest -m oar``; ``ci/cluster-tests.sh`` runs both). One suite over both schedulers; what
only one of them has (sacct, OAR's refusal of root) is marked for that backend alone.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusterkit import FINISHED, PARAMS, PY, Cluster, cluster_up, job, job_dir, only, wait

from breed.launcher.backend import JobState, JobStatus
from breed.launcher.cluster import ClusterBackend
from breed.launcher.oar import OarBackend
from breed.launcher.scheduler_text import SchedulerError
from breed.launcher.slurm import SlurmBackend

pytestmark = pytest.mark.timeout(90)
MPI_HELLO = (
    "from mpi4py import MPI; c = MPI.COMM_WORLD; "
    "print(f'rank {c.Get_rank()} of {c.Get_size()}', flush=True)"
)


@pytest.fixture(scope="module", params=PARAMS)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return cluster_up(request.param)


@pytest.fixture
def workdir(cluster: Cluster) -> Iterator[Path]:
    with job_dir(cluster) as path:
        yield path


@pytest.fixture
def backend(cluster: Cluster, mpiexec: str) -> Iterator[ClusterBackend]:
    made = cluster.backend(mpiexec=mpiexec, min_poll_interval=0.2)
    yield made
    made.close()  # cancels whatever a failed test left running


def test_the_token_reaches_the_job_only_through_its_environment(cluster, backend, workdir):
    token = secrets.token_hex(32)
    code = (
        "import os, hashlib; "
        "print('token', hashlib.sha256(os.environ['BREED_TOKEN'].encode()).hexdigest())"
    )
    spec = job(workdir, "ok", [PY, "-c", code], BREED_TOKEN=token)
    job_id = backend.submit(spec)
    assert wait(backend, job_id, FINISHED) == JobStatus(JobState.DONE, 0)
    assert f"token {hashlib.sha256(token.encode()).hexdigest()}" in spec.log_path.read_text()
    shown, script = cluster.show(job_id), cluster.script(job_id, spec)
    assert cluster.shown_id(job_id) in shown and "exec " in script
    assert token not in shown + script
    if cluster.name == "oar":  # OAR forwards no environment: it is in a private file
        env_file = workdir / ".breed-oar" / "ok.env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
        if cluster.user is not None:
            assert env_file.stat().st_uid == pwd.getpwnam(cluster.user).pw_uid


def test_failing_command_reports_its_exit_code(backend, workdir):
    job_id = backend.submit(job(workdir, "fail", ["sh", "-c", "echo oops >&2; exit 3"]))
    status = wait(backend, job_id, FINISHED)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert "exit code 3" in status.reason
    assert "oops" in (workdir / "logs" / "fail.log").read_text()


def test_cancel_of_a_running_job_is_noticed(backend, workdir):
    job_id = backend.submit(job(workdir, "sleeper", ["sleep", "300"]))
    wait(backend, job_id, {JobState.RUNNING})
    backend.cancel(job_id)
    assert wait(backend, job_id, FINISHED).state is JobState.CANCELLED
    backend.cancel(job_id)  # already ended: no error


@pytest.mark.parametrize(
    ("cluster", "mpi"),
    [only("slurm", "srun"), only("slurm", "mpiexec"), only("oar", None)],
    indirect=["cluster"],
)
def test_two_rank_mpi_job(cluster, mpi, mpiexec, workdir):
    backend = cluster.backend(
        mpiexec=mpiexec, min_poll_interval=0.2, **({"mpi": mpi} if mpi else {})
    )
    try:
        spec = job(workdir, f"mpi-{mpi}", [PY, "-c", MPI_HELLO], ranks=2)
        job_id = backend.submit(spec)
        assert wait(backend, job_id, FINISHED, timeout=60) == JobStatus(JobState.DONE, 0)
        log = spec.log_path.read_text()
        assert "rank 0 of 2" in log and "rank 1 of 2" in log, log
    finally:
        backend.close()


def test_one_status_call_per_poll_for_all_jobs(cluster, workdir):
    held = cluster.backend(extra_args=["--hold"], min_poll_interval=30)
    try:
        ids = [held.submit(job(workdir, f"held{i}", ["true"])) for i in range(3)]
        for _ in range(5):
            statuses = held.poll(ids)
        assert set(statuses.values()) == {JobStatus(JobState.SUBMITTED, None, cluster.held_reason)}
        first, *others = cluster.status
        assert len(held.timings[first]) == 1  # rate-limited: one call, all three jobs
        assert not set(others) & set(held.timings)
    finally:
        held.close()
    if cluster.name == "slurm":
        assert (
            subprocess.run(
                ["squeue", "-h", "-t", "PD", "-j", ",".join(ids)], capture_output=True, text=True
            ).stdout.strip()
            == ""
        )
    after = cluster.backend(min_poll_interval=0)
    assert {wait(after, j, FINISHED).state for j in ids} == {JobState.CANCELLED}


def test_a_job_the_scheduler_has_no_record_of_is_failed_not_running_forever(cluster):
    never = cluster.never  # above any id this cluster hands out
    patient = cluster.backend(min_poll_interval=0, forget_grace=60)
    assert patient.poll([never])[never].state is JobState.SUBMITTED  # within its grace
    prompt = cluster.backend(min_poll_interval=0, forget_grace=0)
    status = prompt.poll([never])[never]
    assert status.state is JobState.FAILED and f"no record of job {never}" in status.reason
    for command in cluster.lookup:  # its records were asked once before giving up
        assert len(prompt.timings[command]) == 1


def test_rejected_submission_is_one_clear_error(cluster, workdir):
    options, message = cluster.rejected
    with pytest.raises(SchedulerError, match=message):
        cluster.backend(**options).submit(job(workdir, "bad", ["true"]))


@pytest.mark.parametrize("cluster", [only("slurm")], indirect=True)
def test_sacct_reads_finished_jobs(backend, workdir):
    """What the backend sees once squeue forgot a job (MinJobAge): its accounting record."""
    assert isinstance(backend, SlurmBackend)
    job_id = backend.submit(job(workdir, "acct", ["sh", "-c", "exit 4"]))
    wait(backend, job_id, FINISHED)
    deadline = time.monotonic() + 20
    while (status := backend._sacct([job_id])[job_id]) is None or not status.state.finished:
        assert time.monotonic() < deadline, "no final sacct record (is slurmdbd up?)"
        time.sleep(0.5)
    assert (status.state, status.exit_code) == (JobState.FAILED, 4)
    assert SlurmBackend({"sacct": False})._sacct([job_id]) == {job_id: None}


@pytest.mark.parametrize("cluster", [only("oar")], indirect=True)
def test_oar_refuses_root_with_one_clear_error(cluster, workdir):
    if os.geteuid() != 0:
        pytest.skip("only root is refused")
    with pytest.raises(SchedulerError, match="not allowed to submit"):
        OarBackend({}).submit(job(workdir, "root", ["true"]))


@pytest.mark.oar
def test_oar_submit_user_is_checked():
    with pytest.raises(ValueError, match="launcher.oar.submit_user: no user"):
        OarBackend({"submit_user": "no-such-user-here"})
