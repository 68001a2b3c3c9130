"""``breed run CONFIG``: validate, prepare the run directory, start the server, launch clients.

Fault tolerance (``launcher.on_server_death``): when the server process dies or stops answering
for ``launcher.ping_timeout`` s, the client jobs are cancelled and the server is restarted from
its last checkpoint (``breed server --resume``), at most ``launcher.max_server_restarts`` times;
the simulations in flight at that checkpoint run again with the same parameters, and steps
already received are not taken twice (:mod:`breed.server.recovery`). Clients are cancelled rather than
kept: a kept client could stream a simulation id that the restarted server has handed out again
with other parameters (ids follow the sampler's hand-out order, which rewinds to the checkpoint).

``breed run --resume DIR`` does the same by hand after the launcher itself died: it cancels the
jobs listed in ``DIR/jobs.csv``, re-attaches to the server if it is still alive and answering,
otherwise restarts it from the checkpoint.

Exit codes: 0 success; 2 invalid configuration or arguments (nothing started); 1 the run failed
(one-line reason on stderr, details in ``DIR/logs``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from breed import procs, rundir
from breed.cli import OneLineParser, describe
from breed.config import ConfigError, dump_config, load_config, parse_overrides
from breed.fsio import atomic_write_json
from breed.launcher import make_backend
from breed.launcher.backend import Backend
from breed.launcher.launcher import (
    Launcher,
    LauncherError,
    ServerDied,
    ServerLink,
    ServerStatus,
    read_jobs,
)
from breed.launcher.mpi import find_mpiexec
from breed.protocol import token_from_hex
from breed.resources import check_resources
from breed.runlog import provenance
from breed.security import (
    ENV_CURVE,
    TOKEN_FILE,
    check_private,
    curve_available,
    ensure_curve_keys,
    new_token,
)

log = logging.getLogger("breed.run")
RUN_FAILED = "run failed: "  # launcher.log's line of why a run failed (breed show reads it)
PYTHON = "{python}"  # in a client command: the interpreter breed runs in


def check_runtime(cfg: dict[str, Any]) -> Backend:
    """Checks the schema cannot express, before anything starts (ConfigError naming the key);
    returns the run's backend."""
    from breed.learning.normalisation import Normalisation
    from breed.netaddr import resolve_host
    from breed.problems import check_command, problem_of
    from breed.server.datapath import StepSpec

    lc, problem = cfg["launcher"], problem_of(cfg)
    check_command(problem)
    if lc["server_ranks"] > 1 and not Normalisation.from_problem(problem).frozen:
        raise ConfigError(
            "launcher.server_ranks: a field without a declared range has its "
            "scale estimated from the first samples, which needs one server rank; "
            "declare problem.fields.N.range"
        )
    if cfg["model"]["factory"]:  # a user's model: built once here so a bad one stops the run
        from breed.learning.trainer import build_model

        try:
            build_model(
                {**cfg["model"], "n_inputs": problem.dim + 1, "n_outputs": problem.sample_size}
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    device = str(cfg["model"]["device"]).strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"model.device: {device!r} is not auto, cpu, cuda or cuda:N")
    try:
        resolve_host(lc["host"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    needs_mpi = lc["server_ranks"] > 1 or (problem.client.ranks > 1 and lc["backend"] == "local")
    if needs_mpi:
        try:
            find_mpiexec(lc["mpiexec"])
        except FileNotFoundError as exc:
            raise ConfigError(str(exc)) from None
    if cfg["training"]["tensorboard"] and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "training.tensorboard: needs the tensorboard package (pip install 'breed[tensorboard]')"
        )
    if cfg["validation"]["file"] is not None:
        from breed.learning.validation import ValidationFileError, check_validation_file

        try:
            check_validation_file(cfg["validation"]["file"], cfg)
        except ValidationFileError as exc:
            raise ConfigError(f"validation.file: {exc}") from None
    if lc["curve"] and not curve_available():
        raise ConfigError("launcher.curve: this libzmq was built without CURVE support")
    block = StepSpec.of(problem).max_block_bytes
    if lc["max_message_bytes"] is not None and lc["max_message_bytes"] < block + 1024:
        raise ConfigError(
            f"launcher.max_message_bytes: {lc['max_message_bytes']} is below "
            f"the largest field ({block} bytes) + 1024"
        )
    try:
        backend = make_backend(
            lc["backend"], {**lc.get(lc["backend"], {}), "mpiexec": lc["mpiexec"]}
        )
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    from breed.launcher.cluster import missing_submit_command

    missing = missing_submit_command(lc["backend"])  # at once, not at the first submit
    if missing is not None:
        raise ConfigError(f"launcher.backend: {missing}")
    return backend


def record_resume(run_dir: Path, argv: list[str]) -> None:
    """Append this resume to ``provenance.json`` (command, revision, versions, host, time):
    a run resumed under other code says so. A provenance file that cannot be read is left
    alone (logged), never a reason to refuse the resume."""
    path = run_dir / rundir.PROVENANCE
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.warning("resume not recorded in %s: %s", path, exc)
        return
    now = provenance(record.get("seed", 0), "run", argv)
    now.pop("seed")
    record["resumes"] = [*record.get("resumes", []), now]
    atomic_write_json(path, record)


def prepare_run_dir(cfg: dict[str, Any], run_dir: Path, argv: list[str]) -> str:
    """Write resolved config, provenance, a fresh 0600 token (and CURVE keys) into a directory
    made by :func:`breed.rundir.create`; returns the token (hex)."""
    cfg = {**cfg, "output": str(run_dir)}
    dump_config(cfg, run_dir / rundir.CONFIG)
    atomic_write_json(run_dir / rundir.PROVENANCE, provenance(cfg["seed"], "run", argv))
    if cfg["launcher"]["curve"]:
        ensure_curve_keys(run_dir)
    return new_token(run_dir)


class ServerProcess:
    """The server, started by this launcher (a child) or found alive on ``--resume``."""

    def __init__(self, run_dir: Path, proc: subprocess.Popen[bytes] | None, pid: int) -> None:
        self.run_dir, self.proc, self.pid = run_dir, proc, pid

    @classmethod
    def start(cls, cfg: dict[str, Any], run_dir: Path, resume: bool) -> ServerProcess:
        cmd = [sys.executable, "-m", "breed.server.server", "--run-dir", str(run_dir)]
        if resume:
            cmd.append("--resume")
        ranks = cfg["launcher"]["server_ranks"]
        if ranks > 1:
            cmd = [find_mpiexec(cfg["launcher"]["mpiexec"]), "-n", str(ranks), *cmd]
        (run_dir / rundir.SERVER_INFO).unlink(missing_ok=True)
        env = {**os.environ, "BREED_RUN_DIR": str(run_dir.resolve())}
        env.pop("BREED_TOKEN", None)  # the server reads DIR/token
        with open(run_dir / rundir.LOGS / rundir.SERVER_LOG, "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return cls(run_dir, proc, proc.pid)

    @classmethod
    def attach(
        cls, run_dir: Path, token: bytes, curve: bytes | None, timeout: float
    ) -> ServerProcess | None:
        """The server of ``server.json`` if it is still this run's and answers a ping."""
        try:
            info = rundir.ServerInfo.read(run_dir)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        pid = info.pid
        if not procs.carries(pid, {"BREED_RUN_DIR": str(run_dir.resolve())}):
            return None  # gone, or its pid reused by a process of another run
        server = cls(run_dir, None, pid)
        link = ServerLink(info.control, token, timeout, curve)
        try:
            pong = link.ping({})
        finally:
            link.close()
        if pong is None:
            log.warning("server %d of this run is alive but silent: killed", pid)
            server.kill()
            return None
        return server

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return procs.alive(self.pid)

    def wait_ready(self, timeout: float = 600) -> rundir.ServerInfo:
        path = self.run_dir / rundir.SERVER_INFO
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                return rundir.ServerInfo.read(self.run_dir)
            if not self.alive():
                log_path = self.run_dir / rundir.LOGS / rundir.SERVER_LOG
                reason = last_error_line(log_path, "breed server: ")
                if reason and self.exit_code() == 2:  # refused: a bad input, nothing started
                    raise ConfigError(reason)
                raise LauncherError(
                    f"the server exited before listening: "
                    f"{reason or 'no reason given'}; see {log_path}"
                )
            time.sleep(0.05)
        raise LauncherError(f"the server did not start within {timeout:g} s")

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def wait(self, timeout: float) -> int:
        """Exit code (a server found on resume is not our child: 0 iff it wrote summary.json)."""
        if self.proc is not None:
            return self.proc.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"server {self.pid}", timeout)
            time.sleep(0.1)
        return 0 if (self.run_dir / rundir.SUMMARY).exists() else 1

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid if self.proc is not None else os.getpgid(self.pid), sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        try:
            self.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log.error("server %d did not die after SIGKILL", self.pid)

    def stop(self) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class Progress:
    """The console's story of a run, fed by server pongs: a progress bar over finished
    simulations (tqdm) labelled with the server's phase, one line per phase change and per
    Breed resampling, the server's warnings when they start and end."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.warnings: dict[str, str] = {}  # shown on the console, by topic
        self.phase: str | None = None
        self.resamplings: int | None = None  # None: not heard yet (a resume starts later)
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="sim", file=sys.stderr, dynamic_ncols=True)

    def say(self, text: str) -> None:
        """A warning: on the console in any case, and in launcher.log."""
        log.warning(text)
        if self.bar is not None:
            self.bar.write(f"breed run: {text}", file=sys.stderr)
        else:
            print(f"breed run: {text}", file=sys.stderr)

    def tell(self, text: str) -> None:
        """A line of the run's story: above the bar on an interactive console; with the bar
        off (``training.progress: false``: scripts, Snakemake, tests) in launcher.log only,
        so stderr holds nothing but warnings, errors and the final line."""
        log.info(text)
        if self.bar is not None:
            self.bar.write(f"breed run: {text}", file=sys.stderr)

    def __call__(self, status: ServerStatus) -> None:
        """Show the server's warnings once when they start and once when they end (a failing
        checkpoint write, say), and the progress."""
        now = status.get("warnings") or {}
        for topic, text in now.items():
            if topic not in self.warnings:
                self.say(f"warning: {text}")
        for topic in set(self.warnings) - set(now):
            self.say(f"resolved: {topic} ({self.warnings[topic].split(';')[0]})")
        self.warnings = dict(now)
        phase = status.get("phase")
        if phase is not None and phase != self.phase:
            self.phase = phase
            self.tell(f"{phase} (iteration {status.get('iteration', 0)})")
        self._resampled(status)
        if self.bar is None:
            return
        self.bar.total = status.get("target", self.bar.total)
        self.bar.n = status.get("sims_done", 0)
        if phase is not None:
            self.bar.set_description(phase, refresh=False)
        self.bar.set_postfix(it=status.get("iteration", 0), refresh=False)
        self.bar.refresh()

    def _resampled(self, status: ServerStatus) -> None:
        """One line per resampling the server made since the last pong (the last one's
        numbers; pongs are a second apart, Breed resamples every P iterations)."""
        count, last = status.get("resamplings", 0), status.get("last_resampling")
        if self.resamplings is not None and count > self.resamplings and last:
            more = count - self.resamplings
            self.tell(
                f"Breed resampling {last.get('generation', count)} at iteration "
                f"{last.get('iteration', '?')}: {last.get('K', 0)} pending λ redrawn, "
                f"r = {last.get('r', float('nan')):.2f}, "
                f"{last.get('proposal', 0)} from the proposal"
                + (f" ({more - 1} more since the last report)" if more > 1 else "")
            )
        self.resamplings = count

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def last_error_line(path: Path, prefix: str) -> str | None:
    """The last line of a log that starts with ``prefix`` (a one-line error), without it;
    failing that, the exception line a traceback ends with (a crash, not a refusal)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 65536))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    hits = [x[len(prefix) :] for x in lines if x.startswith(prefix)]
    if hits:
        return hits[-1]
    crash = [i for i, x in enumerate(lines) if x.startswith("Traceback (most recent call last)")]
    if crash:
        tail = [x for x in lines[crash[-1] + 1 :] if x and not x[0].isspace()]
        return tail[0].strip() if tail else None
    return None


