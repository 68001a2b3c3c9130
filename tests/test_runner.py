"""Units of ``breed run`` (``breed.launcher.runner``) below the end-to-end runs of
test_run.py: the checks made before anything starts, what a client job is given, the run
token on resume, path resolution, the console progress, and the server process's life
(started, found again on resume, stopped) with a real server."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from breed import procs, rundir
from breed.config import ConfigError, validate
from breed.launcher.console import Progress, final_line
from breed.launcher.launcher import LauncherError
from breed.launcher.local import LocalBackend
from breed.launcher.oar import OarBackend
from breed.launcher.runner import (
    check_runtime,
    client_env,
    prepare_run_dir,
    read_token,
    record_resume,
    resolve_paths,
)
from breed.launcher.serverproc import ServerProcess, last_error_line
from breed.launcher.slurm import SlurmBackend
from breed.protocol import token_from_hex

pytestmark = pytest.mark.timeout(60)
TINY = {
    "seed": 3,
    "study": {"simulations": 6},
    "solver": {"grid": 16, "steps": 10},
    "model": {"hidden": 8, "layers": 1, "batch_size": 16},
    "training": {"progress": False},
    "buffer": {"capacity": 40, "watermark": 20},
    "validation": {"size": 4},
}
TOY = {
    "name": "toy",
    "parameters": [{"name": "a", "low": 0, "high": 1}],
    "fields": [{"name": "u", "shape": [4]}],
    "steps": 2,
    "client": {"command": ["sh", "-c", "true"]},
}


@pytest.fixture
def submit_commands(tmp_path, monkeypatch):
    """Stand-ins for sbatch and oarsub on PATH (a boundary we do not own: only their
    presence is checked here; the cluster tier submits to real daemons)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "oarsub"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_a_cluster_backend_without_its_submit_command_is_refused_at_once(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    for backend, command in (("slurm", "sbatch"), ("oar", "oarsub")):
        with pytest.raises(ConfigError, match=f"launcher.backend: {command} not found on PATH"):
            check_runtime(validate({"launcher": {"backend": backend}}))


def test_check_runtime_builds_the_configured_backend(mpiexec, submit_commands):
    local = check_runtime(validate({}))
    assert isinstance(local, LocalBackend) and local.options["mpiexec"] == "mpiexec"
    slurm = check_runtime(
        validate(
            {
                "launcher": {
                    "backend": "slurm",
                    "mpiexec": mpiexec,
                    "slurm": {"mpi": "mpiexec", "time": "0:05:00"},
                }
            }
        )
    )
    assert isinstance(slurm, SlurmBackend) and slurm.mpi == "mpiexec"
    assert (slurm.options["time"], slurm.options["mpiexec"]) == ("0:05:00", mpiexec)
    oar = check_runtime(validate({"launcher": {"backend": "oar", "oar": {"walltime": "1:00:00"}}}))
    assert isinstance(oar, OarBackend) and oar.options["walltime"] == "1:00:00"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"problem": TOY, "launcher": {"server_ranks": 2}},
            "launcher.server_ranks: a field without a declared range",
        ),
        (
            {"training": {"iterations": 100, "max_iterations": 50}},
            "training.iterations: 100 is more than training.max_iterations 50",
        ),
        (
            {"training": {"iterations": 100}, "buffer": {"kind": "fifo"}},
            "training.iterations: a budget is spent on the reservoir",
        ),
        ({"model": {"factory": "no_such_module_here:build"}}, "model.factory"),
        (
            {"launcher": {"backend": "oar", "oar": {"submit_user": "no-such-user-here"}}},
            "launcher.oar.submit_user: no user 'no-such-user-here'",
        ),
    ],
)
def test_check_runtime_refuses_what_the_schema_cannot_see(cfg, message):
    with pytest.raises(ConfigError, match=message):
        check_runtime(validate(cfg))


def test_client_env_is_all_a_client_gets(tmp_path):
    info = rundir.ServerInfo(
        control="tcp://127.0.0.1:5000",
        data=["tcp://127.0.0.1:5001"],
        pid=1,
        ranks=1,
        host="127.0.0.1",
    )
    env = client_env(info, "ab" * 32, None, Path(os.path.relpath(tmp_path)))
    assert env == {
        "BREED_SERVER": "tcp://127.0.0.1:5000",
        "BREED_TOKEN": "ab" * 32,
        "BREED_RUN_DIR": str(tmp_path.resolve()),
    }  # absolute: jobs run anywhere
    curve = client_env(info, "ab" * 32, b"K" * 40, tmp_path)
    assert curve["BREED_CURVE_SERVERKEY"] == "K" * 40


