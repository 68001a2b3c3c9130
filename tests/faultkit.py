"""Fault injection around a real ``breed run`` (real processes, real sockets on 127.0.0.1).

:class:`RunUnderTest` starts ``breed run`` in its own session, watches it through the server's
control socket (a launcher-style PING with the run token), finds the processes to hit (server
pid in ``server.json``, client process groups in ``jobs.csv``) and, at teardown, kills every
process of the run that is left, checking each one's environment first so nothing else is hit.
:func:`audit` reads the final checkpoint and tells how many samples were lost or duplicated.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from breed import procs
from breed.launcher.launcher import ServerLink
from breed.protocol import token_from_hex
from breed.server.checkpoint import load as load_checkpoint
from breed.server.recovery import StepLedger

# Small enough for seconds: 8 simulations of a 32x32 field. Client faults (MID_STREAM): 301
# steps per simulation, more than the ZeroMQ queues between a client and the server hold (two
# high-water marks of 64 messages, plus kernel buffers), and a reservoir (300) smaller than the
# budget with a trainer slower than the clients: the buffer fills with unseen samples, clients
# block in the middle of a trajectory (backpressure), and a client frozen early in a simulation
# cannot have the rest of it in flight. Server and launcher faults (PACED): one client job at a
# time, one process per simulation, so the run can be frozen between simulations, and a buffer
# that holds every sample (nothing evicted: the final checkpoint's rows list every (sim, step)
# trained on).
BASE: dict[str, Any] = {
    "seed": 11,
    "study": {"simulations": 8},
    "solver": {"grid": 32, "steps": 300},
    "model": {"hidden": 8, "layers": 1, "batch_size": 32},
    "training": {
        "validation_interval": 100,
        "checkpoint_interval": 25,
        "log_interval": 5,
        "progress": False,
    },
    "buffer": {"capacity": 300, "watermark": 150},
    "launcher": {"max_jobs": 2, "ping_interval": 0.1, "poll_interval": 0.1, "ping_timeout": 5.0},
    "validation": {"size": 2},
}
PACED = {
    "solver": {"steps": 100},
    "buffer": {"capacity": 900, "watermark": 150},
    "launcher": {"max_jobs": 1, "persistent": False},
}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = yaml.safe_load(yaml.safe_dump(base))
    for key, value in changes.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def belongs(pid: int, run_dir: Path) -> bool:
    """The process carries this run's directory (a reused pid is not taken for ours)."""
    return procs.carries(pid, {"BREED_RUN_DIR": str(run_dir.resolve())})


def run_processes(run_dir: Path) -> list[int]:
    """Every live process of this run (server, clients, their MPI ranks)."""
    out = []
    for entry in Path("/proc").iterdir():
        if (
            entry.name.isdigit()
            and belongs(int(entry.name), run_dir)
            and procs.alive(int(entry.name))
        ):
            out.append(int(entry.name))
    return out


