"""The local backend (``breed.launcher.local``): client jobs as real subprocesses, each in its
own process group, so a cancel reaches every rank and a dead launcher's jobs can be found
again by pid (and told apart from a process that reused the pid)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from breed import procs
from breed.launcher.backend import JobSpec, JobState, JobStatus
from breed.launcher.local import LocalBackend

pytestmark = pytest.mark.timeout(30)
PY = sys.executable
# A job that ignores SIGTERM and says so once the handler is in place (a hung client).
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(300)"
)
# A job whose child sleeps in the job's process group; both pids go to the log.
PARENT_AND_CHILD = 'sleep 300 & echo "pids $$ $!"; wait'


@pytest.fixture
def local() -> Iterator[LocalBackend]:
    backend = LocalBackend()
    yield backend
    backend.close()  # every job a test left running is cancelled


def job(tmp_path: Path, name: str, argv: list[str], ranks: int = 1, **env: str) -> JobSpec:
    return JobSpec(name, argv, ranks, env, tmp_path, tmp_path / f"{name}.log")


def until(check: Callable[[], object], timeout: float = 15.0) -> object:
    """The first true value of ``check()``, asked every 20 ms (processes have no events)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.02)
    return value


def finished(backend: LocalBackend, job_id: str) -> JobStatus:
    status = until(lambda: (s := backend.poll([job_id])[job_id]).state.finished and s)
    assert isinstance(status, JobStatus)
    return status


def log_line(path: Path, prefix: str) -> str:
    """The first line of a job's log starting with ``prefix`` (once the job wrote it)."""

    def found() -> str | None:
        lines = path.read_text().splitlines() if path.exists() else []
        return next((x for x in lines if x.startswith(prefix)), None)

    return str(until(found))


def test_job_runs_its_argv_in_its_workdir_with_its_environment(local, tmp_path):
    code = "import os; print(os.getcwd(), os.environ['BREED_JOB_ID'], os.environ['HOME'])"
    spec = job(tmp_path, "ok", [PY, "-c", code], BREED_JOB_ID="client-00001")
    job_id = local.submit(spec)
    assert job_id.startswith("local-")
    assert finished(local, job_id) == JobStatus(JobState.DONE, 0)
    # the launcher's environment plus the job's own: a client finds its interpreter's HOME
    assert spec.log_path.read_text().split() == [str(tmp_path), "client-00001", os.environ["HOME"]]


def test_stdout_and_stderr_go_to_the_log_appended_and_stdin_is_empty(local, tmp_path):
    code = "import sys; print('out', repr(sys.stdin.read())); print('err', file=sys.stderr)"
    spec = job(tmp_path, "io", [PY, "-c", code])
    for _ in range(2):
        finished(local, local.submit(spec))
    assert spec.log_path.read_text().splitlines() == ["out ''", "err", "out ''", "err"]
    quiet = finished(local, local.submit(JobSpec("nolog", ["true"], workdir=tmp_path)))
    assert quiet == JobStatus(JobState.DONE, 0)  # no log_path: output dropped, no file


def test_exit_codes_and_signals_are_reported(local, tmp_path):
    three = local.submit(job(tmp_path, "three", ["sh", "-c", "exit 3"]))
    killed = local.submit(job(tmp_path, "killed", ["sh", "-c", "kill -9 $$"]))
    assert finished(local, three) == JobStatus(JobState.FAILED, 3, "exit code 3")
    assert finished(local, killed) == JobStatus(JobState.FAILED, -9, "killed by signal 9")


def test_running_then_unknown_ids(local, tmp_path):
    job_id = local.submit(job(tmp_path, "sleeper", ["sleep", "300"]))
    assert local.poll([job_id, "local-0"]) == {
        job_id: JobStatus(JobState.RUNNING),
        "local-0": JobStatus(JobState.FAILED, None, "unknown to this launcher"),
    }


def test_each_job_is_the_leader_of_its_own_session(local, tmp_path):
    job_id = local.submit(job(tmp_path, "sleeper", ["sleep", "300"]))
    pid = int(job_id.removeprefix("local-"))
    assert local.pgid(job_id) == pid == os.getpgid(pid) == os.getsid(pid)
    assert os.getpgid(pid) != os.getpgrp()  # a Ctrl-C to the launcher is not sent to it
    assert local.pgid("local-0") is None


def test_cancel_stops_the_whole_process_group(local, tmp_path):
    spec = job(tmp_path, "family", ["sh", "-c", PARENT_AND_CHILD])
    job_id = local.submit(spec)
    parent, child = map(int, log_line(spec.log_path, "pids ").split()[1:])
    assert os.getpgid(child) == parent
    local.cancel(job_id)
    status = local.poll([job_id])[job_id]
    assert status.state is JobState.CANCELLED and status.exit_code == -signal.SIGTERM
    until(lambda: not procs.alive(child))  # the child, not only the shell, is gone


def test_cancel_kills_a_job_that_ignores_sigterm_after_the_grace(local, tmp_path):
    spec = job(tmp_path, "stubborn", [PY, "-c", STUBBORN])
    job_id = local.submit(spec)
    log_line(spec.log_path, "ready")
    start = time.monotonic()
    local.cancel(job_id, grace=0.5)
    assert 0.5 <= time.monotonic() - start < 5
    assert local.poll([job_id])[job_id] == JobStatus(JobState.CANCELLED, -signal.SIGKILL)


