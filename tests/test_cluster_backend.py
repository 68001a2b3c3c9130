"""Polling logic shared by the Slurm and OAR backends (rate limit, final states, forgotten jobs),
against a fake scheduler: the real daemons are in test_cluster_jobs.py."""

from __future__ import annotations

import time

import pytest

from breed.launcher.backend import JobSpec, JobState, JobStatus
from breed.launcher.cluster import ClusterBackend
from breed.launcher.scheduler_text import SchedulerError

RUNNING = JobStatus(JobState.RUNNING)
DONE = JobStatus(JobState.DONE, 0)


class FakeScheduler(ClusterBackend):
    """A scheduler that answers from ``self.known`` (id -> status) and counts its queries."""

    name = "fake"

    def __init__(self, **options) -> None:
        super().__init__(options)
        self.known: dict[str, JobStatus] = {}
        self.queries: list[list[str]] = []
        self.cancelled: list[list[str]] = []
        self.down = False

    def _submit(self, spec: JobSpec) -> str:
        job_id = str(len(self.known) + 1)
        self.known[job_id] = JobStatus(JobState.SUBMITTED)
        return job_id

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        self.queries.append(list(job_ids))
        if self.down:
            raise SchedulerError("squeue did not answer within 30 s")
        return {j: self.known.get(j) for j in job_ids}

    def _cancel(self, job_ids: list[str]) -> None:
        self.cancelled.append(list(job_ids))


def submit(backend: FakeScheduler, n: int) -> list[str]:
    return [backend.submit(JobSpec(f"c{i}", ["true"])) for i in range(n)]


def test_one_query_for_all_jobs_and_at_most_one_per_interval():
    fake = FakeScheduler(min_poll_interval=0.2)
    ids = submit(fake, 3)
    fake.poll(ids)
    assert fake.queries == [ids]
    fake.known["1"] = RUNNING
    assert fake.poll(ids)["1"].state is JobState.SUBMITTED  # cached: too soon to ask again
    assert len(fake.queries) == 1
    time.sleep(0.25)
    assert fake.poll(ids)["1"] is RUNNING
    assert len(fake.queries) == 2


def test_a_job_not_seen_before_is_asked_about_at_once():
    fake = FakeScheduler(min_poll_interval=60)
    first = submit(fake, 1)
    fake.poll(first)
    second = submit(fake, 1)
    fake.poll(first + second)
    assert fake.queries == [first, first + second]


def test_finished_jobs_are_never_asked_about_again():
    fake = FakeScheduler(min_poll_interval=0)
    ids = submit(fake, 2)
    fake.known["1"] = DONE
    fake.poll(ids)
    fake.known["1"] = RUNNING  # a scheduler changing its mind must not resurrect the job
    assert fake.poll(ids)["1"] is DONE
    assert fake.queries[-1] == ["2"]


def test_forgotten_job_fails_after_the_grace_period_only():
    fake = FakeScheduler(min_poll_interval=0, forget_grace=0.3)
    ids = submit(fake, 1)
    fake.known["1"] = RUNNING
    fake.poll(ids)
    del fake.known["1"]  # aged out of squeue, no accounting record
    assert fake.poll(ids)["1"] is RUNNING
    time.sleep(0.35)
    status = fake.poll(ids)["1"]
    assert status.state is JobState.FAILED and status.exit_code is None
    assert "no record of job 1" in status.reason


def test_a_job_seen_again_restarts_the_grace_period():
    fake = FakeScheduler(min_poll_interval=0, forget_grace=0.3)
    ids = submit(fake, 1)
    del fake.known["1"]
    fake.poll(ids)
    time.sleep(0.2)
    fake.known["1"] = RUNNING
    fake.poll(ids)
    del fake.known["1"]
    time.sleep(0.2)
    assert fake.poll(ids)["1"] is RUNNING  # 0.4 s since first missing, 0.2 s in a row


def test_scheduler_errors_keep_the_last_states():
    fake = FakeScheduler(min_poll_interval=0, forget_grace=0)
    ids = submit(fake, 1)
    fake.known["1"] = RUNNING
    fake.poll(ids)
    fake.down = True
    assert fake.poll(ids)["1"] is RUNNING  # not FAILED: the scheduler said nothing


@pytest.mark.parametrize("grace", [0.0, 60.0])
def test_unknown_ids_follow_the_same_rule(grace):
    fake = FakeScheduler(min_poll_interval=0, forget_grace=grace)
    state = fake.poll(["404"])["404"].state
    assert state is (JobState.FAILED if grace == 0 else JobState.SUBMITTED)


def test_close_cancels_only_unfinished_uncancelled_jobs():
    fake = FakeScheduler(min_poll_interval=0)
    ids = submit(fake, 3)
    fake.known["1"] = DONE
    fake.poll(ids)
    fake.cancel("1")  # finished: nothing to ask
    fake.cancel("2")
    fake.close()
    assert fake.cancelled == [["2"], ["3"]]


def test_a_missing_submit_command_is_one_line(tmp_path, monkeypatch) -> None:
    """What the workflow's cluster profiles check before any job (workflow/rules/common.smk)."""
    from breed.launcher.cluster import SUBMIT_COMMANDS, missing_submit_command

    monkeypatch.setenv("PATH", str(tmp_path))
    assert SUBMIT_COMMANDS == {"slurm": "sbatch", "oar": "oarsub"}
    line = missing_submit_command("slurm")
    assert line is not None and line.startswith("sbatch not found on PATH: slurm jobs")
    assert "\n" not in line
    assert missing_submit_command("local") is None
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    assert missing_submit_command("slurm") is None  # found: nothing to say
    assert missing_submit_command("oar").startswith("oarsub not found")
