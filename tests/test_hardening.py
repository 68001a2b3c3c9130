"""What a careless user or a stranger does must not corrupt or kill a run (issue: hardening).

One test per attack, on real ``breed run`` processes (local backend, real sockets on
127.0.0.1). Each run that is meant to survive must end with exactly S simulations, no sample
lost or trained on twice (:func:`faultkit.audit`), and no process of the run left; each misuse
meant to be refused must get one line on stderr and exit code 2, and change no file.
Opt-in: ``pytest -m faults``.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from faultkit import (
    PACED,
    RunUnderTest,
    audit,
    merge,
    run_processes,
    samples_csv,
    signal_group,
    stop_mid_stream,
)

from breed.launcher import runner
from breed.protocol import Kind, decode, encode_control, encode_finish, token_from_hex

pytestmark = pytest.mark.faults
S = 8


def assert_clean(run: RunUnderTest) -> dict:
    """Exactly S simulations done, every step of them in the buffer once, none twice."""
    steps = run.cfg["solver"]["steps"]
    assert sum(r["status"] == "done" for r in samples_csv(run.dir)) == S
    a = audit(run.dir)
    assert a["done"] == S and a["expected"] == S * (steps + 1)
    assert a["lost"] == 0 and a["extra"] == 0, a
    assert a["duplicated_rows"] == 0 and a["duplicated_puts"] == 0, a
    return a


def one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> str:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err)
    assert err.count("\n") == 1 and err.startswith("breed run: "), err
    for needle in needles:
        assert needle in err, err
    return err


def breed_run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "breed", "run", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def digests(folder: Path) -> dict[str, str]:
    """Content hash of every file under ``folder`` (what "changes no file" compares)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def ports(run: RunUnderTest) -> list[tuple[str, int]]:
    info = run.server_info()
    out = []
    for address in [info["control"], *info["data"]]:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        out.append((host, int(port)))
    return out


def kill_run_keep_dir(run: RunUnderTest, proc: subprocess.Popen) -> None:
    """Launcher and server (and clients) SIGKILLed once a checkpoint exists: an interrupted
    run directory, as a crash leaves it."""
    interval = run.cfg["training"]["checkpoint_interval"]
    run.wait_until("a checkpoint", lambda p: p["iteration"] >= interval)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pid in run_processes(run.dir):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while run_processes(run.dir) and time.monotonic() < deadline:
        time.sleep(0.05)


# -- 1. a stranger exhausts the server's file descriptors ------------------------------------
@pytest.mark.timeout(300)
def test_idle_connections_of_a_stranger_do_not_kill_the_server(make_run) -> None:
    """Without the token, a stranger keeps ~1100 idle TCP connections open on the server's
    ports (re-opening those the server sheds) while the server may hold only 256 descriptors.
    The server sheds them, keeps training and checkpointing, and is never restarted. The
    client is frozen mid-stream until the attacker has re-opened shed connections, so the run
    cannot end before the attack has gone on (it did once: 8 s runs)."""
    run = make_run({**PACED, "training": {"checkpoint_interval": 5, "progress": False}})
    proc = run.start(nofile=256)
    run.wait_until("the server", lambda p: True)
    job, _, _ = stop_mid_stream(run, PACED["solver"]["steps"])
    targets = ports(run)
    held: list[socket.socket] = []
    opened = 0
    stop = threading.Event()

    def attack() -> None:
        nonlocal opened
        while not stop.is_set():
            alive_now = []
            for s in held:  # keep the ones the server has not closed
                try:
                    if s.recv(4096, socket.MSG_DONTWAIT) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    continue
                alive_now.append(s)
            held[:] = alive_now
            while len(held) < 1100 and not stop.is_set():
                try:
                    held.append(socket.create_connection(targets[opened % len(targets)], timeout=1))
                    opened += 1
                except OSError:
                    break
            stop.wait(0.2)

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while opened <= 1200 and time.monotonic() < deadline:  # 100 re-opened after sheds
            stop.wait(0.1)
        signal_group(run.job_pgid(job), signal.SIGCONT)
        assert run.finish(proc) == 0, run.stderr()
    finally:
        stop.set()
        thread.join(timeout=10)
        for s in held:
            s.close()
    assert opened > 1100  # the attack went on after the server shed connections
    assert "restarting" not in run.stderr()
    log = (run.dir / "logs" / "server.log").read_text()
    assert "connection shed" in log
    summary = json.loads((run.dir / "summary.json").read_text())
    print(f"\nopened {opened} connections; checkpoint {summary['checkpoint']}")
    assert_clean(run)