def test_read_token_takes_only_a_private_well_formed_token(tmp_path):
    cfg = validate(TINY)
    token = prepare_run_dir(cfg, tmp_path, ["run"])
    assert read_token(tmp_path) == token and len(token_from_hex(token)) == 32
    (tmp_path / "token").chmod(0o644)
    with pytest.raises(ConfigError, match=r"--resume: .*token: .*readable by others"):
        read_token(tmp_path)
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "token").write_text("not hex\n")
    with pytest.raises(ConfigError, match=r"--resume: .*token"):
        read_token(tmp_path)
    (tmp_path / "token").unlink()
    with pytest.raises(ConfigError, match=r"--resume: .*token"):
        read_token(tmp_path)


def test_resolve_paths_makes_the_client_command_exact(tmp_path):
    (tmp_path / "solver.py").write_text("")
    cfg = {"problem": {**TOY, "client": {"command": "{python} solver.py --out data.npz /abs"}}}
    out = resolve_paths(cfg, tmp_path)
    assert out["problem"]["client"]["command"] == [
        sys.executable,
        str((tmp_path / "solver.py").resolve()),
        "--out",
        "data.npz",
        "/abs",
    ]
    assert cfg["problem"]["client"]["command"].startswith("{python}")  # input left alone
    assert resolve_paths({"problem": "heat2d"}, tmp_path) == {"problem": "heat2d"}


def test_progress_shows_each_warning_once_and_its_end(capsys):
    progress = Progress(6, enabled=False)
    progress({"warnings": {"checkpoint": "cannot write checkpoint; disk full"}})
    progress({"warnings": {"checkpoint": "cannot write checkpoint; disk full"}})
    progress({"warnings": {}})
    progress.close()
    assert capsys.readouterr().err.splitlines() == [
        "breed run: warning: cannot write checkpoint; disk full",
        "breed run: resolved: checkpoint (cannot write checkpoint)",
    ]


def test_progress_bar_follows_the_server(capsys):
    progress = Progress(6, enabled=True)
    try:
        progress({"target": 8, "sims_done": 3, "iteration": 40})
        assert (progress.bar.total, progress.bar.n) == (8, 3)
        assert "it=40" in str(progress.bar)
    finally:
        progress.close()
    assert "3/8" in capsys.readouterr().err


def feed_story(progress: Progress) -> None:
    last = {"generation": 2, "iteration": 40, "K": 5, "r": 0.25, "proposal": 1}
    progress({"phase": "waiting for data", "iteration": 0})
    progress({"phase": "waiting for data", "iteration": 0, "resamplings": 0})
    progress({"phase": "training", "iteration": 3, "resamplings": 0})
    progress({"phase": "training", "iteration": 41, "resamplings": 2, "last_resampling": last})
    progress({"phase": "training", "iteration": 42, "resamplings": 2, "last_resampling": last})
    progress.close()


STORY = [
    "waiting for data (iteration 0)",
    "training (iteration 3)",
    "Breed resampling 2 at iteration 40: 5 pending λ redrawn, r = 0.25, "
    "1 from the proposal (1 more since the last report)",
]


def test_progress_tells_phases_and_resamplings_above_the_bar(capsys):
    feed_story(Progress(6, enabled=True))
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("breed run: ")]
    assert lines == [f"breed run: {x}" for x in STORY]


def test_without_the_bar_the_story_goes_to_the_log_only(capsys, caplog):
    caplog.set_level(logging.INFO, logger="breed.run")
    feed_story(Progress(6, enabled=False))
    assert capsys.readouterr().err == ""  # stderr: warnings, errors, the final line only
    assert [r.getMessage() for r in caplog.records] == STORY


def test_a_resumed_console_does_not_retell_old_resamplings(capsys):
    progress = Progress(6, enabled=False)
    last = {"generation": 7, "iteration": 90, "K": 2, "r": 0.5, "proposal": 1}
    progress({"resamplings": 7, "last_resampling": last})  # first pong after a resume
    progress.close()
    assert capsys.readouterr().err == ""


def test_last_error_line_prefers_the_one_liner_then_the_crash(tmp_path):
    log_path = tmp_path / "server.log"
    log_path.write_text(
        "2026 breed INFO starting\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\n    boom()\nMemoryError: cannot allocate\n'
    )
    assert last_error_line(log_path, "breed server: ") == "MemoryError: cannot allocate"
    with open(log_path, "a") as fh:
        fh.write("breed server: training.iterations: must be > 0\n")
    assert last_error_line(log_path, "breed server: ") == "training.iterations: must be > 0"
    assert last_error_line(tmp_path / "absent.log", "breed server: ") is None


