"""Submit command lines, job scripts and scheduler output parsing, on outputs captured from the
real Slurm and OAR daemons of ci/slurm.sh and ci/oar.sh (tests/data/README.md says how)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breed.launcher.backend import JobSpec, JobState, JobStatus
from breed.launcher.scheduler_text import (
    OAR_STATES,
    SchedulerError,
    SchedulerOutputError,
    SlurmRecord,
    decode_wait_status,
    first_error_line,
    oar_env_file,
    oar_job_script,
    oar_resources,
    oarstat_argv,
    oarsub_argv,
    parse_exit_code,
    parse_oarstat,
    parse_oarsub,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_job,
    parse_squeue,
    sacct_disabled,
    sbatch_argv,
    slurm_job_script,
    slurm_status,
    squeue_argv,
    squeue_unknown_jobs,
)

DATA = Path(__file__).parent / "data"
TOKEN = "a" * 63 + "f"


def data(name: str) -> str:
    return (DATA / name).read_text()


def spec(ranks: int = 2, **kw) -> JobSpec:
    defaults = dict(
        name="client-0001",
        argv=["/opt/py/bin/python", "-m", "breed.client", "--note", "two words"],
        ranks=ranks,
        env={"BREED_TOKEN": TOKEN, "BREED_JOB_ID": "x"},
        workdir=Path("/runs/r1"),
        log_path=Path("/runs/r1/logs/client-0001.log"),
    )
    return JobSpec(**{**defaults, **kw})


# ------------------------------------------------------------------------------- Slurm text


def test_sbatch_argv_carries_resources_and_never_the_environment():
    argv = sbatch_argv(
        spec(),
        {
            "nodes": 2,
            "cpus_per_task": 3,
            "time": "01:00:00",
            "partition": "gpu",
            "account": "proj",
            "extra_args": ["--qos=x"],
        },
    )
    assert argv[:2] == ["sbatch", "--parsable"]
    for arg in (
        "--job-name=client-0001",
        "--nodes=2",
        "--ntasks=2",
        "--cpus-per-task=3",
        "--time=01:00:00",
        "--chdir=/runs/r1",
        "--export=ALL",
        "--partition=gpu",
        "--account=proj",
        "--output=/runs/r1/logs/client-0001.log",
    ):
        assert arg in argv
    assert argv[-1] == "--qos=x"
    assert TOKEN not in " ".join(argv)


def test_sbatch_argv_leaves_out_unset_partition_account_and_log():
    argv = sbatch_argv(spec(log_path=None), {"partition": None, "account": None})
    assert not [a for a in argv if a.startswith(("--partition", "--account", "--output"))]
    assert "--nodes=1" in argv and "--time=00:30:00" in argv


@pytest.mark.parametrize(
    "mpi, start",
    [
        ("srun", "exec srun --mpi=pmi2 --ntasks=2 --cpus-per-task=1 /opt/py/bin/python"),
        ("mpiexec", "exec /venv/bin/mpiexec -n 2 /opt/py/bin/python"),
    ],
)
def test_slurm_script_starts_the_ranks(mpi, start):
    script = slurm_job_script(spec(), mpi, "/venv/bin/mpiexec")
    assert script.startswith("#!/bin/sh\n")
    assert start in script
    assert "'two words'" in script  # quoted for the shell
    assert TOKEN not in script


def test_slurm_script_single_rank_runs_the_command_alone():
    script = slurm_job_script(spec(ranks=1))
    assert "\nexec /opt/py/bin/python -m breed.client" in script
    assert "srun" not in script.split("\n", 3)[3]


def test_slurm_script_rejects_unknown_mpi():
    with pytest.raises(ValueError, match="launcher.slurm.mpi"):
        slurm_job_script(spec(), "aprun")


def test_parse_sbatch_parsable_real_and_federated():
    assert parse_sbatch_parsable(data("slurm/sbatch_parsable.stdout")) == "9"
    assert parse_sbatch_parsable("1234;cluster2\n") == "1234"


@pytest.mark.parametrize("text", ["", "\n", "Submitted batch job 12\n", "abc"])
def test_parse_sbatch_parsable_rejects_junk(text):
    with pytest.raises(SchedulerOutputError, match="no job id"):
        parse_sbatch_parsable(text)


def test_squeue_argv_asks_once_for_all_jobs():
    argv = squeue_argv(["4", "5", "6"])
    assert "--jobs=4,5,6" in argv and "--states=all" in argv and "--noheader" in argv


EXPECTED_SLURM = {  # job: (launcher state, exit code) from squeue + scontrol, and from sacct
    "2": (JobState.DONE, 0),
    "3": (JobState.FAILED, 3),
    "4": (JobState.FAILED, -9),
    "5": (JobState.RUNNING, None),
    "6": (JobState.CANCELLED, None),  # exit code differs: scontrol 0:15, sacct 0:0
    "7": (JobState.SUBMITTED, None),
    "8": (JobState.FAILED, None),  # TIMEOUT: scontrol 143:0, sacct 0:0
}


def test_parse_squeue_real_states():
    records = parse_squeue(data("slurm/squeue_states.txt"))
    assert set(records) == set(EXPECTED_SLURM)
    assert records["7"] == SlurmRecord("PENDING", "JobHeldUser")
    assert records["5"] == SlurmRecord("RUNNING", "")
    for job_id, (state, _) in EXPECTED_SLURM.items():
        assert slurm_status(records[job_id]).state is state


def test_parse_sacct_real_records():
    records = parse_sacct(data("slurm/sacct_states.txt"))
    assert records["6"].state == "CANCELLED"  # "CANCELLED by 0"
    assert (records["3"].exit_code, records["3"].signal) == (3, 0)
    assert (records["4"].exit_code, records["4"].signal) == (0, 9)
    for job_id, (state, code) in EXPECTED_SLURM.items():
        status = slurm_status(records[job_id])
        assert status.state is state
        if job_id not in ("6", "8"):
            assert status.exit_code == code


@pytest.mark.parametrize("job_id", sorted(EXPECTED_SLURM))
def test_parse_scontrol_real_jobs(job_id):
    status = slurm_status(parse_scontrol_job(data(f"slurm/scontrol_{job_id}.txt")))
    state, code = EXPECTED_SLURM[job_id]
    assert status.state is state
    if job_id == "8":
        assert status.exit_code == 143 and "timeout" in status.reason
    elif job_id == "6":
        assert status.exit_code == -15
    else:
        assert status.exit_code == code


def test_failure_reasons_say_why():
    assert (
        slurm_status(SlurmRecord("FAILED", "NonZeroExitCode", 3, 0)).reason
        == "failed, NonZeroExitCode, exit code 3"
    )
    assert "killed by signal 9" in slurm_status(SlurmRecord("FAILED", "", 0, 9)).reason


def test_unknown_slurm_state_is_not_finished():
    status = slurm_status(SlurmRecord("WARPED"))
    assert status.state is JobState.RUNNING and "WARPED" in status.reason


def test_parse_scontrol_survives_spaces_and_rejects_junk():
    line = "JobId=3 JobName=my job WorkDir=/a b JobState=FAILED Reason=NonZeroExitCode ExitCode=2:0"
    assert parse_scontrol_job(line) == SlurmRecord("FAILED", "NonZeroExitCode", 2, 0)
    with pytest.raises(SchedulerOutputError):
        parse_scontrol_job(data("slurm/scontrol_unknown.stderr"))


@pytest.mark.parametrize("bad", ["2|COMPLETED\n", "|RUNNING|None\n"])
def test_parsers_reject_malformed_lines(bad):
    with pytest.raises(SchedulerOutputError):
        parse_squeue(bad)
    with pytest.raises(SchedulerOutputError):
        parse_sacct(bad)


def test_error_outputs_are_recognised():
    assert squeue_unknown_jobs(data("slurm/squeue_unknown.stderr"))
    assert sacct_disabled(data("slurm/sacct_disabled.stderr"))
    assert not sacct_disabled(data("slurm/squeue_unknown.stderr"))
    assert first_error_line(data("slurm/sbatch_bad_partition.stderr")) == (
        "sbatch: error: invalid partition specified: nope; "
        "sbatch: error: Batch job submission failed: Invalid partition name specified"
    )
    assert first_error_line("", "") == "(no output)"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0:0", (0, 0)),
        ("3:0", (3, 0)),
        ("0:9", (0, 9)),
        ("143:0", (143, 0)),
        ("", (None, None)),
        ("x:y", (None, None)),
    ],
)
def test_parse_exit_code(text, expected):
    assert parse_exit_code(text) == expected


# --------------------------------------------------------------------------------- OAR text


def test_parse_oarsub_after_admission_rules():
    assert parse_oarsub(data("oar/oarsub.stdout")) == "13"
    noisy = "[ADMISSION RULE] Set default walltime to 7200.\n[ADMISSION RULE] x\nOAR_JOB_ID=77\n"
    assert parse_oarsub(noisy) == "77"


def test_parse_oarsub_refusals():
    with pytest.raises(SchedulerError, match="OAR_JOB_ID=-5"):
        parse_oarsub(data("oar/oarsub_too_many_cores.stdout"))
    with pytest.raises(SchedulerOutputError, match="no OAR_JOB_ID"):
        parse_oarsub(data("oar/oarsub_root.stderr"))
    assert "not allowed" in first_error_line(data("oar/oarsub_root.stderr"))
    assert "not enough resources" in first_error_line(data("oar/oarsub_too_many_cores.stderr"))


def test_parse_oarstat_finished_jobs():
    statuses = parse_oarstat(data("oar/oarstat_finished.json"))
    assert statuses["5"] == JobStatus(JobState.DONE, 0)
    assert statuses["2"] == JobStatus(JobState.FAILED, 3, "Terminated, exit code 3")
    assert statuses["4"] == JobStatus(JobState.FAILED, -9, "Terminated, killed by signal 9")
    assert statuses["3"].state is JobState.CANCELLED


def test_parse_oarstat_running_held_and_walltime():
    statuses = parse_oarstat(data("oar/oarstat_running_held.json"))
    assert statuses["13"].state is JobState.RUNNING
    assert statuses["14"] == JobStatus(JobState.SUBMITTED, None, "Hold")
    walltime = parse_oarstat(data("oar/oarstat_walltime.json"))["13"]
    assert walltime.state is JobState.FAILED  # a FRAG event too, but not a cancel
    assert "walltime exceeded" in walltime.reason


def test_parse_oarstat_unknown_and_junk():
    assert parse_oarstat("") == {}
    with pytest.raises(SchedulerOutputError, match="invalid JSON"):
        parse_oarstat("Cannot connect to the database\n")
    with pytest.raises(SchedulerOutputError, match="not an object"):
        parse_oarstat("[1, 2]")
    assert parse_oarstat('{"9": {"state": "Teleporting"}}')["9"].state is JobState.RUNNING


def test_one_oar_state_table_for_the_launcher_and_the_profile():
    """toError only ever leads to Error: the launcher fails the job at once, and the oar
    profile's status script, which asks the same table, reports it failed too."""
    import importlib.util

    assert parse_oarstat('{"7": {"state": "toError"}}')["7"].state is JobState.FAILED
    path = Path(__file__).parents[1] / "profiles" / "oar" / "oar-status.py"
    spec = importlib.util.spec_from_file_location("oar_status", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.ACTIVE == {n for n, s in OAR_STATES.items() if not s.finished}
    assert script.parse_status('{"7": {"state": "toError"}}') == "failed"


@pytest.mark.parametrize(
    "raw, code", [(None, None), (0, 0), (768, 3), (256, 1), (9, -9), (15, -15), (139, -11)]
)
def test_decode_wait_status(raw, code):
    assert decode_wait_status(raw) == code


@pytest.mark.parametrize(
    "options, ranks, expected",
    [
        ({}, 2, "/nodes=1/core=2,walltime=00:30:00"),
        ({"nodes": 2, "walltime": "02:00:00"}, 5, "/nodes=2/core=3,walltime=02:00:00"),
        ({"cores": 8, "cores_ignored": 1}, 2, "/nodes=1/core=8,walltime=00:30:00"),
    ],
)
def test_oar_resources(options, ranks, expected):
    assert oar_resources(options, ranks) == expected


def test_oarsub_argv_runs_the_script_without_secrets():
    argv = oarsub_argv(
        spec(),
        {"queue": "besteffort", "project": "p", "extra_args": ["-t", "x"]},
        Path("/runs/r1/.breed-oar/client-0001.sh"),
    )
    assert argv[:2] == ["oarsub", "--name=client-0001"]
    assert argv[argv.index("-l") + 1] == "/nodes=1/core=2,walltime=00:30:00"
    for arg in (
        "--directory=/runs/r1",
        "--stdout=/runs/r1/logs/client-0001.log",
        "--stderr=/runs/r1/logs/client-0001.log",
        "--queue=besteffort",
        "--project=p",
    ):
        assert arg in argv
    assert argv[-3:] == ["-t", "x", "/runs/r1/.breed-oar/client-0001.sh"]
    assert TOKEN not in " ".join(argv)
    assert oarstat_argv(["1", "2"]) == ["oarstat", "--full", "--json", "-j", "1", "-j", "2"]


def test_oar_job_script_sources_the_env_file():
    script = oar_job_script(spec(), Path("/runs/r1/.breed-oar/c.env"), "/venv/bin/mpiexec")
    assert ". /runs/r1/.breed-oar/c.env\ncd /runs/r1\n" in script
    assert "exec /venv/bin/mpiexec -n 2 /opt/py/bin/python -m breed.client" in script
    assert TOKEN not in script


def test_oar_env_file_rejects_bad_names():
    with pytest.raises(ValueError, match="not a valid variable name"):
        oar_env_file({"BAD-NAME": "1"})


@settings(max_examples=30, deadline=None)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"), max_size=40
    )
)
def test_oar_env_file_round_trips_through_sh(value):
    """Whatever the value (quotes, newlines, $), the job's shell reads it back unchanged."""
    text = oar_env_file({"BREED_TOKEN": value, "OTHER": "1"})
    out = subprocess.run(
        ["sh", "-c", f'{text}\nprintf %s "$BREED_TOKEN"'], capture_output=True, check=True
    ).stdout
    assert out == value.encode()
