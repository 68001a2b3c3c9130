"""A real ``breed run`` through the local Slurm or OAR of ``ci/``, watched from outside (the
end-to-end tests of ``test_cluster_e2e.py``; the schedulers themselves are :mod:`clusterkit`'s).

:class:`ClusterRun` starts ``breed run`` as a subprocess in its own session, through this file's
``__main__`` (``python tests/clusterrun.py run ...``): the same ``breed.cli.main`` a user runs,
which afterwards also writes the scheduler backend's own command timings (``timings.json``,
seconds per ``sbatch``/``squeue``/... call) so the tests can report polling overhead per job.
At teardown it interrupts the launcher (so it cancels its jobs as a user's Ctrl-C would),
cancels through the scheduler any job ``jobs.csv`` still lists as alive, and kills what is left
of the run's processes (those carrying its ``BREED_RUN_DIR``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from breed import procs
from breed.launcher.backend import Backend

ROOT = Path(__file__).resolve().parents[1]


# tests/test_run.py's tiny run, with m = 2 client jobs of 2 MPI ranks each; one job per
# simulation, so every simulation's row names the job that ran it.
TINY: dict[str, Any] = {
    "seed": 3,
    "study": {"simulations": 6},
    "solver": {"grid": 16, "steps": 10, "ranks": 2},
    "model": {"hidden": 8, "layers": 1, "batch_size": 16},
    "training": {"validation_interval": 20, "log_interval": 5, "progress": False},
    "buffer": {"capacity": 40, "watermark": 20},
    "launcher": {"max_jobs": 2, "persistent": False, "ping_interval": 0.2, "poll_interval": 0.2},
    "validation": {"size": 4},
}

# Clients caught early in a simulation: persistent, 1001 steps of a 32x32 field each (about a
# third of a second of streaming: a cancel lands long before the end). The reservoir holds every
# sample (no back-pressure): the server reads what a client sends as it comes, so once a client
# is stopped the count of its steps the server holds settles within a fraction of a second.
SLOW: dict[str, Any] = {
    "solver": {"grid": 32, "steps": 1000},
    "model": {"batch_size": 32},
    "training": {"validation_interval": 100, "log_interval": 5},
    "buffer": {"capacity": 7000, "watermark": 150},
    "launcher": {"persistent": True},
}


def merge(base: dict[str, Any], *changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each of ``changes`` merged in, two levels deep (``launcher.slurm``)."""
    out = yaml.safe_load(yaml.safe_dump(base))
    for change in changes:
        for key, value in change.items():
            if isinstance(value, dict):
                section = out.setdefault(key, {})
                for k, v in value.items():
                    section[k] = {**section.get(k, {}), **v} if isinstance(v, dict) else v
            else:
                out[key] = value
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def run_processes(run_dir: Path) -> list[int]:
    """Live processes carrying this run's directory in their environment (server, clients)."""
    want = {"BREED_RUN_DIR": str(run_dir.resolve())}
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and procs.carries(int(e.name), want)
    ]


