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
import re
import sys
import time
from pathlib import Path
from typing import Any

from breed import cores, rundir
from breed.cli import OneLineParser, describe
from breed.config import ConfigError, dump_config, load_config, parse_overrides
from breed.fsio import atomic_write_json
from breed.launcher import make_backend
from breed.launcher.backend import Backend
from breed.launcher.console import RUN_FAILED, Progress, final_line
from breed.launcher.launcher import (
    Launcher,
    LauncherError,
    ServerDied,
    ServerLink,
    ServerStatus,
    read_jobs,
)
from breed.launcher.mpi import find_mpiexec
from breed.launcher.serverproc import ServerProcess, last_error_line
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
PYTHON = "{python}"  # in a client command: the interpreter breed runs in


def check_runtime(cfg: dict[str, Any]) -> Backend:
    """Checks the schema cannot express, before anything starts (ConfigError naming the key);
    returns the run's backend."""
    from breed.learning.normalisation import Normalisation
    from breed.netaddr import resolve_host
    from breed.problems import check_command, problem_of
    from breed.server.datapath import Batching, StepSpec

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
    try:  # the server plans the same way (breed.server.receiver)
        Batching.plan(
            StepSpec.of(problem), lc["batch_steps"], lc["batch_linger"], lc["max_message_bytes"]
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        # clients off the trainer's cores (a one-rank server on this host binds the rest)
        here = lc["backend"] == "local" and lc["server_ranks"] == 1
        split = cores.plan(cfg) if here else None
        backend = make_backend(
            lc["backend"],
            {
                **lc.get(lc["backend"], {}),
                "mpiexec": lc["mpiexec"],
                "cpus": sorted(split.others) if split else None,
            },
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
        if cfg["training"]["mode"] != "collect":  # a collection run is a step of its run
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