def final_line(run_dir: Path, seconds: float) -> str:
    """The console's last line of a finished run: where the results are, the final
    validation error (summary.json, the file that marks a run finished) and ``seconds``, the
    launcher's wall time (the server's own starts after its validation set)."""
    try:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    except (OSError, ValueError):
        return f"finished; results in {run_dir}"
    val = summary.get("final_validation") or {}
    error = (
        f"validation MSE {val['val_mse']:.3g} (p99 {val.get('traj_err_p99', float('nan')):.3g})"
        if isinstance(val.get("val_mse"), int | float)
        else "no validation"
    )
    return (
        f"finished in {seconds:.1f} s: "
        f"{summary.get('sims_done')} simulations, {summary.get('iterations')} iterations, "
        f"{error}; results in {run_dir}"
    )


def client_env(
    endpoints: rundir.ServerInfo, token: str, curve: bytes | None, run_dir: Path
) -> dict[str, str]:
    """What a client job needs, through its environment only (never its command line)."""
    env = {
        "BREED_SERVER": endpoints.control,
        "BREED_TOKEN": token,
        "BREED_RUN_DIR": str(run_dir.resolve()),
    }
    if curve is not None:
        env[ENV_CURVE] = curve.decode()
    return env


def read_token(run_dir: Path) -> str:
    path = run_dir / TOKEN_FILE
    try:
        check_private(path)
        token = path.read_text().strip()
        token_from_hex(token)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--resume: {path}: {exc}") from None
    return token