class RunUnderTest:
    def __init__(self, tmp_path: Path, changes: dict[str, Any] | None = None) -> None:
        self.cfg = merge(BASE, changes or {})
        self.cfg_path = tmp_path / "run.yaml"
        self.cfg_path.write_text(yaml.safe_dump(self.cfg))
        self.dir = tmp_path / "run"
        self.procs: list[subprocess.Popen] = []
        self.outputs: list[Path] = []

    # -- the launcher ----------------------------------------------------------------------
    def start(
        self, resume: bool = False, extra: tuple[str, ...] = (), nofile: int | None = None
    ) -> subprocess.Popen:
        """``breed run`` (or ``--resume``) in its own session; ``nofile`` caps the file
        descriptors of it and its children (server, clients), soft and hard limit alike."""
        args = (
            ["--resume", str(self.dir)]
            if resume
            else [str(self.cfg_path), "--output", str(self.dir)]
        )
        out = self.dir.parent / f"launcher-{len(self.procs)}.err"
        self.outputs.append(out)

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(out, "wb") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "breed", "run", *args, *extra],
                stdout=subprocess.DEVNULL,
                stderr=fh,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=limit if nofile is not None else None,
            )
        self.procs.append(proc)
        return proc

    def finish(self, proc: subprocess.Popen, timeout: float = 240) -> int:
        code = proc.wait(timeout=timeout)
        return code

    def stderr(self, k: int = -1) -> str:
        return self.outputs[k].read_text()

    # -- watching ----------------------------------------------------------------------------
    def server_info(self) -> dict[str, Any] | None:
        path = self.dir / "server.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def ping(self) -> dict[str, Any] | None:
        info = self.server_info()
        if info is None or not (self.dir / "token").exists():
            return None
        curve = None
        if (self.dir / "curve" / "server.public").exists():
            curve = (self.dir / "curve" / "server.public").read_bytes().strip()
        link = ServerLink(
            info["control"],
            token_from_hex((self.dir / "token").read_text()),
            timeout=2.0,
            curve_serverkey=curve,
        )
        try:
            return link.ping({})
        finally:
            link.close()

    def wait_until(
        self, what: str, cond: Callable[[dict[str, Any]], Any], timeout: float = 120
    ) -> Any:
        """Poll the server until ``cond(pong)`` is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pong = self.ping()
            if pong is not None:
                got = cond(pong)
                if got:
                    return got
            if self.procs and self.procs[-1].poll() is not None:
                raise AssertionError(f"the run ended while waiting for {what}: {self.stderr()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def jobs(self) -> list[dict[str, str]]:
        try:
            with open(self.dir / "jobs.csv", newline="") as fh:
                return list(csv.DictReader(fh))
        except OSError:
            return []

    def job_pgid(self, name: str) -> int:
        for row in self.jobs():
            if row["name"] == name and row["pgid"]:
                return int(row["pgid"])
        raise AssertionError(f"job {name} not in jobs.csv")

    # -- teardown ----------------------------------------------------------------------------
    def kill_everything(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pid in run_processes(self.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def stop_mid_stream(run: RunUnderTest, steps: int, timeout: float = 90) -> tuple[str, int, int]:
    """Freeze a client job (SIGSTOP on its process group) while the server holds some but not
    all of its simulation's steps; returns (job name, sim id, steps received).

    The client jobs are frozen as soon as they exist and one of them is let run in short slices
    (growing while it makes no progress: start-up), until the server holds part of one of its
    simulations and that count stays put for half a second with the trainer consuming (so it
    is not data still queued on the way, see BASE). The other jobs are then let go."""
    deadline = time.monotonic() + timeout
    frozen: set[int] = set()
    victim = None
    try:
        while time.monotonic() < deadline:
            rows = [r for r in run.jobs() if r["state"] in ("submitted", "running") and r["pgid"]]
            for r in rows:
                if int(r["pgid"]) not in frozen:
                    signal_group(int(r["pgid"]), signal.SIGSTOP)
                    frozen.add(int(r["pgid"]))
            if not rows:
                time.sleep(0.01)
                continue
            job, pgid = rows[0]["name"], int(rows[0]["pgid"])
            slice_s, last, stable = 0.002, None, 0
            while time.monotonic() < deadline and procs.alive(pgid):
                time.sleep(0.1)
                pong = run.ping() or {}
                mine = {
                    int(s): h for s, (j, h) in pong.get("in_flight_steps", {}).items() if j == job
                }
                partial = sorted((s, h) for s, h in mine.items() if 0 < h < steps + 1)
                if partial:
                    stable = stable + 1 if partial[0] == last else 0
                    last = partial[0]
                    if stable >= 5:
                        victim = pgid
                        return job, last[0], last[1]
                    continue  # wait for it to settle
                stable, last = 0, None
                slice_s = min(slice_s * 1.5, 0.05) if not mine else 0.002
                signal_group(pgid, signal.SIGCONT)
                time.sleep(slice_s)
                signal_group(pgid, signal.SIGSTOP)
            signal_group(pgid, signal.SIGCONT)
            frozen.discard(pgid)
        raise AssertionError("no client caught mid-stream")
    finally:
        for other in frozen - {victim}:
            signal_group(other, signal.SIGCONT)


def freeze_busy_job(run: RunUnderTest, timeout: float = 90) -> tuple[str, list[int]]:
    """SIGSTOP (for good) a client job that has a simulation in flight: it goes silent.
    Returns the job name and its simulations in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pong = run.ping() or {}
        busy: dict[str, list[int]] = {}
        for sim, (job, _) in pong.get("in_flight_steps", {}).items():
            if job:
                busy.setdefault(job, []).append(int(sim))
        if busy:
            job = sorted(busy)[0]
            signal_group(run.job_pgid(job), signal.SIGSTOP)
            return job, busy[job]
        time.sleep(0.01)
    raise AssertionError("no busy client job to freeze")


def audit(run_dir: Path) -> dict[str, Any]:
    """Lost and duplicated samples, from the final checkpoint. ``lost``: steps of finished
    simulations that never entered the buffer (the ledger of every (sim, step) put); duplicates:
    puts beyond the unique (sim, step) count (the buffer's own counter) and repeated rows among
    the samples held. When nothing was evicted the held rows alone are checked as well."""
    state = load_checkpoint(run_dir / "checkpoints" / "checkpoint.pt")
    table = {r["sim_id"]: r for r in state["table"]["records"]}
    done = sorted(s for s, r in table.items() if r["status"] == "done")
    steps = int(state["ledger"]["steps"])
    expected = {(s, t) for s in done for t in range(steps)}
    ledger = StepLedger(steps)
    ledger.load_state_dict(state["ledger"])
    put = {(int(s), int(t)) for s, t in ledger.pairs()}
    snap = state["buffer_data"]
    rows = list(
        zip(snap["arrays"]["_sim_ids"].tolist(), snap["arrays"]["_steps"].tolist(), strict=True)
    )
    held = set(rows)
    received = int(snap["scalars"]["received"])
    evicted = int(snap["scalars"]["evicted"])
    out = {
        "iteration": int(state["trainer"]["iteration"]),
        "done": len(done),
        "records": table,
        "lost": len(expected - put),
        "extra": len(put - expected),
        "duplicated_rows": len(rows) - len(held),
        "duplicated_puts": received - len(put),
        "received": received,
        "expected": len(expected),
        "evicted": evicted,
        "fields_ok": bool(
            np.isfinite(snap["arrays"]["_fields"]).all()
            and np.abs(snap["arrays"]["_fields"]).max() <= 1.0 + 1e-6
        ),
        "counts": state.get("receiver_counts", {}),
    }
    if evicted == 0:
        out["lost"] = max(out["lost"], len(expected - held))
        out["extra"] = max(out["extra"], len(held - expected))
    return out


def samples_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "samples.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
