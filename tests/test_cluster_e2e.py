"""``breed run`` and ``snakemake --profile slurm|oar`` end to end on the real local Slurm and OAR
of ci/ (``pytest -m slurm``, ``pytest -m oar``; ``ci/cluster-tests.sh`` runs both).

Each client is a 2-rank MPI batch job; a cancel mid-trajectory through the scheduler must be
noticed (job cancelled in squeue/sacct or oarstat -> reported failed to the server ->
simulation handed out again), and the run must still finish exactly its budget. OAR refuses
root's jobs: run as root (CI), clients are submitted as the user of ci/oar.sh
(``launcher.oar.submit_user``) and Snakemake itself runs as that user, as on a real cluster.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from clusterkit import PARAMS, Cluster, cluster_up, job_dir, only
from clusterrun import (
    SLOW,
    TINY,
    ClusterRun,
    catch_early,
    copy_workflow,
    in_flight,
    latencies,
    merge,
    polling_overhead,
    read_csv,
    report,
    rerun_reason,
    stats,
    stop_ranks,
)

PY = sys.executable


@pytest.fixture(scope="module", params=PARAMS)
def cluster(request: pytest.FixtureRequest) -> Cluster:
    return cluster_up(request.param)


@pytest.fixture
def workdir(cluster: Cluster) -> Iterator[Path]:
    with job_dir(cluster) as path:
        yield path


@pytest.fixture
def make_run(cluster: Cluster, workdir: Path) -> Iterator[Callable[..., ClusterRun]]:
    runs: list[ClusterRun] = []

    def make(*changes: dict) -> ClusterRun:
        cfg = merge(
            TINY,
            {"launcher": {"backend": cluster.name, cluster.name: cluster.launcher_options()}},
            *changes,
        )
        runs.append(ClusterRun(workdir, cfg, cluster.cancel))
        return runs[-1]

    yield make
    for run in runs:
        run.stop()


def scheduler_ids(run: ClusterRun) -> dict[str, str]:
    """Launcher job name -> scheduler job id, every id numeric (sbatch --parsable, oarsub)."""
    jobs = {j["name"]: j["job_id"] for j in run.jobs()}
    assert jobs and all(re.fullmatch(r"\d+", i) for i in jobs.values()), jobs
    return jobs


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("cluster", "mpi"),
    [only("slurm", "srun"), only("slurm", "mpiexec"), only("oar", None)],
    indirect=["cluster"],
)
def test_breed_run_through_the_scheduler(cluster, make_run, mpi) -> None:
    run = make_run({"launcher": {"slurm": {"mpi": mpi}}} if mpi else {})
    run.start()
    assert run.wait(timeout=200) == 0, run.diagnostics()
    jobs = scheduler_ids(run)
    assert len(jobs) == 6 and {j["state"] for j in run.jobs()} == {"done"}
    rows = run.samples()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert {r["job_id"] for r in rows} == set(jobs.values())  # the scheduler's ids, one per sim
    summary = run.summary()  # every step of every simulation, each from 2 rank blocks
    assert summary["buffer"]["received"] == 6 * 11 and summary["messages"]["blocks"] == 6 * 22
    if mpi == "srun":  # each job ran one srun step of 2 tasks (ci/slurm.sh keeps accounting)
        acct = subprocess.run(
            ["sacct", "-n", "-P", "-j", ",".join(jobs.values()), "-o", "JobID,NTasks"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if acct.returncode == 0:  # BREED_SLURM_ACCOUNTING=0: no sacct, nothing to read
            steps = dict(line.split("|") for line in acct.stdout.splitlines())
            assert {i: steps.get(f"{i}.0") for i in jobs.values()} == dict.fromkeys(
                jobs.values(), "2"
            ), acct.stdout
    if cluster.name == "oar":  # OAR ran each as the submitting user, by that name
        for name, job_id in jobs.items():
            shown = cluster.show(job_id)
            assert re.search(rf"name = {name}\b", shown), shown
            if cluster.user is not None:
                assert re.search(rf"owner = {cluster.user}\b", shown), shown
    lat = latencies(run)
    assert len(lat["assign"]) == 6
    assert max(lat["first_step"]) < 60, lat  # a loaded 2-core machine, not a stuck queue
    timings = run.timings()
    report(
        cluster.name + (f"-{mpi}" if mpi else ""),
        {
            "wall_s": round(run.elapsed, 2),
            "submit_to_assign_s": stats(lat["assign"]),
            "submit_to_first_step_s": stats(lat["first_step"]),
            f"{cluster.submit}_s": stats(timings.get(cluster.submit, [])),
            "polling": polling_overhead(timings, list(cluster.status), len(jobs)),
            f"{cluster.status[0]}_call_s": stats(timings.get(cluster.status[0], [])),
        },
    )


def suspend(run: ClusterRun, steps: int) -> Callable[[str, str], bool]:
    """A ``hold`` for :func:`catch_early` through Slurm: ``scontrol suspend`` the job (its
    ranks stop), keep the catch if the server then holds only part of the simulation."""

    def hold(sim: str, name: str) -> bool:
        job = scheduler_ids(run)[name]
        subprocess.run(["scontrol", "suspend", job], capture_output=True, timeout=30)
        time.sleep(0.6)  # what the ranks had sent arrives
        now = in_flight(run, sim)
        if now is not None and now[0] == name and now[1] < steps:
            return True
        subprocess.run(["scontrol", "resume", job], capture_output=True, timeout=30)
        return False

    return hold


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("cluster", "how"),
    [only("slurm", "scancel"), only("slurm", "suspend-scancel"), only("oar", "oardel")],
    indirect=["cluster"],
)
def test_a_cancelled_running_client_is_noticed_and_its_simulation_rerun(
    cluster, make_run, how: str
) -> None:
    """Issue 7's client kill through the scheduler: a 2-rank client job is cancelled while it
    holds a simulation the server has barely started to receive. ``scancel``: Slurm SIGTERMs
    the ranks, the client ABORTs on its way out and the launcher sees the job CANCELLED (the
    ABORT usually reaches the server first). ``suspend-scancel``: the job is suspended first
    (``scontrol suspend``; a cancelled suspended job is SIGKILLed without running again), so
    the client says nothing. ``oardel``: OAR kills the job a second or two after oardel, long
    enough for a free client to finish its simulation, so its ranks are stopped first
    (SIGSTOP) and the client says nothing either; OAR shows it Error with a FRAG_JOB_REQUEST
    event (deleted). When the client says nothing only the launcher, polling the scheduler,
    can tell the server. Either way the simulation runs again with the same parameters, the
    run finishes exactly its budget, and no step is counted twice."""
    run = make_run(SLOW, {"launcher": {"simulation_timeout": 600}})  # never the silence path
    steps = run.cfg["solver"]["steps"] + 1
    hold = {
        "scancel": None,
        "suspend-scancel": suspend(run, steps),
        "oardel": stop_ranks(run, steps),
    }[how]
    run.start()
    sim, name = catch_early(run, steps // 8, timeout=150, hold=hold)
    job_id = scheduler_ids(run)[name]
    res = cluster.cancel([job_id])
    assert res.returncode == 0, res.stdout + res.stderr
    killed_at = time.time()

    assert run.wait(timeout=240) == 0, run.diagnostics()
    killed = next(j for j in run.jobs() if j["name"] == name)
    # state and reason as the scheduler tells them
    assert (killed["state"], killed["reason"]) == ("cancelled", cluster.cancel_reason), killed
    rerun_by, noticed_at = rerun_reason(run, sim, name, job_id)
    if how != "scancel":
        assert rerun_by == "launcher"
    rows = {int(r["sim_id"]): r for r in run.samples()}
    assert len(rows) == 6 and {r["status"] for r in rows.values()} == {"done"}
    assert int(rows[sim]["attempts"]) >= 2, rows[sim]
    assert rows[sim]["job_id"] != job_id and rows[sim]["job_id"] in scheduler_ids(run).values()
    summary = run.summary()
    assert summary["sims_done"] == 6
    assert summary["buffer"]["received"] == 6 * steps  # the re-sent steps entered once
    report(
        f"{cluster.name}-{how}",
        {
            "job_state": killed["state"],
            "job_reason": killed["reason"],
            "wall_s": round(run.elapsed, 2),
            "jobs": len(run.jobs()),
            "rerun_by": rerun_by,
            "kill_to_launcher_noticed_s": round(noticed_at - killed_at, 2),
            "polling": polling_overhead(run.timings(), list(cluster.status), len(run.jobs())),
        },
    )


RUNS = ("random-H16-L1-seed0", "breed-H16-L1-s0.0625-P5-N4-r0.5-0.9-3-seed0")


def check_tiny_study(work: Path, backend: str, first_job: int) -> list[set[str]]:
    """The tiny study's figure and table, and each run's clients submitted through
    ``backend`` after the first Snakemake job; returns each run's client job ids."""
    res = work / "results" / "tiny"
    assert (res / "figures" / "fig4.png").read_bytes()[:4] == b"\x89PNG"
    assert len((res / "tables" / "runs.csv").read_text().splitlines()) == 3
    out = []
    for run_id in RUNS:
        run = res / run_id
        cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
        assert cfg["launcher"]["backend"] == backend
        client_ids = {j["job_id"] for j in read_csv(run / "jobs.csv")}
        assert client_ids and all(i.isdigit() and int(i) > first_job for i in client_ids)
        assert len(read_csv(run / "samples.csv")) == 30  # the tiny budget
        out.append(client_ids)
    return out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cluster", [only("slurm")], indirect=True)
