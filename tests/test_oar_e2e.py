"""``breed run`` and ``snakemake --profile oar`` end to end on the real local OAR of ci/oar.sh
(``pytest -m oar``; ``ci/cluster-tests.sh`` runs them).

OAR refuses root's jobs. Run as root (CI), ``breed run`` submits its clients as the user of
ci/oar.sh (``launcher.oar.submit_user``, ``breedoar`` or $BREED_OAR_USER), and Snakemake itself
runs as that user: the profile's scripts then submit as whoever runs Snakemake, as on a real
cluster, and the jobs can write the study's results. Job directories must be reachable by that
user, so they live in a fresh directory under /tmp, not in pytest's root-only tmp_path.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
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
    latencies,
    merge,
    polling_overhead,
    read_csv,
    report,
    rerun_reason,
    stats,
    stop_ranks,
)

pytestmark = pytest.mark.oar
PY = sys.executable
USER = os.environ.get("BREED_OAR_USER", "breedoar") if os.geteuid() == 0 else None
STATUS_COMMANDS = ["oarstat"]


def as_user(argv: list[str]) -> list[str]:
    return argv if USER is None else ["runuser", "-u", USER, "--", *argv]


@pytest.fixture(scope="module", autouse=True)
def oar_up() -> None:
    try:
        nodes = subprocess.run(["oarnodes", "-s"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        pytest.fail("no OAR client on PATH: run `ci/oar.sh up` (as root)")
    if "Alive" not in nodes.stdout:
        pytest.fail(f"the local OAR has no Alive node ({nodes.stderr.strip()}): "
                    "run `ci/oar.sh up`")
    can = subprocess.run(as_user([PY, "-c", "import breed.client, mpi4py, snakemake"]),
                         capture_output=True, text=True, timeout=60)
    if can.returncode != 0:
        pytest.fail(f"user {USER} cannot run {PY} ({can.stderr.strip()[-200:]}): run "
                    f"`BREED_OAR_SHARE={PY} ci/oar.sh up`")


def oardel(job_ids: list[str]) -> None:
    subprocess.run(as_user(["oardel", *job_ids]), capture_output=True, timeout=60)


@pytest.fixture
def workdir():
    """A directory the job user can reach; owned by it so Snakemake (as that user) can write."""
    path = Path(tempfile.mkdtemp(prefix="breed-oar-e2e-"))
    path.chmod(0o755)
    if USER is not None:
        entry = pwd.getpwnam(USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    yield path
    left = oar_jobs_under(path)
    if left:
        oardel(left)
    shutil.rmtree(path, ignore_errors=True)


def oar_jobs_under(path: Path) -> list[str]:
    """Unfinished OAR jobs started in a directory under ``path`` (a timed-out test's)."""
    res = subprocess.run(["oarstat", "--json"], capture_output=True, text=True, timeout=60)
    try:
        jobs = yaml.safe_load(res.stdout) or {}  # JSON is YAML
    except yaml.YAMLError:
        return []
    root = str(path.resolve()) + "/"
    return [str(i) for i, j in jobs.items() if isinstance(j, dict)
            and (str(j.get("launchingDirectory", "")) + "/").startswith(root)]


@pytest.fixture
def make_run(workdir: Path):
    runs: list[ClusterRun] = []

    def make(*changes: dict) -> ClusterRun:
        cfg = merge(TINY, {"launcher": {"backend": "oar", "oar": {
            "submit_user": USER, "walltime": "00:10:00"}}}, *changes)
        run = ClusterRun(workdir, cfg, oardel)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.stop()


def oar_ids(run: ClusterRun) -> dict[str, str]:
    """Launcher job name -> OAR job id (numeric: ``OAR_JOB_ID=``)."""
    jobs = {j["name"]: j["job_id"] for j in run.jobs()}
    assert jobs and all(re.fullmatch(r"\d+", i) for i in jobs.values()), jobs
    return jobs


@pytest.mark.timeout(240)
def test_breed_run_through_oar(make_run) -> None:
    run = make_run()
    run.start()
    assert run.wait(timeout=200) == 0, run.diagnostics()
    jobs = oar_ids(run)
    assert len(jobs) == 6 and {j["state"] for j in run.jobs()} == {"done"}
    rows = run.samples()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert {r["job_id"] for r in rows} == set(jobs.values())  # OAR's ids, one job per sim
    assert run.summary()["buffer"]["received"] == 6 * 11
    for name, job_id in jobs.items():  # OAR ran each as the submitting user, by that name
        shown = subprocess.run(["oarstat", "-f", "-j", job_id], capture_output=True, text=True,
                               timeout=60).stdout
        assert re.search(rf"name = {name}\b", shown), shown
        if USER is not None:
            assert re.search(rf"owner = {USER}\b", shown), shown
    lat = latencies(run)
    assert len(lat["assign"]) == 6
    assert max(lat["first_step"]) < 60, lat
    timings = run.timings()
    report("oar", {
        "wall_s": round(run.elapsed, 2), "submit_to_assign_s": stats(lat["assign"]),
        "submit_to_first_step_s": stats(lat["first_step"]),
        "oarsub_s": stats(timings.get("oarsub", [])),
        "polling": polling_overhead(timings, STATUS_COMMANDS, len(jobs)),
        "oarstat_call_s": stats(timings.get("oarstat", []))})


@pytest.mark.timeout(300)
def test_oardel_of_a_running_client_is_noticed_and_its_simulation_rerun(make_run) -> None:
    """The scancel test of test_slurm_e2e.py through OAR: ``oardel`` of a 2-rank client job
    that holds a simulation the server has barely started to receive. OAR kills the job a second
    or two after oardel, long enough for a free client to finish its simulation, so its ranks
    are stopped first (SIGSTOP; OAR kills stopped processes without letting them run again).
    The client says nothing: only the launcher, seeing the job end in oarstat (Error with a
    FRAG_JOB_REQUEST event: deleted), can tell the server, which runs the simulation again with
    the same parameters; the run finishes exactly its budget, no step counted twice."""
    run = make_run(SLOW, {"launcher": {"simulation_timeout": 600}})  # never the silence path
    steps = run.cfg["solver"]["steps"] + 1
    run.start()
    sim, name = catch_early(run, steps // 8, timeout=150, hold=stop_ranks(run, steps))
    job_id = oar_ids(run)[name]
    res = subprocess.run(as_user(["oardel", job_id]), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    killed_at = time.time()

    assert run.wait(timeout=240) == 0, run.diagnostics()
    killed = next(j for j in run.jobs() if j["name"] == name)
    assert (killed["state"], killed["reason"]) == ("cancelled", "deleted (oardel)"), killed
    rerun_by, noticed_at = rerun_reason(run, sim, name, job_id)
    assert rerun_by == "launcher"
    rows = {int(r["sim_id"]): r for r in run.samples()}
    assert len(rows) == 6 and {r["status"] for r in rows.values()} == {"done"}
    assert int(rows[sim]["attempts"]) >= 2, rows[sim]
    assert rows[sim]["job_id"] != job_id and rows[sim]["job_id"] in oar_ids(run).values()
    summary = run.summary()
    assert summary["sims_done"] == 6
    assert summary["buffer"]["received"] == 6 * steps  # the re-sent steps entered once
    report("oar-oardel", {
        "wall_s": round(run.elapsed, 2), "jobs": len(run.jobs()), "rerun_by": rerun_by,
        "kill_to_launcher_noticed_s": round(noticed_at - killed_at, 2),
        "polling": polling_overhead(run.timings(), STATUS_COMMANDS, len(run.jobs()))})


@pytest.mark.timeout(600)
def test_snakemake_profile_oar_runs_the_tiny_study(workdir: Path) -> None:
    """Snakemake's jobs go through OAR (cluster-generic executor and the profile's
    oar-submit.py/oar-status.py/oar-cancel.sh), and each breed_run job submits its clients with
    oarsub too (profiles/oar/backend.yaml). Snakemake runs as the OAR user."""
    work = copy_workflow(workdir)
    if USER is not None:
        entry = pwd.getpwnam(USER)
        for path in [work, *work.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    # runuser keeps the environment (PATH with the venv's bin) but HOME, USER, LOGNAME
    cmd = as_user([PY, "-m", "snakemake", "--profile", "oar", "--config", "study=tiny"])
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=540)
    finally:  # a timed-out Snakemake leaves its jobs, and their runs' client jobs, queued
        left = oar_jobs_under(work)
        if left:
            oardel(left)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    submitted = re.findall(r"Submitted job \d+ with external jobid '(\d+)'", out)
    assert len(submitted) == 4, out[-4000:]  # make_validation, 2 x breed_run, tables
    res = work / "results" / "tiny"
    assert (res / "figures" / "fig4.png").read_bytes()[:4] == b"\x89PNG"
    assert len((res / "tables" / "runs.csv").read_text().splitlines()) == 3
    for run_id in ("random-H16-L1-seed0", "breed-H16-L1-s0.0625-P5-N4-r0.5-0.9-3-seed0"):
        run = res / run_id
        assert yaml.safe_load((run / "config.resolved.yaml").read_text())["launcher"][
            "backend"] == "oar"
        client_ids = {j["job_id"] for j in read_csv(run / "jobs.csv")}
        assert client_ids and all(i.isdigit() and int(i) > min(map(int, submitted))
                                  for i in client_ids)
        assert len(read_csv(run / "samples.csv")) == 30
        for job_id in client_ids:
            shown = subprocess.run(["oarstat", "-f", "-j", job_id], capture_output=True,
                                   text=True, timeout=60).stdout
            assert re.search(r"name = client-\d+", shown) and "state = Terminated" in shown, \
                shown
