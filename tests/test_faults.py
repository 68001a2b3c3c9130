"""Injected faults on a real ``breed run`` (local backend, real processes and sockets): clients
killed, hung or terminated mid-stream, the server killed after the watermark, the launcher
killed. Each run must end with exactly the budget of simulations, no sample lost and none
trained on twice (:func:`faultkit.audit` on the final checkpoint). Opt-in: ``pytest -m faults``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from faultkit import (
    PACED,
    RunUnderTest,
    audit,
    freeze_busy_job,
    metrics,
    samples_csv,
    signal_group,
    stop_mid_stream,
)

from breed.procs import alive
from breed.server.checkpoint import load as load_checkpoint

pytestmark = pytest.mark.faults
S = 8


def assert_clean(run: RunUnderTest) -> dict:
    """Exactly S simulations done, every sample of them trained on, none twice."""
    STEPS = run.cfg["solver"]["steps"]
    rows = samples_csv(run.dir)
    assert sum(r["status"] == "done" for r in rows) == S
    a = audit(run.dir)
    assert a["done"] == S and a["expected"] == S * (STEPS + 1)
    assert a["lost"] == 0 and a["extra"] == 0, a
    assert a["duplicated_rows"] == 0 and a["duplicated_puts"] == 0, a
    assert a["received"] == S * (STEPS + 1) and a["fields_ok"]
    retried = sum(int(r["attempts"]) > 1 for r in rows)
    print(
        f"\nAUDIT lost={a['lost']} duplicated={a['duplicated_puts'] + a['duplicated_rows']} "
        f"re-sent-and-dropped={a['counts'].get('duplicate_steps', 0)} retried_sims={retried} "
        f"evicted={a['evicted']} iterations={a['iteration']}"
    )
    return a


def client_groups(run: RunUnderTest) -> list[int]:
    return [
        int(r["pgid"])
        for r in run.jobs()
        if r["state"] in ("submitted", "running") and r["pgid"] and alive(int(r["pgid"]))
    ]


def freeze_clients(run: RunUnderTest, timeout: float = 60) -> list[int]:
    """SIGSTOP every live client job; with one job at a time (PACED) it may be between jobs,
    so wait until a frozen job holds the run (the launcher submits no other while it lives)."""
    deadline = time.monotonic() + timeout
    frozen: list[int] = []
    while time.monotonic() < deadline:
        for pgid in client_groups(run):
            if pgid not in frozen:
                signal_group(pgid, signal.SIGSTOP)
                frozen.append(pgid)
        time.sleep(0.3)
        live = [p for p in frozen if alive(p)]
        if live and set(client_groups(run)) <= set(frozen):
            return live
    raise AssertionError("no client job to freeze")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_client_killed_mid_stream_is_retried_with_the_same_parameters(make_run, sig) -> None:
    run = make_run()
    proc = run.start()
    job, sim, have = stop_mid_stream(run, run.cfg["solver"]["steps"])
    signal_group(run.job_pgid(job), sig)
    signal_group(run.job_pgid(job), signal.SIGCONT)  # SIGTERM: the client aborts, exits 143
    assert run.finish(proc) == 0, run.stderr()
    a = assert_clean(run)
    row = next(r for r in samples_csv(run.dir) if int(r["sim_id"]) == sim)
    assert int(row["attempts"]) == 2 and row["status"] == "done"  # samples.csv shows the retry
    killed = next(r for r in run.jobs() if r["name"] == job)
    assert row["job_id"].startswith("local-") and row["job_id"] != killed["job_id"]
    # the retry re-sent the steps the dead attempt had delivered: all dropped, none trained twice
    assert have <= a["counts"]["duplicate_steps"] < run.cfg["solver"]["steps"] + 1
    assert killed["state"] == "failed"
    assert killed["exit_code"] == str(-sig if sig == signal.SIGKILL else 128 + sig)


@pytest.mark.timeout(240)
def test_silent_client_times_out_is_cancelled_and_its_simulation_rerun(make_run) -> None:
    run = make_run({"launcher": {"simulation_timeout": 3.0}})
    proc = run.start()
    job, sims = freeze_busy_job(run)  # hung for good
    assert run.finish(proc) == 0, run.stderr()
    assert_clean(run)
    rows = {int(r["sim_id"]): r for r in samples_csv(run.dir)}
    hung = next(r for r in run.jobs() if r["name"] == job)
    assert all(
        int(rows[s]["attempts"]) >= 2 and rows[s]["job_id"] != hung["job_id"] for s in sims
    )  # finished by another job
    assert hung["state"] == "cancelled" and "silent" in hung["reason"]
    assert not alive(int(hung["pgid"]))


@pytest.mark.timeout(300)
def test_server_killed_restarts_from_its_checkpoint(make_run) -> None:
    """A client is frozen in the middle of a simulation, the server checkpoints (that partial
    simulation in flight, its steps in the ledger) and is killed: the launcher restarts it from
    the checkpoint, the simulation runs again and its re-sent steps are not taken twice."""
    run = make_run({"buffer": {"capacity": 2500, "watermark": 150}})  # nothing evicted
    proc = run.start()
    run.wait_until("the server", lambda p: True)
    old_server = run.server_info()["pid"]
    job, sim, have = stop_mid_stream(run, run.cfg["solver"]["steps"])
    interval = run.cfg["training"]["checkpoint_interval"]
    start = run.wait_until("the watermark", lambda p: p["iteration"] > 0 and p["iteration"])
    pong = run.wait_until(
        "a checkpoint after the freeze", lambda p: p["iteration"] >= start + 2 * interval and p
    )
    assert pong["sims_done"] < S and str(sim) in pong["in_flight_steps"]
    os.kill(old_server, signal.SIGSTOP)  # hold the checkpoint still while we read it
    at = load_checkpoint(run.dir / "checkpoints" / "checkpoint.pt")["trainer"]["iteration"]
    assert at >= start + interval
    os.killpg(old_server, signal.SIGKILL)
    assert run.finish(proc) == 0, run.stderr()
    assert "restarting it from its checkpoint (1 of 3)" in run.stderr()
    assert run.server_info()["pid"] != old_server
    log = (run.dir / "logs" / "server.log").read_text()
    resumed = [int(x) for x in re.findall(r"resumed from \S+ at iteration (\d+)", log)]
    assert resumed == [at]
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["iterations"] > at  # the count continues from the checkpoint
    train = [m["iteration"] for m in metrics(run.dir) if m["kind"] == "train"]
    assert train == sorted(set(train))  # rows after the checkpoint were dropped, not doubled
    a = assert_clean(run)
    row = next(r for r in samples_csv(run.dir) if int(r["sim_id"]) == sim)
    assert int(row["attempts"]) == 2 and a["records"][sim]["restarts"] == 1
    assert a["counts"]["duplicate_steps"] >= have  # the ledger survived the restart
    cancelled = [r for r in run.jobs() if r["reason"] == "server restart"]
    assert cancelled and all(not alive(int(r["pgid"])) for r in cancelled)


@pytest.mark.timeout(300)
def test_hung_server_is_killed_and_restarted(make_run) -> None:
    """A server that stops answering (SIGSTOP) is declared dead after ping_timeout (5 s here),
    killed, and restarted from its checkpoint like a crashed one."""
    run = make_run(PACED)
    proc = run.start()
    interval = run.cfg["training"]["checkpoint_interval"]
    pong = run.wait_until("a checkpoint", lambda p: p["iteration"] >= interval and p)
    assert pong["sims_done"] < S
    old_server = run.server_info()["pid"]
    os.kill(old_server, signal.SIGSTOP)
    assert run.finish(proc) == 0, run.stderr()
    assert "did not answer for 5 s; restarting it from its checkpoint (1 of 3)" in run.stderr()
    assert not alive(old_server) and run.server_info()["pid"] != old_server
    assert_clean(run)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"on_server_death": "fail"}, "the server process exited; see logs/server.log"),
        ({"max_server_restarts": 0}, "gave up after 0 server restarts"),
    ],
)
def test_server_death_fails_the_run_when_configured(make_run, policy, message) -> None:
    run = make_run({**PACED, "launcher": {**PACED["launcher"], **policy}})
    proc = run.start()
    run.wait_until("the watermark", lambda p: p["iteration"] > 0)
    os.killpg(run.server_info()["pid"], signal.SIGKILL)
    assert run.finish(proc) == 1
    err = run.stderr().strip()
    assert err.count("\n") == 0 and message in err
    jobs = [int(r["pgid"]) for r in run.jobs() if r["pgid"]]
    assert jobs and not any(alive(p) for p in jobs)  # no client left behind


@pytest.mark.timeout(300)
@pytest.mark.parametrize("server_too", [False, True])
def test_launcher_killed_then_resumed(make_run, server_too: bool) -> None:
    run = make_run(PACED)
    proc = run.start()
    run.wait_until("the watermark", lambda p: p["iteration"] > 0)
    job, sims = freeze_busy_job(run)  # hold the run still, a simulation in flight
    orphans = [run.job_pgid(job)]
    interval = run.cfg["training"]["checkpoint_interval"]
    run.wait_until("a checkpoint", lambda p: p["iteration"] >= interval)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher only: server and clients live on
    proc.wait()
    server = run.server_info()["pid"]
    assert alive(server) and all(alive(p) for p in orphans)
    if server_too:
        os.killpg(server, signal.SIGKILL)
    again = run.start(resume=True)
    assert run.finish(again) == 0, run.stderr()
    assert all(not alive(p) for p in orphans)  # found again and cancelled, not orphaned
    launcher_log = (run.dir / "logs" / "launcher.log").read_text()
    if server_too:
        assert "restarting the server from its checkpoint" in launcher_log
        assert run.server_info()["pid"] != server
    else:
        assert "re-attached to the running server" in launcher_log
        assert run.server_info()["pid"] == server
    names = [r["name"] for r in run.jobs()]
    assert len(names) == len(set(names))  # the resumed launcher numbers its jobs after
    assert_clean(run)
    rows = {int(r["sim_id"]): r for r in samples_csv(run.dir)}
    if not server_too:  # (a restarted server may not have had that simulation handed out)
        assert all(int(rows[s]["attempts"]) == 2 for s in sims)  # the orphan's, run again
