"""``breed run`` and ``snakemake --profile slurm`` end to end on the real local Slurm of
ci/slurm.sh (``pytest -m slurm``; ``ci/cluster-tests.sh`` runs them).

Each client is a 2-rank MPI batch job; its ``scancel`` mid-trajectory must be noticed through
the scheduler (job CANCELLED in squeue/sacct -> reported failed to the server -> simulation
handed out again), and the run must still finish exactly its budget.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from clusterkit import (
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
    slurm_jobs_under,
    stats,
)

pytestmark = pytest.mark.slurm
STATUS_COMMANDS = ["squeue", "scontrol", "sacct"]


@pytest.fixture(scope="module", autouse=True)
def slurm_up() -> None:
    try:
        ok = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        pytest.fail("no Slurm client on PATH: run `ci/slurm.sh up` (as root)")
    if ok.returncode != 0 or "UP" not in ok.stdout:
        pytest.fail(f"the local Slurm is not up ({ok.stdout.strip()}): run `ci/slurm.sh up`")


def scancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)


@pytest.fixture
def make_run(tmp_path: Path):
    runs: list[ClusterRun] = []

    def make(*changes: dict) -> ClusterRun:
        cfg = merge(TINY, {"launcher": {"backend": "slurm"}}, *changes)
        run = ClusterRun(tmp_path, cfg, scancel)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop()


def slurm_ids(run: ClusterRun) -> dict[str, str]:
    """Launcher job name -> Slurm job id, every id numeric (sbatch --parsable)."""
    jobs = {j["name"]: j["job_id"] for j in run.jobs()}
    assert jobs and all(re.fullmatch(r"\d+", i) for i in jobs.values()), jobs
    return jobs


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mpi", ["srun", "mpiexec"])
def test_breed_run_through_slurm(make_run, mpi: str) -> None:
    run = make_run({"launcher": {"slurm": {"mpi": mpi}}})
    run.start()
    assert run.wait(timeout=200) == 0, run.diagnostics()
    jobs = slurm_ids(run)
    assert len(jobs) == 6 and {j["state"] for j in run.jobs()} == {"done"}
    rows = run.samples()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert {r["job_id"] for r in rows} == set(jobs.values())  # Slurm's ids, one job per sim
    summary = run.summary()  # every step of every simulation, each from 2 rank blocks
    assert summary["buffer"]["received"] == 6 * 11 and summary["rejected"]["blocks"] == 6 * 22
    if mpi == "srun":  # each job ran one srun step of 2 tasks (ci/slurm.sh keeps accounting)
        acct = subprocess.run(["sacct", "-n", "-P", "-j", ",".join(jobs.values()), "-o",
                               "JobID,NTasks"], capture_output=True, text=True, timeout=30)
        if acct.returncode == 0:  # BREED_SLURM_ACCOUNTING=0: no sacct, nothing to read
            steps = dict(line.split("|") for line in acct.stdout.splitlines())
            assert {i: steps.get(f"{i}.0") for i in jobs.values()} == dict.fromkeys(
                jobs.values(), "2"), acct.stdout
    lat = latencies(run)
    assert len(lat["assign"]) == 6
    assert max(lat["first_step"]) < 60, lat  # a loaded 2-core machine, not a stuck queue
    timings = run.timings()
    report(f"slurm-{mpi}", {
        "wall_s": round(run.elapsed, 2), "submit_to_assign_s": stats(lat["assign"]),
        "submit_to_first_step_s": stats(lat["first_step"]),
        "sbatch_s": stats(timings.get("sbatch", [])),
        "polling": polling_overhead(timings, STATUS_COMMANDS, len(jobs)),
        "squeue_call_s": stats(timings.get("squeue", []))})


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["scancel", "suspend-scancel"])
def test_scancel_of_a_running_client_is_noticed_and_its_simulation_rerun(
        make_run, how: str) -> None:
    """Issue 7's client kill through Slurm: a 2-rank client job is cancelled while it holds a
    simulation the server has barely started to receive. ``scancel``: Slurm SIGTERMs the ranks,
    the client ABORTs on its way out and the launcher sees the job CANCELLED in squeue (the
    ABORT usually reaches the server first). ``suspend-scancel``: the job is suspended first
    (``scontrol suspend``: the ranks stop, and a cancelled suspended job is SIGKILLed without
    running again), so the client says nothing and only the launcher, polling Slurm, can tell
    the server. Either way the simulation runs again with the same parameters, the run finishes
    exactly its budget, and no step is counted twice."""
    run = make_run(SLOW, {"launcher": {"simulation_timeout": 600}})  # never the silence path
    steps = run.cfg["solver"]["steps"] + 1

    def suspend(sim: str, name: str) -> bool:
        job = slurm_ids(run)[name]
        subprocess.run(["scontrol", "suspend", job], capture_output=True, timeout=30)
        time.sleep(0.6)  # what the ranks had sent arrives
        now = in_flight(run, sim)
        if now is not None and now[0] == name and now[1] < steps:
            return True
        subprocess.run(["scontrol", "resume", job], capture_output=True, timeout=30)
        return False

    run.start()
    sim, name = catch_early(run, steps // 8, timeout=150,
                            hold=suspend if how == "suspend-scancel" else None)
    job_id = slurm_ids(run)[name]
    subprocess.run(["scancel", job_id], check=True, capture_output=True, timeout=30)
    killed_at = time.time()

    assert run.wait(timeout=200) == 0, run.diagnostics()
    killed = next(j for j in run.jobs() if j["name"] == name)
    # state and reason as squeue/sacct tell them (a cancel of breed's own gives its reason)
    assert (killed["state"], killed["reason"]) == ("cancelled", "cancelled"), killed
    rerun_by, noticed_at = rerun_reason(run, sim, name, job_id)
    if how == "suspend-scancel":
        assert rerun_by == "launcher"
    rows = {int(r["sim_id"]): r for r in run.samples()}
    assert len(rows) == 6 and {r["status"] for r in rows.values()} == {"done"}
    assert int(rows[sim]["attempts"]) >= 2, rows[sim]
    assert rows[sim]["job_id"] != job_id and rows[sim]["job_id"] in slurm_ids(run).values()
    summary = run.summary()
    assert summary["sims_done"] == 6
    assert summary["buffer"]["received"] == 6 * steps  # the re-sent steps entered once
    report(f"slurm-{how}", {
        "job_state": killed["state"], "job_reason": killed["reason"],
        "wall_s": round(run.elapsed, 2), "jobs": len(run.jobs()), "rerun_by": rerun_by,
        "kill_to_launcher_noticed_s": round(noticed_at - killed_at, 2),
        "polling": polling_overhead(run.timings(), STATUS_COMMANDS, len(run.jobs()))})


@pytest.mark.timeout(600)
def test_snakemake_profile_slurm_runs_the_tiny_study(tmp_path: Path) -> None:
    """Snakemake's own jobs go through Slurm (executor plugin), and each breed_run job submits
    its clients through Slurm as well (profiles/slurm/backend.yaml)."""
    work = copy_workflow(tmp_path)
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--config", "study=tiny",
           # a test cluster answers at once: first status check after 5 s, not 40
           "--slurm-init-seconds-before-status-checks", "5"]
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=540)
    finally:  # a timed-out Snakemake leaves its jobs, and their runs' client jobs, queued
        left = slurm_jobs_under(work)
        if left:
            scancel(left)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", out))
    assert sorted(submitted.values()) == ["breed_run", "breed_run", "make_validation",
                                          "tables"], out[-4000:]
    res = work / "results" / "tiny"
    assert (res / "figures" / "fig4.png").read_bytes()[:4] == b"\x89PNG"
    assert len((res / "tables" / "runs.csv").read_text().splitlines()) == 3
    run_jobs = [int(i) for i, rule in submitted.items() if rule == "breed_run"]
    for run_id in ("random-H16-L1-seed0", "breed-H16-L1-s0.0625-P5-N4-r0.5-0.9-3-seed0"):
        run = res / run_id
        cfg = yaml.safe_load((run / "config.resolved.yaml").read_text())
        assert cfg["launcher"]["backend"] == "slurm"
        client_ids = {j["job_id"] for j in read_csv(run / "jobs.csv")}
        assert client_ids and all(i.isdigit() and int(i) > min(run_jobs) for i in client_ids)
        sims = (run / "samples.csv").read_text().splitlines()
        assert len(sims) == 31  # header + the tiny budget
        acct = subprocess.run(["sacct", "-n", "-P", "-X", "-j", ",".join(client_ids), "-o",
                               "JobName,State"], capture_output=True, text=True, timeout=30)
        names = {line.split("|")[0] for line in acct.stdout.splitlines()}
        assert names and all(n.startswith("client-") for n in names), acct.stdout
