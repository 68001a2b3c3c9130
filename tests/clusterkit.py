"""What the cluster tests share (``test_cluster_jobs.py``: the backends against the real local
Slurm and OAR daemons of ``ci/``; ``test_cluster_e2e.py``: a real ``breed run`` through them,
watched from outside), so one suite is parametrised over both schedulers.

:class:`Cluster` holds what differs between them (commands, the user jobs run as, the words a
scheduler uses); :data:`PARAMS` parametrises a test over both, each marked with its backend's
marker (``-m slurm`` / ``-m oar``), and :func:`only` picks one for a backend-specific test.
Watching a whole ``breed run`` is :mod:`clusterrun`'s.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from breed.launcher import make_backend
from breed.launcher.backend import JobSpec, JobState, JobStatus
from breed.launcher.cluster import ClusterBackend

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FINISHED = {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


class Cluster:
    """One scheduler of ``ci/`` as the tests see it; subclasses fill in what differs."""

    name = ""  # the backend, and the pytest marker of its tests
    submit = ""  # the submit command (its timings)
    status: tuple[str, ...] = ()  # commands following jobs; the first runs on every poll
    lookup: tuple[str, ...] = ()  # asked about a job the scheduler lost, before giving up
    held_reason = ""  # the reason a job submitted on hold shows
    cancel_reason = ""  # jobs.csv reason of a job cancelled from outside breed
    never = ""  # a job id the scheduler never handed out
    user: str | None = None  # who the jobs run as, when not whoever submits
    rejected: tuple[dict[str, Any], str] = ({}, "")  # options the scheduler refuses, error

    def check_up(self) -> None:
        raise NotImplementedError

    def launcher_options(self) -> dict[str, Any]:
        """``launcher.<backend>`` options every test's runs need."""
        return {}

    def backend(self, **options: Any) -> ClusterBackend:
        backend = make_backend(self.name, {**self.launcher_options(), **options})
        assert isinstance(backend, ClusterBackend)
        return backend

    def as_user(self, argv: list[str]) -> list[str]:
        return argv if self.user is None else ["runuser", "-u", self.user, "--", *argv]

    def cancel(self, job_ids: list[str]) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def show(self, job_id: str) -> str:
        """The scheduler's full record of a job, as a user would read it."""
        raise NotImplementedError

    def shown_id(self, job_id: str) -> str:
        raise NotImplementedError

    def script(self, job_id: str, spec: JobSpec) -> str:
        """The job script the scheduler runs."""
        raise NotImplementedError

    def jobs_under(self, path: Path) -> list[str]:
        """Unfinished jobs working under ``path`` (what a timed-out test may have left)."""
        raise NotImplementedError