def supervise(
    cfg: dict[str, Any],
    run_dir: Path,
    launcher: Launcher,
    server: ServerProcess,
    token: str,
    curve: bytes | None,
    progress: Progress,
) -> tuple[ServerStatus, ServerProcess]:
    """Launcher loop with server restarts (``launcher.on_server_death``)."""
    lc = cfg["launcher"]
    restarts = 0
    while True:
        endpoints = server.wait_ready()
        launcher.client_env = client_env(endpoints, token, curve, run_dir)
        launcher.server_alive = server.alive
        link = ServerLink(
            endpoints.control, token_from_hex(token), timeout=5.0, curve_serverkey=curve
        )
        try:
            status = launcher.run(link, progress)
            launcher.shutdown()
            link.ping({"shutdown": True})
            return status, server
        except ServerDied as exc:
            if lc["on_server_death"] == "fail":
                raise
            if restarts >= lc["max_server_restarts"]:
                raise LauncherError(
                    f"{exc}; gave up after {restarts} server restarts "
                    "(launcher.max_server_restarts)"
                ) from None
            restarts += 1
            log.warning(
                "%s: restarting it from its checkpoint (%d of %d)",
                exc,
                restarts,
                lc["max_server_restarts"],
            )
            print(
                f"breed run: {exc}; restarting it from its checkpoint ({restarts} of "
                f"{lc['max_server_restarts']})",
                file=sys.stderr,
            )
            server.kill()
            cancelled = launcher.cancel_all("server restart")
            log.info("cancelled %d client jobs of the dead server", len(cancelled))
            server = ServerProcess.start(cfg, run_dir, resume=True)
        finally:
            link.close()