def test_snakemake_profile_slurm_runs_the_tiny_study(cluster, workdir: Path) -> None:
    """Snakemake's own jobs go through Slurm (executor plugin), and each breed_run job submits
    its clients through Slurm as well (profiles/slurm/backend.yaml)."""
    work = copy_workflow(workdir)
    cmd = [
        PY,
        "-m",
        "snakemake",
        "--profile",
        "slurm",
        "--config",
        "study=tiny",
        # a test cluster answers at once: first status check after 5 s, not 40
        "--slurm-init-seconds-before-status-checks",
        "5",
    ]
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=540)
    finally:  # a timed-out Snakemake leaves its jobs, and their runs' client jobs, queued
        left = cluster.jobs_under(work)
        if left:
            cluster.cancel(left)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", out))
    assert sorted(submitted.values()) == ["breed_run", "breed_run", "make_validation", "tables"], (
        out[-4000:]
    )
    run_jobs = [int(i) for i, rule in submitted.items() if rule == "breed_run"]
    for client_ids in check_tiny_study(work, "slurm", min(run_jobs)):
        acct = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", ",".join(client_ids), "-o", "JobName,State"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        names = {line.split("|")[0] for line in acct.stdout.splitlines()}
        assert names and all(n.startswith("client-") for n in names), acct.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cluster", [only("oar")], indirect=True)