class Slurm(Cluster):
    name, submit, status, lookup = "slurm", "sbatch", ("squeue", "scontrol", "sacct"), ("sacct",)
    held_reason, cancel_reason, never = "JobHeldUser", "cancelled", "60000000"  # > MaxJobId
    rejected = ({"partition": "no-such-partition"}, "sbatch failed.*invalid partition")

    def check_up(self) -> None:
        try:
            ok = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        except FileNotFoundError:
            pytest.fail("no Slurm client on PATH: run `ci/slurm.sh up` (as root)")
        if ok.returncode != 0 or "UP" not in ok.stdout:
            pytest.fail(f"the local Slurm is not up ({ok.stdout.strip()}): run `ci/slurm.sh up`")

    def cancel(self, job_ids: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=30)

    def show(self, job_id: str) -> str:
        return subprocess.run(
            ["scontrol", "show", "job", "-dd", job_id], capture_output=True, text=True, timeout=30
        ).stdout

    def shown_id(self, job_id: str) -> str:
        return f"JobId={job_id}"

    def script(self, job_id: str, spec: JobSpec) -> str:
        return subprocess.run(
            ["scontrol", "write", "batch_script", job_id, "-"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout

    def jobs_under(self, path: Path) -> list[str]:
        res = subprocess.run(
            ["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True, timeout=30
        )
        root = str(path.resolve())
        return [
            line.split("|", 1)[0]
            for line in res.stdout.splitlines()
            if "|" in line and (line.split("|", 1)[1] + "/").startswith(root + "/")
        ]


class Oar(Cluster):
    """OAR refuses root's jobs: run as root (CI), jobs are submitted as the user of ci/oar.sh
    (``breedoar``, or $BREED_OAR_USER), and job directories must be reachable by that user."""

    name, submit, status, lookup = "oar", "oarsub", ("oarstat",), ("oarstat",)
    held_reason, cancel_reason, never = "Hold", "deleted (oardel)", "999999999"
    user = os.environ.get("BREED_OAR_USER", "breedoar") if os.geteuid() == 0 else None
    rejected = ({"cores": 512}, "oarsub failed.*not enough resources")

    def check_up(self) -> None:
        try:
            nodes = subprocess.run(["oarnodes", "-s"], capture_output=True, text=True, timeout=20)
        except FileNotFoundError:
            pytest.fail("no OAR client on PATH: run `ci/oar.sh up` (as root)")
        if "Alive" not in nodes.stdout:
            pytest.fail(
                f"the local OAR has no Alive node ({nodes.stderr.strip()}): run `ci/oar.sh up`"
            )
        can = subprocess.run(
            self.as_user([PY, "-c", "import breed.client, mpi4py, snakemake"]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if can.returncode != 0:
            pytest.fail(
                f"user {self.user} cannot run {PY} ({can.stderr.strip()[-200:]}): run "
                f"`BREED_OAR_SHARE={PY} ci/oar.sh up`"
            )

    def launcher_options(self) -> dict[str, Any]:
        return {"submit_user": self.user, "walltime": "00:10:00"}

    def cancel(self, job_ids: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.as_user(["oardel", *job_ids]), capture_output=True, text=True, timeout=60
        )

    def show(self, job_id: str) -> str:
        return subprocess.run(
            ["oarstat", "-f", "-j", job_id], capture_output=True, text=True, timeout=60
        ).stdout

    def shown_id(self, job_id: str) -> str:
        return f"Job_Id: {job_id}"

    def script(self, job_id: str, spec: JobSpec) -> str:
        return (Path(spec.workdir) / ".breed-oar" / f"{spec.name}.sh").read_text()

    def jobs_under(self, path: Path) -> list[str]:
        res = subprocess.run(["oarstat", "--json"], capture_output=True, text=True, timeout=60)
        try:
            jobs = yaml.safe_load(res.stdout) or {}  # JSON is YAML
        except yaml.YAMLError:
            return []
        root = str(path.resolve()) + "/"
        return [
            str(i)
            for i, j in jobs.items()
            if isinstance(j, dict) and (str(j.get("launchingDirectory", "")) + "/").startswith(root)
        ]


CLUSTERS: dict[str, Cluster] = {"slurm": Slurm(), "oar": Oar()}
PARAMS = [pytest.param(n, marks=getattr(pytest.mark, n), id=n) for n in CLUSTERS]


def only(name: str, *values: Any) -> Any:
    """One parameter set of a test for backend ``name`` alone, marked with its marker."""
    return pytest.param(
        name,
        *values,
        marks=getattr(pytest.mark, name),
        id="-".join([name, *(str(v) for v in values if v)]),
    )


def cluster_up(name: str) -> Cluster:
    """The cluster ``name``, or the test fails saying how to bring it up."""
    CLUSTERS[name].check_up()
    return CLUSTERS[name]


@contextlib.contextmanager
def job_dir(cluster: Cluster) -> Iterator[Path]:
    """A fresh directory the jobs' user owns (pytest's tmp_path is private to root); at the
    end, jobs still working under it are cancelled and it is removed."""
    path = Path(tempfile.mkdtemp(prefix=f"breed-{cluster.name}-test-"))
    path.chmod(0o755)
    if cluster.user is not None:
        entry = pwd.getpwnam(cluster.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    try:
        yield path
    finally:
        left = cluster.jobs_under(path)
        if left:
            cluster.cancel(left)
        shutil.rmtree(path, ignore_errors=True)


def job(workdir: Path, name: str, argv: list[str], ranks: int = 1, **env: str) -> JobSpec:
    return JobSpec(name, argv, ranks, env, workdir, workdir / "logs" / f"{name}.log")


def wait(
    backend: ClusterBackend, job_id: str, until: set[JobState], timeout: float = 40.0
) -> JobStatus:
    """Poll until the job is in one of ``until`` (a scheduler tells no events)."""
    deadline = time.monotonic() + timeout
    while True:
        status = backend.poll([job_id])[job_id]
        if status.state in until:
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout} s"
        time.sleep(0.2)