def ensure_validation(cfg: dict[str, Any], run_dir: Path, progress: Progress) -> None:
    """A problem with its own client gets its validation set collected by that client, once
    (the heat preset's server makes its own in-process)."""
    from breed.problems import problem_of

    if cfg["validation"]["file"] is not None or cfg["training"]["mode"] == "collect":
        return
    problem, path = problem_of(cfg), run_dir / rundir.VALIDATION
    if path.exists():
        return
    if problem.name == "heat2d":  # the server solves them before it listens: say so
        progress.tell(
            f"making the validation set ({cfg['validation']['size']} trajectories of heat2d) "
            "before training starts"
        )
        return
    from breed.launcher.collection import collect_validation
    from breed.learning.validation import save_validation

    print(
        f"breed run: collecting the validation set ({cfg['validation']['size']} "
        f"simulations of {problem.name}) in {path}.collect",
        file=sys.stderr,
    )
    try:
        save_validation(collect_validation(cfg, path), path)
    except RuntimeError as exc:
        raise LauncherError(str(exc)) from None


def resolve_paths(cfg: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative files in the problem's client command (``examples/x/client.py``) as absolute
    paths, ``{python}`` as this interpreter: clients run in the run directory, on any node,
    and the resolved config says exactly what ran."""
    spec = cfg.get("problem")
    if not isinstance(spec, dict) or not isinstance(spec.get("client"), dict):
        return cfg
    cmd = spec["client"].get("command")
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not isinstance(cmd, list):
        return cfg
    out = [
        sys.executable
        if a == PYTHON
        else str((base / a).resolve())
        if isinstance(a, str) and not Path(a).is_absolute() and (base / a).is_file()
        else a
        for a in cmd
    ]
    return {**cfg, "problem": {**spec, "client": {**spec["client"], "command": out}}}


def run(
    cfg: dict[str, Any],
    run_dir: Path,
    argv: list[str],
    resume: bool = False,
    backend: Backend | None = None,
    jobs: list[dict[str, str]] | None = None,
) -> int:
    """Launch (or resume) the run in ``run_dir``, which the caller has created or checked and
    holds the launcher lock of."""
    # the launcher lock makes this process the only writer of its files
    rundir.remove_partial_writes(run_dir, (rundir.JOBS, rundir.PROVENANCE))
    try:
        if resume:
            token = read_token(run_dir)
            record_resume(run_dir, argv)
        else:
            token = prepare_run_dir(cfg, run_dir, argv)
    except OSError as exc:  # a full disk, say: nothing has started yet
        print(
            f"breed run: cannot write the run directory {run_dir}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    handler = logging.FileHandler(run_dir / rundir.LOGS / rundir.LAUNCHER_LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)  # one log per run directory (a collection run nests in a run)
    try:
        return _launch(cfg, run_dir, token, resume, backend, jobs)
    finally:
        root.removeHandler(handler)
        handler.close()


def _launch(
    cfg: dict[str, Any],
    run_dir: Path,
    token: str,
    resume: bool,
    backend: Backend | None,
    jobs: list[dict[str, str]] | None,
) -> int:
    t0 = time.monotonic()
    lc = cfg["launcher"]
    curve = ensure_curve_keys(run_dir) if lc["curve"] else None
    if backend is None:
        backend = check_runtime(cfg)
    backend.options["run_dir"] = str(run_dir)
    launcher = Launcher(cfg, run_dir, backend, {}, lambda: False)
    progress = Progress(cfg["study"]["simulations"], cfg["training"]["progress"])
    server: ServerProcess | None = None
    try:
        ensure_validation(cfg, run_dir, progress)
        if resume:
            launcher.adopt(jobs if jobs is not None else read_jobs(run_dir))
            server = ServerProcess.attach(run_dir, token_from_hex(token), curve, lc["ping_timeout"])
            log.info(
                "resume: %s",
                "re-attached to the running server"
                if server
                else "restarting the server from its checkpoint",
            )
        if server is None:
            server = ServerProcess.start(cfg, run_dir, resume=resume)
        status, server = supervise(cfg, run_dir, launcher, server, token, curve, progress)
        if status.get("failed"):
            raise LauncherError(status["failed"])
        code = server.wait(timeout=120)
        if code != 0:
            reason = last_error_line(run_dir / rundir.LOGS / rundir.SERVER_LOG, "breed server: ")
            raise LauncherError(
                f"the server exited with code {code}"
                f"{f': {reason}' if reason else ''}; see logs/server.log"
            )
        if status.get("sims_done", 0) < status.get("target", 0):
            raise LauncherError(
                f"only {status['sims_done']} of {status['target']} simulations finished"
            )
        progress.close()
        print(f"breed run: {final_line(run_dir, time.monotonic() - t0)}", file=sys.stderr)
        return 0
    except LauncherError as exc:  # in launcher.log too: `breed show` reads why a run failed
        log.error("%s%s", RUN_FAILED, exc)
        print(f"breed run: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # the server refused its inputs (a checkpoint, the lock)
        log.error("run refused: %s", exc)
        print(f"breed run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"breed run: interrupted; resume with `breed run --resume {run_dir}`", file=sys.stderr
        )
        return 130
    finally:
        progress.close()
        launcher.write_jobs()
        launcher.backend.close()
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog="breed run", description=describe("run"))
    parser.add_argument("config", nargs="?", type=Path, help="run configuration (YAML)")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        help="run directory (default: output key); must not exist or be empty",
    )
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set model.hidden=32 study.simulations=8 "
        "(several pairs, or --set repeated; put CONFIG before --set)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run from its directory",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="move an existing run directory aside (DIR.old-TIME) and start afresh",
    )
    args = parser.parse_args(argv)
    lock: rundir.RunLock | None = None
    try:
        if args.resume is not None:
            if args.config is not None or args.set or args.output or args.overwrite:
                raise ConfigError(
                    "--resume RUN_DIR takes no config, --set, --output or "
                    "--overwrite (the run keeps its own)"
                )
            run_dir = args.resume
            rundir.check_resumable(run_dir)
            # held from here on; named as ours only once the run directory proved sound, so
            # a refused resume changes no file
            lock = rundir.RunLock(run_dir, rundir.LAUNCHER_LOCK, "breed run")
            lock.acquire(record=False)
            rundir.check_resumable(run_dir)  # it may have finished while we waited for the lock
            cfg = load_config(run_dir / rundir.CONFIG)
            backend = check_runtime(cfg)
            read_token(run_dir)
            try:
                jobs = read_jobs(run_dir)
            except ValueError as exc:
                raise ConfigError(f"--resume: {exc}") from None
            lock.record()
            return run(cfg, run_dir, argv, resume=True, backend=backend, jobs=jobs)
        overrides = parse_overrides(args.set)  # first: a CONFIG after --set reads as a pair
        if args.config is None:
            raise ConfigError("config: give a configuration file (or --resume RUN_DIR)")
        cfg = resolve_paths(load_config(args.config, overrides), Path.cwd())
        backend = check_runtime(cfg)
        run_dir = args.output or Path(cfg["output"])
        check_resources(cfg, run_dir)
        moved = rundir.create(run_dir, overwrite=args.overwrite)
        lock = rundir.RunLock(run_dir, rundir.LAUNCHER_LOCK, "breed run").acquire()
        if moved is not None:
            print(f"breed run: moved the old {run_dir} aside to {moved}", file=sys.stderr)
        return run(cfg, run_dir, argv, backend=backend)
    except ConfigError as exc:
        print(f"breed run: {exc}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