def test_snakemake_profile_oar_runs_the_tiny_study(cluster, workdir: Path) -> None:
    """Snakemake's jobs go through OAR (cluster-generic executor and the profile's
    oar-submit.py/oar-status.py/oar-cancel.sh), and each breed_run job submits its clients with
    oarsub too (profiles/oar/backend.yaml). Snakemake runs as the OAR user, so the profile's
    scripts submit as whoever runs Snakemake, as on a real cluster."""
    work = copy_workflow(workdir)
    if cluster.user is not None:
        entry = pwd.getpwnam(cluster.user)
        for path in [work, *work.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    # runuser keeps the environment (PATH with the venv's bin) but HOME, USER, LOGNAME
    cmd = cluster.as_user([PY, "-m", "snakemake", "--profile", "oar", "--config", "study=tiny"])
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=540)
    finally:  # a timed-out Snakemake leaves its jobs, and their runs' client jobs, queued
        left = cluster.jobs_under(work)
        if left:
            cluster.cancel(left)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    submitted = re.findall(r"Submitted job \d+ with external jobid '(\d+)'", out)
    assert len(submitted) == 4, out[-4000:]  # make_validation, 2 x breed_run, tables
    for client_ids in check_tiny_study(work, "oar", min(map(int, submitted))):
        for job_id in client_ids:
            shown = cluster.show(job_id)
            assert re.search(r"name = client-\d+", shown) and "state = Terminated" in shown, shown