# -- 2. two launchers on one run directory ---------------------------------------------------
@pytest.mark.timeout(300)
def test_a_second_launcher_on_a_live_run_is_refused(make_run) -> None:
    run = make_run(PACED)
    proc = run.start()
    run.wait_until("the server", lambda p: True)
    jobs_before = {r["name"]: r["state"] for r in run.jobs()}
    resumed = breed_run("--resume", run.dir)
    one_line_exit_2(
        resumed, f"{run.dir} is in use by breed run (pid {proc.pid} on host {socket.gethostname()}"
    )
    again = breed_run(run.cfg_path, "--output", run.dir, "--overwrite")
    one_line_exit_2(again, f"is in use by breed run (pid {proc.pid}")
    fresh = breed_run(run.cfg_path, "--output", run.dir)
    one_line_exit_2(fresh, "holds a run", f"breed run --resume {run.dir}")
    # the live launcher's clients were not touched by the refused ones
    assert all(
        r["reason"] != "left by a launcher that died; cancelled on resume"
        for r in run.jobs()
        if r["name"] in jobs_before
    )
    assert run.finish(proc) == 0, run.stderr()
    train = [
        json.loads(x)["iteration"]
        for x in (run.dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    assert train == sorted(set(train))  # one writer: iterations never go back
    names = [r["name"] for r in run.jobs()]
    assert len(names) == len(set(names))
    assert_clean(run)


def test_a_second_server_on_a_run_directory_is_refused(tmp_path: Path) -> None:
    from breed.rundir import SERVER_LOCK, RunLock

    (tmp_path / "logs").mkdir()
    (tmp_path / "config.resolved.yaml").write_text("{}")
    with RunLock(tmp_path, SERVER_LOCK, "breed server"):
        proc = subprocess.run(
            [sys.executable, "-m", "breed", "server", "--run-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert f"is in use by breed server (pid {os.getpid()}" in proc.stderr.strip().splitlines()[-1]


# -- 3. reusing an output directory ----------------------------------------------------------
@pytest.mark.timeout(300)
def test_an_existing_run_directory_is_never_reused(make_run) -> None:
    run = make_run(PACED)
    assert run.finish(run.start()) == 0, run.stderr()
    before = digests(run.dir)
    other = merge(run.cfg, {"validation": {"size": 3, "seed": 7}})
    other_path = run.dir.parent / "other.yaml"
    other_path.write_text(yaml.safe_dump(other))
    one_line_exit_2(
        breed_run(other_path, "--output", run.dir), "holds a finished run", "--overwrite"
    )
    assert digests(run.dir) == before  # nothing appended, overwritten or reused
    # --overwrite moves the old run aside and starts afresh, with a validation set of its own
    done = breed_run(other_path, "--output", run.dir, "--overwrite", timeout=240)
    assert done.returncode == 0, done.stderr
    moved = [p for p in run.dir.parent.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and digests(moved[0]) == before
    assert f"moved the old {run.dir} aside to {moved[0]}" in done.stderr
    from breed.learning.validation import load_validation

    vset = load_validation(run.dir / "validation.npz")
    assert (vset.size, vset.seed) == (3, 7)
    assert_clean(run)
    # a validation set made for other settings is refused with one line, before anything
    bad = merge(run.cfg, {"validation": {"file": str(moved[0] / "validation.npz"), "size": 3}})
    bad_path = run.dir.parent / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    out = run.dir.parent / "never"
    one_line_exit_2(
        breed_run(bad_path, "--output", out),
        "validation.file",
        "made with validation.size 2 but the run has 3",
    )
    assert not out.exists()


# -- 4. a checkpoint write that fails --------------------------------------------------------
def wait_for_log(run: RunUnderTest, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = run.dir / "logs" / "server.log"
        if log.exists() and text in log.read_text():
            return
        assert run.procs[-1].poll() is None, run.stderr()
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never in server.log")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["not-a-directory", "disk-full"])
def test_failed_checkpoint_writes_are_retried_not_fatal(make_run, how: str) -> None:
    """``checkpoints/`` replaced by a file, or a full disk (a 64 KiB tmpfs mounted over it,
    root only): writes fail, the server says so and goes on; once the folder is back, the
    checkpoint is written and the run completes."""
    if how == "disk-full" and os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    run = make_run({**PACED, "training": {"checkpoint_interval": 5, "progress": False}})
    proc = run.start()
    run.wait_until("training", lambda p: p["iteration"] > 0)
    ckpt = run.dir / "checkpoints"
    aside = run.dir / "checkpoints.kept"
    if how == "not-a-directory":
        ckpt.rename(aside)
        ckpt.write_text("not a directory")
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(ckpt)], check=True)
    try:
        wait_for_log(run, "not written")
        run.wait_until("the warning", lambda p: "checkpoint" in p.get("warnings", {}))
        deadline = time.monotonic() + 60  # failing until the console has said so
        while "warning: checkpoint writes are failing" not in run.stderr():
            assert time.monotonic() < deadline, run.stderr()
            time.sleep(0.1)
    finally:
        if how == "not-a-directory":
            ckpt.unlink()
            aside.rename(ckpt)
        else:
            subprocess.run(["umount", "-l", str(ckpt)], check=True)
    assert run.finish(proc) == 0, run.stderr()
    err = run.stderr()
    assert "breed run: warning: checkpoint writes are failing" in err
    assert "breed run: resolved: checkpoint" in err
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["checkpoint"]["failures"] >= 1
    assert summary["checkpoint"]["last_iteration"] == summary["iterations"]
    assert "restarting" not in err
    assert_clean(run)


# -- 5. configs that cannot fit --------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "term"),
    [
        ({"solver": {"grid": 4096, "steps": 100000}}, "validation set"),
        ({"model": {"batch_size": 1_000_000_000}}, "batch"),
        ({"validation": {"size": 1_000_000_000}}, "validation set"),
        ({"buffer": {"capacity": 1_000_000_000_000}}, "buffer"),
    ],
)
def test_a_run_that_cannot_fit_is_refused_before_anything_starts(
    tmp_path, capsys, changes, term
) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump(changes))
    t0 = time.monotonic()
    code = runner.main([str(path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("breed run: resources.memory_limit_gib: the run needs about ")
    assert term in err and time.monotonic() - t0 < 10
    assert not (tmp_path / "run").exists()


def test_the_memory_limit_is_a_setting(tmp_path, capsys) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({"resources": {"memory_limit_gib": 0.01}}))
    assert runner.main([str(path), "--output", str(tmp_path / "run")]) == 2
    assert "more than 10.2 MiB (resources.memory_limit_gib)" in capsys.readouterr().err


# -- 6. back-pressure is not silence ---------------------------------------------------------
@pytest.mark.timeout(300)
def test_clients_held_by_back_pressure_are_not_cancelled_as_silent(make_run) -> None:
    """A slow trainer (an MLP of 4096 units, batches of 1024, one thread: seconds per
    iteration) behind a
    reservoir full of unseen samples: the receiver stops reading and the clients block in
    ``send`` for longer than ``simulation_timeout`` (0.5 s). Blocked by the server, they are not
    silent: none is cancelled, no simulation is run twice, no λ is redrawn."""
    run = make_run(
        {
            "launcher": {"max_jobs": 2, "simulation_timeout": 0.5},
            "model": {"hidden": 4096, "layers": 2, "batch_size": 1024},
            "buffer": {"capacity": 300, "watermark": 150},
            "training": {
                "threads": 1,
                "checkpoint_interval": 10000,
                "validation_interval": 10000,
                "log_interval": 1,
                "progress": False,
            },
        }
    )
    proc = run.start()
    assert run.finish(proc, timeout=280) == 0, run.stderr()
    summary = json.loads((run.dir / "summary.json").read_text())
    metrics = [json.loads(x) for x in (run.dir / "metrics.jsonl").read_text().splitlines()]
    longest = max(m.get("receiver_longest_pause_s", 0) for m in metrics)
    print(f"\nlongest pause of the receiver {longest:.1f} s")
    assert longest > 2 * run.cfg["launcher"]["simulation_timeout"]  # the clients were held
    assert summary["messages"].get("sims_timed_out", 0) == 0
    rows = samples_csv(run.dir)
    assert len(rows) == S and all(int(r["attempts"]) == 1 for r in rows)
    assert not any(r["reason"].startswith("silent") for r in run.jobs())
    assert_clean(run)


# -- 7. bad files and arguments --------------------------------------------------------------
def test_bad_config_files_and_arguments_get_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_text("seed: 3\n", encoding="utf-16")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("output: r\xe9sultats\n".encode("latin-1"))
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    good = tmp_path / "good.yaml"
    good.write_text("seed: 1\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [
        ([binary], "is a binary file, not YAML text"),
        ([utf16], "UTF-16? save it as UTF-8"),
        ([latin], "is not UTF-8 text"),
        ([tmp_path], "is a directory, not a file"),
        ([good, "--set", "solver.grid=[1,2"], "--set solver.grid: '[1,2' is not valid YAML"),
        ([good, "--set", "seed.x=1"], "seed.x: seed is not a mapping"),
        ([good, "--set", "=3"], "expected KEY=VALUE"),
        ([listing, "--set", "seed=1"], "holds a list, not a mapping of keys"),
        ([good, "--output", blocker / "run"], "a part of this path is a file"),
        ([good, "--output", blocker], "exists and is not a directory"),
        ([good, "--resume", tmp_path], "--resume RUN_DIR takes no config"),
    ]
    for args, needle in cases:
        given = {str(a) for a in args}
        extra = [] if given & {"--output", "--resume"} else ["--output", out]
        one_line_exit_2(breed_run(*args, *extra), needle)
    assert not out.exists() and blocker.read_text() == "x"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("launcher.simulation_timeout", ".nan"),
        ("launcher.ping_timeout", ".inf"),
        ("solver.dt", ".nan"),
        ("model.lr", ".inf"),
        ("solver.bounds", "[100, .inf]"),
        ("sampler.breed.sigma", ".nan"),
    ],
)
def test_nan_and_infinity_are_refused(tmp_path, capsys, key: str, value: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    assert runner.main([str(path), "--output", str(tmp_path / "r"), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"breed run: {key}") and "is not a finite number" in err, err


@pytest.mark.timeout(300)
def test_garbage_jobs_table_on_resume_is_refused_then_resume_works(make_run) -> None:
    run = make_run(PACED)
    kill_run_keep_dir(run, run.start())
    jobs = run.dir / "jobs.csv"
    good = jobs.read_bytes()
    for garbage in (
        os.urandom(2000),
        b"name,job_id\nclient-1,x\n",
        good.replace(b"submitted", b"exploded")
        .replace(b"running", b"exploded")
        .replace(b"done", b"exploded"),
    ):
        jobs.write_bytes(garbage)
        before = digests(run.dir)
        one_line_exit_2(breed_run("--resume", run.dir), "--resume: ", "jobs.csv")
        assert digests(run.dir) == before
    jobs.write_bytes(good)
    assert run.finish(run.start(resume=True)) == 0, run.stderr()
    assert_clean(run)


# -- 8. resume of a finished run -------------------------------------------------------------
@pytest.mark.timeout(300)
def test_resume_of_a_finished_run_changes_nothing(make_run) -> None:
    run = make_run(PACED)
    assert run.finish(run.start()) == 0, run.stderr()
    before = digests(run.dir)
    one_line_exit_2(breed_run("--resume", run.dir), "is a finished run", "nothing to resume")
    assert digests(run.dir) == before


# -- 9. a crafted checkpoint -----------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.timeout(300)
def test_a_crafted_checkpoint_is_refused_and_never_runs(make_run) -> None:
    run = make_run(PACED)
    kill_run_keep_dir(run, run.start())
    marker = run.dir.parent / "pwned"
    ckpt = run.dir / "checkpoints" / "checkpoint.pt"
    import torch

    torch.save({"iteration": 1, "x": _Payload(marker)}, ckpt)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, torch; torch.load(sys.argv[1], weights_only=False)",
            str(ckpt),
        ],
        capture_output=True,
        timeout=60,
    )
    assert probe.returncode == 0 and marker.exists()  # the file is a real attack ...
    marker.unlink()
    resumed = run.start(resume=True)
    assert run.finish(resumed, timeout=120) == 2
    err = run.stderr().strip()
    assert err.count("\n") == 0 and "refused, it holds objects other than tensors" in err, err
    assert not marker.exists()  # ... and breed never ran it
    assert not run_processes(run.dir)


# -- 10. an insider claims another client's job id -------------------------------------------
class Insider:
    """A peer holding the run token (not a client of the launcher) on the control socket."""

    def __init__(self, run: RunUnderTest) -> None:
        import zmq

        self.token = token_from_hex((run.dir / "token").read_text())
        self.sock = zmq.Context.instance().socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(run.server_info()["control"])

    def call(self, kind: Kind, body: dict) -> tuple[Kind, dict]:
        self.sock.send_multipart(encode_control(kind, self.token, body))
        assert self.sock.poll(10_000), "the server did not answer"
        msg = decode(self.sock.recv_multipart(), self.token)
        return msg.kind, msg.body

    def close(self) -> None:
        self.sock.close(0)


@pytest.mark.timeout(300)
def test_a_job_id_cannot_be_claimed_by_another_peer(make_run) -> None:
    run = make_run({"launcher": {"max_jobs": 2, "simulation_timeout": 3.0}})
    proc = run.start()
    pong = run.wait_until(
        "a simulation in flight", lambda p: any(j for j, _ in p["in_flight_steps"].values()) and p
    )
    sim, (victim, _) = next((s, v) for s, v in pong["in_flight_steps"].items() if v[0])
    insider = Insider(run)
    try:
        kind, body = insider.call(Kind.REQUEST, {"client": "x", "job_id": victim, "nranks": 1})
        assert kind is Kind.REJECT and "without its job key" in body["reason"]
        kind, _ = insider.call(
            Kind.REQUEST, {"client": "x", "job_id": victim, "nranks": 1, "job_key": "0" * 32}
        )
        assert kind is Kind.REJECT
        kind, body = insider.call(
            Kind.REQUEST, {"client": "x", "job_id": "client-99999", "nranks": 1}
        )
        assert kind is Kind.REJECT and "not a job this run's launcher started" in body["reason"]
        kind, _ = insider.call(
            Kind.ABORT, {"sim_id": int(sim), "reason": "x", "job_id": "client-99999"}
        )
        assert kind is Kind.REJECT
    finally:
        insider.close()
    assert run.finish(proc) == 0, run.stderr()
    job = next(r for r in run.jobs() if r["name"] == victim)
    assert job["state"] == "done" and "silent" not in job["reason"]  # never cancelled
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["rejected"]["bad_job_key"] == 4
    rows = samples_csv(run.dir)
    assert all(int(r["attempts"]) == 1 for r in rows)
    assert_clean(run)


# -- 11. FINISH before any STEP --------------------------------------------------------------
@pytest.mark.timeout(300)
def test_finish_before_any_step_is_retried_at_once(make_run) -> None:
    """A client that gives up before its first step (its solver failed at start) finishes
    with nothing sent: the simulation runs again at once with the same λ, not after
    ``simulation_timeout`` (300 s here)."""
    import zmq

    run = make_run({**PACED, "launcher": {**PACED["launcher"], "simulation_timeout": 300.0}})
    proc = run.start()
    run.wait_until("the server", lambda p: True)
    insider = Insider(run)
    try:
        kind, body = insider.call(Kind.REQUEST, {"client": "broken", "nranks": 1})
        assert kind is Kind.ASSIGN
        data = zmq.Context.instance().socket(zmq.DEALER)  # the client API's data socket
        data.setsockopt(zmq.LINGER, 2000)
        data.setsockopt(zmq.RCVTIMEO, 10_000)
        data.connect(body["data"])
        data.send_multipart(encode_finish(insider.token, body["sim_id"], 0))
        reply = decode(data.recv_multipart(), insider.token)  # FINISH is answered at once
        data.close()
        # nothing was sent: the server says so, the simulation is handed out again
        assert reply.kind is Kind.REJECT, reply
    finally:
        insider.close()
    t0 = time.monotonic()
    assert run.finish(proc) == 0, run.stderr()
    assert time.monotonic() - t0 < 120
    row = next(r for r in samples_csv(run.dir) if int(r["sim_id"]) == body["sim_id"])
    assert row["status"] == "done" and int(row["attempts"]) == 2
    assert [float(row[f"T{k}"]) for k in range(5)] == pytest.approx(body["params"])
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["messages"]["incomplete_sims"] == 1
    assert summary["messages"].get("sims_timed_out", 0) == 0
    assert_clean(run)


# -- 12. partial files of killed writes ------------------------------------------------------
@pytest.mark.timeout(300)
def test_partial_files_of_killed_writes_are_removed(make_run) -> None:
    run = make_run(PACED)
    kill_run_keep_dir(run, run.start())
    partial = [
        run.dir / "checkpoints" / ".checkpoint.pt.k1ll3d",
        run.dir / ".samples.csv.x1",
        run.dir / ".summary.json.x2",
        run.dir / ".jobs.csv.x3",
    ]
    for path in partial:
        path.write_bytes(os.urandom(4096))
    keep = run.dir / "checkpoints" / "notes.txt"  # not a partial write: left alone
    keep.write_text("mine")
    assert run.finish(run.start(resume=True)) == 0, run.stderr()
    assert not any(p.exists() for p in partial) and keep.read_text() == "mine"
    assert (
        "partial files of writes killed half-way" in (run.dir / "logs" / "server.log").read_text()
    )
    assert_clean(run)


def test_the_fd_limit_is_raised_to_the_hard_limit() -> None:
    code = (
        "import resource; from breed.server.guard import raise_fd_limit; "
        "print(*raise_fd_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    out = subprocess.run(
        ["bash", "-c", f"ulimit -Sn 64; {sys.executable} -c '{code}'"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    soft, hard, now_soft, now_hard = map(int, out)
    assert soft == hard == now_soft == now_hard and soft > 64