class ClusterRun:
    """One ``breed run`` through a scheduler backend, started in ``workdir``."""

    def __init__(
        self, workdir: Path, cfg: dict[str, Any], cancel: Callable[[list[str]], None]
    ) -> None:
        self.workdir = workdir
        self.cfg = cfg
        self.cancel = cancel  # scheduler command that cancels job ids (teardown only)
        self.dir = workdir / "run"
        self.proc: subprocess.Popen | None = None
        self.stderr_path = workdir / "launcher.err"
        self.elapsed = 0.0

    def start(self) -> None:
        (self.workdir / "run.yaml").write_text(yaml.safe_dump(self.cfg))
        env = {**os.environ, "BREED_TEST_TIMINGS": str(self.workdir / "timings.json")}
        with open(self.stderr_path, "wb") as err:
            # relative paths on purpose: a user types `breed run run.yaml --output run`
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "run",
                    "run.yaml",
                    "--output",
                    "run",
                ],
                cwd=self.workdir,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._t0 = time.monotonic()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"breed run did not finish within {timeout:g} s; {self.diagnostics()}"
            ) from None
        self.elapsed = time.monotonic() - self._t0
        return code

    # -- what the run wrote ----------------------------------------------------------------
    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def diagnostics(self) -> str:
        logs = self.dir / "logs"
        parts = [f"stderr: {self.stderr()[-2000:]}"]
        for name in ("launcher.log", "server.log"):
            if (logs / name).exists():
                parts.append(f"{name}: {(logs / name).read_text()[-2000:]}")
        parts.append(f"jobs.csv: {self.jobs()}")
        return "\n".join(parts)

    def jobs(self) -> list[dict[str, str]]:
        return read_csv(self.dir / "jobs.csv")

    def samples(self) -> list[dict[str, str]]:
        return read_csv(self.dir / "samples.csv")

    def summary(self) -> dict[str, Any]:
        return json.loads((self.dir / "summary.json").read_text())

    def timings(self) -> dict[str, list[float]]:
        return json.loads((self.workdir / "timings.json").read_text())

    # -- watching the server ----------------------------------------------------------------
    def ping(self) -> dict[str, Any] | None:
        """The server's status, asked as the launcher asks it (PING with the run token)."""
        from breed.launcher.launcher import ServerLink
        from breed.protocol import token_from_hex

        try:
            info = json.loads((self.dir / "server.json").read_text())
            token = token_from_hex((self.dir / "token").read_text().strip())
        except (OSError, ValueError):
            return None
        link = ServerLink(info["control"], token, timeout=2.0)
        try:
            return link.ping({})
        finally:
            link.close()

    # -- teardown ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Interrupt the launcher (it cancels its jobs), cancel what jobs.csv still lists as
        alive, kill what is left of the run."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        alive = [
            j["job_id"]
            for j in self.jobs()
            if j["state"] in ("pending", "submitted", "running") and j["job_id"]
        ]
        if alive:
            self.cancel(alive)
        for pid in run_processes(self.dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def in_flight(run: ClusterRun, sim: str) -> tuple[str, int] | None:
    """(job name, steps held) of simulation ``sim`` while the server has it in flight."""
    status = run.ping() or {}
    if status and "in_flight_steps" not in status:
        raise AssertionError(f"the server's status has no in_flight_steps: {status}")
    got = status.get("in_flight_steps", {}).get(sim)
    return (got[0], int(got[1])) if got else None


def catch_early(
    run: ClusterRun, early: int, timeout: float, hold: Callable[[str, str], bool] | None = None
) -> tuple[int, str]:
    """A simulation the server has handed to a client job and holds fewer than ``early`` steps
    of; returns (sim id, job name). ``hold(sim, name)``, when given, is called at once (to
    freeze the job) and says whether to keep this catch; it undoes its own work when not.

    A simulation of :data:`SLOW` streams in about a third of a second, but a client job's
    first one waits for the solver's start-up, so the server is asked as fast as it answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run.ping() or {}
        if status and "in_flight_steps" not in status:
            raise AssertionError(f"the server's status has no in_flight_steps: {status}")
        for sim, (name, got) in status.get("in_flight_steps", {}).items():
            if name and got < early and (hold is None or hold(sim, name)):
                return int(sim), name
        if run.proc is not None and run.proc.poll() is not None:
            raise AssertionError(
                f"the run ended before a client was caught early in a "
                f"simulation; {run.diagnostics()}"
            )
        time.sleep(0.005)
    raise AssertionError(f"no client caught early in a simulation in {timeout:g} s")


def client_pids(run_dir: Path, name: str) -> list[int]:
    """The client processes (every MPI rank) of launcher job ``name`` of this run."""
    want = {"BREED_RUN_DIR": str(run_dir.resolve()), "BREED_JOB_ID": name}
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # the ranks themselves, not mpiexec/srun (whose argv names the heat client too)
        if (
            b"breed.problems.heat2d_client" in argv
            and Path(argv[0].decode()).name.startswith("python")
            and procs.carries(int(entry.name), want)
        ):
            out.append(int(entry.name))
    return out


def stop_ranks(run: ClusterRun, steps: int) -> Callable[[str, str], bool]:
    """A ``hold`` for :func:`catch_early`: SIGSTOP the job's ranks, keep the catch if, once
    what they had sent has arrived, the server still holds only part of the simulation."""

    def hold(sim: str, name: str) -> bool:
        pids = client_pids(run.dir, name)
        if not pids:
            return False
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.6)  # what the ranks had sent arrives
        now = in_flight(run, sim)
        if now is not None and now[0] == name and now[1] < steps:
            return True
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        return False

    return hold


def log_time(stamp: str) -> float:
    """A ``logging`` asctime (local time, as breed's logs write it) as a Unix time."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def rerun_reason(run: ClusterRun, sim: int, name: str, job_id: str) -> tuple[str, float]:
    """How the server learnt that ``sim`` must run again after job ``name`` was cancelled:
    the client's own ABORT on its way out (the SIGTERM of the cancel), or the launcher's report
    of the job it saw end. Returns (which, when the launcher saw the job end: a Unix time read
    from ``launcher.log``)."""
    server_log = (run.dir / "logs" / "server.log").read_text()
    launcher_log = (run.dir / "logs" / "launcher.log").read_text()
    how = ""
    if re.search(rf"job {name} failed; simulations \[[\d, ]*\b{sim}\b", server_log):
        how = "launcher"
    elif re.search(rf"simulation {sim} aborted by its client -> retry", server_log):
        how = "client abort"
    assert how, f"simulation {sim} was not handed out again: {server_log[-2000:]}"
    noticed = re.search(
        rf"^(\S+ \S+) .*client job {name} \({job_id}\) (cancelled|failed)",
        launcher_log,
        re.MULTILINE,
    )
    assert noticed, f"the launcher never saw job {job_id} end: {launcher_log[-2000:]}"
    return how, log_time(noticed[1])


def latencies(run: ClusterRun) -> dict[str, list[float]]:
    """Per job: seconds from the end of its submission (``jobs.csv`` submit_time, taken when
    sbatch/oarsub returned) to its client's ASSIGN (``samples.csv`` assign_time) and first step
    (start_time). Only jobs that ran exactly one simulation (``persistent: false``) count."""
    by_job: dict[str, list[dict[str, str]]] = {}
    for row in run.samples():
        by_job.setdefault(row["job_id"], []).append(row)
    out: dict[str, list[float]] = {"assign": [], "first_step": []}
    for job in run.jobs():
        rows = by_job.get(job["job_id"], [])
        if len(rows) != 1 or not rows[0]["start_time"]:
            continue
        submit = float(job["submit_time"])
        out["assign"].append(float(rows[0]["assign_time"]) - submit)
        out["first_step"].append(float(rows[0]["start_time"]) - submit)
    return out


def polling_overhead(
    timings: dict[str, list[float]], commands: list[str], jobs: int
) -> dict[str, float]:
    """Scheduler status commands of one run: calls and seconds in all, and per client job."""
    calls = sum(len(timings.get(c, [])) for c in commands)
    seconds = sum(sum(timings.get(c, [])) for c in commands)
    return {
        "calls": calls,
        "seconds": round(seconds, 3),
        "jobs": jobs,
        "calls_per_job": round(calls / max(jobs, 1), 2),
        "seconds_per_job": round(seconds / max(jobs, 1), 4),
    }


def report(name: str, values: dict[str, Any]) -> None:
    """Print a measurement (shown with ``pytest -s`` or ``-rA``) and append it to
    ``$BREED_CLUSTER_TIMINGS`` when that names a file (JSON lines), for the closing note."""
    line = json.dumps({"test": name, **values}, sort_keys=True)
    print(line)
    path = os.environ.get("BREED_CLUSTER_TIMINGS")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    return {
        "n": len(s),
        "min": round(s[0], 3),
        "median": round(s[len(s) // 2], 3),
        "max": round(s[-1], 3),
    }


def copy_workflow(dest: Path) -> Path:
    """The study pipeline laid out as at the repository root (tests/test_workflow.py), so the
    checkout's results/ is never touched."""
    shutil.copy2(ROOT / "Snakefile", dest / "Snakefile")
    for name in ("workflow", "config", "profiles"):
        shutil.copytree(
            ROOT / name, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("slurm", "oar"):
        os.symlink(os.readlink(ROOT / name), dest / name)
    os.symlink(ROOT / "src", dest / "src")
    return dest


def _main(argv: list[str]) -> int:
    """``breed`` itself (``breed.cli.main``), keeping the backend ``breed run`` builds so its
    command timings can be written to ``$BREED_TEST_TIMINGS`` when the run ends."""
    import breed.launcher.runner
    from breed.cli import main

    made = []
    check_runtime = breed.launcher.runner.check_runtime

    def keep(cfg: dict[str, Any]) -> Backend:
        backend = check_runtime(cfg)
        made.append(backend)
        return backend

    breed.launcher.runner.check_runtime = keep
    try:
        return main(argv)
    finally:
        path = os.environ.get("BREED_TEST_TIMINGS")
        if path and made:
            Path(path).write_text(json.dumps(getattr(made[-1], "timings", {})))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