def test_final_line_names_the_results_and_the_error(tmp_path):
    (tmp_path / rundir.SUMMARY).write_text(
        json.dumps(
            {
                "sims_done": 8,
                "iterations": 250,
                "final_validation": {"val_mse": 0.01234, "traj_err_p99": 0.5},
            }
        )
    )
    assert final_line(tmp_path, 12.34) == (
        f"finished in 12.3 s: 8 simulations, 250 iterations, validation MSE 0.0123 "
        f"(p99 0.5); results in {tmp_path}"
    )
    (tmp_path / rundir.SUMMARY).unlink()
    assert final_line(tmp_path, 1.0) == f"finished; results in {tmp_path}"


def test_a_resume_is_appended_to_the_provenance(tmp_path):
    rundir.create(tmp_path / "run")
    cfg = validate({**TINY, "output": str(tmp_path / "run")})
    prepare_run_dir(cfg, tmp_path / "run", ["cfg.yaml"])
    path = tmp_path / "run" / rundir.PROVENANCE
    first = json.loads(path.read_text())
    record_resume(tmp_path / "run", ["--resume", "run"])
    record_resume(tmp_path / "run", ["--resume", "run"])
    after = json.loads(path.read_text())
    assert {k: v for k, v in after.items() if k != "resumes"} == first  # the start untouched
    assert [r["command"] for r in after["resumes"]] == [["breed", "run", "--resume", "run"]] * 2
    assert {"git_revision", "versions", "host", "start_time"} <= set(after["resumes"][0])
    path.write_bytes(b"\xff\x00 not json")
    record_resume(tmp_path / "run", [])  # unreadable: left alone, the resume goes on
    assert path.read_bytes() == b"\xff\x00 not json"


@pytest.fixture
def run_dir(tmp_path):
    """A prepared run directory (resolved config, token) of a tiny heat run."""
    path = tmp_path / "run"
    rundir.create(path)
    cfg = validate({**TINY, "output": str(path)})
    return path, cfg, prepare_run_dir(cfg, path, ["run"])


@pytest.mark.timeout(120)
def test_server_process_starts_is_found_again_and_stops(run_dir):
    path, cfg, token = run_dir
    server = ServerProcess.start(cfg, path, resume=False)
    try:
        info = server.wait_ready(timeout=90)
        assert info.pid == server.pid and info.control.startswith("tcp://127.0.0.1:")
        assert server.alive() and os.getpgid(server.pid) == server.pid  # its own group
        found = ServerProcess.attach(path, token_from_hex(token), None, timeout=5.0)
        assert found is not None and found.proc is None and found.pid == server.pid
        assert found.alive()
        with pytest.raises(LauncherError, match="wrong run token"):  # not this run's
            ServerProcess.attach(path, bytes(32), None, timeout=5.0)
    finally:
        server.stop()
    assert not server.alive() and server.exit_code() is not None
    assert not procs.alive(server.pid)


@pytest.mark.timeout(60)
def test_a_server_refusing_its_inputs_is_a_config_error(run_dir):
    path, cfg, _ = run_dir
    (path / "token").unlink()  # the server reads DIR/token and exits 2 without it
    server = ServerProcess.start(cfg, path, resume=False)
    try:
        with pytest.raises(ConfigError, match="token"):
            server.wait_ready(timeout=50)
        assert server.exit_code() == 2
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_attach_kills_a_silent_server_and_ignores_other_processes(tmp_path):
    """A process of this run that does not answer the control socket is killed (the run
    restarts its server); a pid not carrying the run's directory is not ours to touch."""
    env = {**os.environ, "BREED_RUN_DIR": str(tmp_path.resolve())}
    silent = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        until_carries(silent.pid, env["BREED_RUN_DIR"])
        for proc in (stranger, silent):
            rundir.ServerInfo(
                control="tcp://127.0.0.1:9", data=[], pid=proc.pid, ranks=1, host="127.0.0.1"
            ).write(tmp_path)
            assert ServerProcess.attach(tmp_path, bytes(32), None, timeout=0.2) is None
        assert silent.wait(timeout=10) == -signal.SIGKILL
        assert stranger.poll() is None
    finally:
        for proc in (silent, stranger):
            proc.kill()
            proc.wait(timeout=10)


def until_carries(pid: int, run_dir: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not procs.carries(pid, {"BREED_RUN_DIR": run_dir}):
        assert time.monotonic() < deadline, f"pid {pid} never carried BREED_RUN_DIR"
        time.sleep(0.02)
