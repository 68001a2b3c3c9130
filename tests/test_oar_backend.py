"""The OAR backend against the real local OAR of ci/oar.sh (`pytest -m oar`).

OAR refuses root's jobs: run as root (CI), the backend submits as the user of ci/oar.sh
(``breedoar``, or $BREED_OAR_USER), and the job directories are that user's.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from breed.launcher.backend import JobSpec, JobState, JobStatus
from breed.launcher.oar import OarBackend
from breed.launcher.scheduler_text import SchedulerError

pytestmark = [pytest.mark.oar, pytest.mark.timeout(90)]
PY = sys.executable
USER = os.environ.get("BREED_OAR_USER", "breedoar") if os.geteuid() == 0 else None
FINISHED = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


@pytest.fixture(scope="module", autouse=True)
def oar_up() -> None:
    try:
        nodes = subprocess.run(["oarnodes", "-s"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        pytest.fail("no OAR client on PATH: run `ci/oar.sh up` (as root)")
    if "Alive" not in nodes.stdout:
        pytest.fail(f"the local OAR has no Alive node ({nodes.stderr.strip()}): "
                    "run `ci/oar.sh up`")
    if USER is not None:
        can = subprocess.run(["runuser", "-u", USER, "--", PY, "-c", "import mpi4py"],
                             capture_output=True, text=True)
        if can.returncode != 0:
            pytest.fail(f"user {USER} cannot run {PY} ({can.stderr.strip()[-200:]}): run "
                        f"`BREED_OAR_SHARE={PY} ci/oar.sh up`")


@pytest.fixture
def workdir():
    """A job directory the job's user owns (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="breed-oar-test-"))
    if USER is not None:
        entry = pwd.getpwnam(USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def oar(mpiexec):
    backend = OarBackend({"mpiexec": mpiexec, "submit_user": USER, "min_poll_interval": 0.2,
                          "walltime": "00:05:00"})
    yield backend
    backend.close()  # deletes whatever a failed test left running


def wait(backend: OarBackend, job_id: str, until: set[JobState], timeout: float = 40.0
         ) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll([job_id])[job_id]
        if status.state in until:
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout} s"
        time.sleep(0.2)


def job(workdir: Path, name: str, argv: list[str], ranks: int = 1, **env: str) -> JobSpec:
    return JobSpec(name, argv, ranks, env, workdir, workdir / "logs" / f"{name}.log")


def test_python_job_gets_the_token_from_a_private_env_file(oar, workdir):
    token = secrets.token_hex(32)
    code = ("import os, hashlib; "
            "print('token', hashlib.sha256(os.environ['BREED_TOKEN'].encode()).hexdigest())")
    spec = job(workdir, "ok", [PY, "-c", code], BREED_TOKEN=token)
    job_id = oar.submit(spec)
    assert wait(oar, job_id, FINISHED) == JobStatus(JobState.DONE, 0)
    assert f"token {hashlib.sha256(token.encode()).hexdigest()}" in spec.log_path.read_text()
    env_file = workdir / ".breed-oar" / "ok.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(env_file.parent.stat().st_mode) == 0o700
    if USER is not None:
        assert env_file.stat().st_uid == pwd.getpwnam(USER).pw_uid
    shown = subprocess.run(["oarstat", "-f", "-j", job_id], capture_output=True, text=True).stdout
    assert f"Job_Id: {job_id}" in shown
    assert token not in shown + (workdir / ".breed-oar" / "ok.sh").read_text()


def test_failing_command_reports_its_exit_code(oar, workdir):
    job_id = oar.submit(job(workdir, "fail", ["sh", "-c", "echo oops >&2; exit 3"]))
    status = wait(oar, job_id, FINISHED)
    assert (status.state, status.exit_code) == (JobState.FAILED, 3)
    assert "oops" in (workdir / "logs" / "fail.log").read_text()


def test_cancel_of_a_running_job_is_noticed(oar, workdir):
    job_id = oar.submit(job(workdir, "sleeper", ["sleep", "300"]))
    wait(oar, job_id, {JobState.RUNNING})
    oar.cancel(job_id)
    assert wait(oar, job_id, FINISHED).state is JobState.CANCELLED
    oar.cancel(job_id)  # already ended: no error


def test_two_rank_mpi_job(oar, workdir):
    code = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
            "print(f'rank {c.Get_rank()} of {c.Get_size()}', flush=True)")
    spec = job(workdir, "mpi", [PY, "-c", code], ranks=2)
    job_id = oar.submit(spec)
    assert wait(oar, job_id, FINISHED, timeout=60) == JobStatus(JobState.DONE, 0)
    log = spec.log_path.read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" in log, log


def test_one_oarstat_call_per_poll_for_all_jobs(workdir):
    held = OarBackend({"submit_user": USER, "extra_args": ["--hold"], "min_poll_interval": 30})
    try:
        ids = [held.submit(job(workdir, f"held{i}", ["true"])) for i in range(3)]
        for _ in range(5):
            statuses = held.poll(ids)
        assert set(statuses.values()) == {JobStatus(JobState.SUBMITTED, None, "Hold")}
        assert len(held.timings["oarstat"]) == 1
    finally:
        held.close()
    after = OarBackend({"min_poll_interval": 0})
    assert {wait(after, j, FINISHED).state for j in ids} == {JobState.CANCELLED}


def test_a_job_oar_has_no_record_of_is_failed():
    never = "999999999"
    assert OarBackend({"forget_grace": 60}).poll([never])[never].state is JobState.SUBMITTED
    status = OarBackend({"forget_grace": 0}).poll([never])[never]
    assert status.state is JobState.FAILED and "no record" in status.reason


def test_rejections_are_one_clear_error(workdir):
    too_big = OarBackend({"submit_user": USER, "cores": 512})
    with pytest.raises(SchedulerError, match="oarsub failed.*not enough resources"):
        too_big.submit(job(workdir, "big", ["true"]))
    if os.geteuid() == 0:
        as_root = OarBackend({})
        with pytest.raises(SchedulerError, match="not allowed to submit"):
            as_root.submit(job(workdir, "root", ["true"]))


def test_submit_user_is_checked():
    with pytest.raises(ValueError, match="launcher.oar.submit_user: no user"):
        OarBackend({"submit_user": "no-such-user-here"})
