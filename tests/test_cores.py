"""breed.cores: the split of this host's cores between the trainer and everything else."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from breed import cores
from breed.launcher.backend import JobSpec, JobState
from breed.launcher.local import LocalBackend

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="no sched_setaffinity (Linux only)"
)


def cfg(setting: str, threads: int | None) -> dict:
    return {"training": {"cores": setting, "threads": threads}}


@needs_affinity
def test_dedicated_gives_the_trainer_the_last_cores_and_the_rest_to_the_others(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5})
    split = cores.plan(cfg("dedicated", 2))
    assert split == cores.CorePlan(trainer=frozenset({3, 5}), others=frozenset({0, 1, 2}))
    assert split.describe() == "trainer on cores 3,5, the rest on 0,1,2"
    # threads null: half the cores, at least one
    assert cores.plan(cfg("dedicated", None)).trainer == frozenset({3, 5})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cores.plan(cfg("dedicated", None)).trainer == frozenset({1})


@needs_affinity
def test_no_split_when_shared_or_when_nothing_would_be_left(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cores.plan(cfg("shared", 1)) is None
    assert cores.plan(cfg("dedicated", 2)) is None  # no core left for the clients
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4})
    assert cores.plan(cfg("dedicated", None)) is None


def allowed(tid: int) -> set[int]:
    return set(os.sched_getaffinity(tid))


@needs_affinity
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_bind_moves_only_the_calling_thread_and_what_it_starts_later() -> None:
    """Linux semantics the server relies on: the receiver and ZeroMQ threads made after the
    main thread bound itself to the others keep that set when the trainer moves away."""
    cpus = sorted(allowed(0))
    seen: dict[str, set[int]] = {}
    done = threading.Event()

    def body() -> None:
        seen["before"] = allowed(0)
        done.wait(10)
        seen["after"] = allowed(0)

    def run() -> None:
        cores.bind(frozenset(cpus[:1]))
        helper = threading.Thread(target=body)
        helper.start()
        cores.bind(frozenset(cpus[1:]))  # the "trainer" moves; the helper must not
        seen["self"] = allowed(0)
        done.set()
        helper.join(10)

    t = threading.Thread(target=run)
    t.start()
    t.join(20)
    assert seen == {"before": {cpus[0]}, "after": {cpus[0]}, "self": set(cpus[1:])}
    assert allowed(0) == set(cpus)  # this thread was never touched


@needs_affinity
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_local_backend_starts_clients_on_the_cores_it_is_given(tmp_path) -> None:
    cpus = sorted(allowed(0))
    backend = LocalBackend({"cpus": cpus[:1]})
    out = tmp_path / "job.log"
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    job = backend.submit(
        JobSpec(name="j", argv=[sys.executable, "-c", code], workdir=tmp_path, log_path=out)
    )
    deadline = time.monotonic() + 30
    while backend.poll([job])[job].state not in (JobState.DONE, JobState.FAILED):
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.02)
    assert out.read_text().strip() == str(cpus[:1])
    unbound = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert unbound.stdout.strip() == str(cpus)  # without cpus: the parent's set


@needs_affinity
@pytest.mark.timeout(180)
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_a_run_with_dedicated_cores_binds_and_completes(tmp_path) -> None:
    """``breed run`` with ``training.cores: dedicated`` (process ingest): the server says how
    it split the cores, and the run is the same run (every simulation done)."""
    from test_run import breed, read_samples, write_config

    cpus = sorted(allowed(0))
    path = write_config(
        tmp_path,
        training={"cores": "dedicated", "threads": 1, "progress": False},
        launcher={"max_jobs": 2, "ping_interval": 0.2, "poll_interval": 0.2, "ingest": "process"},
    )
    run = tmp_path / "run"
    proc = breed("run", str(path), "--output", str(run))
    log = (run / "logs" / "server.log").read_text()
    assert proc.returncode == 0, proc.stderr + log
    want = cores.CorePlan(frozenset(cpus[-1:]), frozenset(cpus[:-1])).describe()
    assert f"cores: {want}" in log
    assert {r["status"] for r in read_samples(run)} == {"done"}