def test_cancel_of_a_finished_job_changes_nothing(local, tmp_path):
    job_id = local.submit(job(tmp_path, "done", ["true"]))
    finished(local, job_id)
    local.cancel(job_id)
    local.cancel("local-0")  # unknown: no error
    assert local.poll([job_id])[job_id] == JobStatus(JobState.DONE, 0)


def test_close_cancels_every_live_job(tmp_path):
    backend = LocalBackend()
    ids = [backend.submit(job(tmp_path, f"s{i}", ["sleep", "300"])) for i in range(3)]
    backend.close()
    assert {s.state for s in backend.poll(ids).values()} == {JobState.CANCELLED}


def orphan(tmp_path: Path, name: str) -> tuple[LocalBackend, str]:
    """A job of a launcher that died: its backend is dropped (its process keeps running)."""
    dead = LocalBackend()
    job_id = dead.submit(
        job(
            tmp_path,
            name,
            ["sleep", "300"],
            BREED_JOB_ID=name,
            BREED_RUN_DIR=str(tmp_path.resolve()),
        )
    )
    return dead, job_id


def test_cancel_orphan_kills_the_job_a_dead_launcher_left(tmp_path):
    dead, job_id = orphan(tmp_path, "client-00003")
    pid = int(job_id.removeprefix("local-"))
    try:
        until(lambda: procs.carries(pid, {"BREED_JOB_ID": "client-00003"}))  # exec'd
        LocalBackend({"run_dir": str(tmp_path)}).cancel_orphan(job_id, "client-00003")
        assert not procs.alive(pid)
    finally:
        dead.close()


@pytest.mark.parametrize(("name", "run_dir"), [("client-00004", "other"), ("client-00099", "same")])
def test_cancel_orphan_spares_a_process_that_is_not_that_job(tmp_path, name, run_dir):
    """A pid reused by another process, or by another run's job, is left alone."""
    dead, job_id = orphan(tmp_path, "client-00004")
    pid = int(job_id.removeprefix("local-"))
    other = tmp_path / "elsewhere" if run_dir == "other" else tmp_path
    try:
        until(lambda: procs.carries(pid, {"BREED_JOB_ID": "client-00004"}))
        LocalBackend({"run_dir": str(other)}).cancel_orphan(job_id, name)
        assert procs.alive(pid)
        LocalBackend().cancel_orphan("not-a-local-id", name)  # no error
    finally:
        dead.close()
    assert not procs.alive(pid)


def test_command_wraps_several_ranks_in_mpiexec(mpiexec):
    one = JobSpec("a", ["client", "--x"])
    assert LocalBackend().command(one) == ["client", "--x"]
    four = JobSpec("b", ["client"], ranks=4)
    assert LocalBackend({"mpiexec": mpiexec}).command(four) == [mpiexec, "-n", "4", "client"]
    with pytest.raises(FileNotFoundError, match="launcher.mpiexec: 'no-such-mpiexec'"):
        LocalBackend({"mpiexec": "no-such-mpiexec"}).command(four)


RANK_LINE = re.compile(r"rank (\d) of 2 pid (\d+)(?=\D)")  # a whole pid: a non-digit follows


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_two_rank_job_runs_under_mpiexec_and_cancel_reaches_every_rank(mpiexec, tmp_path):
    hello = (
        "from mpi4py import MPI; import os, sys, time; c = MPI.COMM_WORLD; "
        "print(f'rank {c.Get_rank()} of {c.Get_size()} pid {os.getpid()}', flush=True); "
        "c.Barrier(); sys.argv[1:] == ['hang'] and time.sleep(300)"
    )
    backend = LocalBackend({"mpiexec": mpiexec})
    try:
        spec = job(tmp_path, "mpi", [PY, "-c", hello], ranks=2)
        assert finished(backend, backend.submit(spec)) == JobStatus(JobState.DONE, 0)
        # the ranks' lines may interleave in the shared log (mpiexec forwards each stream)
        seen = RANK_LINE.findall(spec.log_path.read_text())
        assert sorted(rank for rank, _ in seen) == ["0", "1"]
        hung = job(tmp_path, "hung", [PY, "-c", hello, "hang"], ranks=2)
        job_id = backend.submit(hung)
        until(lambda: len(RANK_LINE.findall(hung.log_path.read_text())) == 2)
        ranks = [int(pid) for _, pid in RANK_LINE.findall(hung.log_path.read_text())]
        backend.cancel(job_id)
        assert backend.poll([job_id])[job_id].state is JobState.CANCELLED
        until(lambda: not any(procs.alive(p) for p in ranks))
    finally:
        backend.close()


def test_a_job_of_a_missing_program_fails_at_submit(local, tmp_path):
    spec = job(tmp_path, "none", ["no-such-program-here"])
    with pytest.raises(FileNotFoundError):
        local.submit(spec)
    assert spec.log_path.read_bytes() == b""  # opened for the job, closed again
