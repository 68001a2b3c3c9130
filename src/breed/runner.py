"""``breed run CONFIG``: validate, prepare the run directory, start the server, launch clients.

Exit codes: 0 success; 2 invalid configuration or arguments (nothing started); 1 the run failed
(one-line reason on stderr, details in ``DIR/logs``).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from breed.config import ConfigError, dump_config, load_config
from breed.launcher import make_backend
from breed.launcher.launcher import Launcher, LauncherError, ServerLink
from breed.launcher.local import find_mpiexec
from breed.protocol import token_from_hex
from breed.runlog import atomic_write_json, provenance, write_table

log = logging.getLogger("breed.run")
JOB_COLUMNS = ["name", "job_id", "state", "submit_time", "end_time", "exit_code", "reason"]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def prepare_run_dir(cfg: dict[str, Any], run_dir: Path, argv: list[str]) -> str:
    """Write resolved config, provenance and a fresh 0600 token; returns the token (hex)."""
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    cfg = {**cfg, "output": str(run_dir)}
    dump_config(cfg, run_dir / "config.resolved.yaml")
    atomic_write_json(run_dir / "provenance.json", provenance(cfg["seed"], ["breed", *argv]))
    token = secrets.token_hex(32)
    fd = os.open(run_dir / "token", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def start_server(cfg: dict[str, Any], run_dir: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "breed.server", "--run-dir", str(run_dir)]
    if resume:
        cmd.append("--resume")
    ranks = cfg["launcher"]["server_ranks"]
    if ranks > 1:
        cmd = [find_mpiexec(cfg["launcher"]["mpiexec"]), "-n", str(ranks), *cmd]
    (run_dir / "server.json").unlink(missing_ok=True)
    with open(run_dir / "logs" / "server.log", "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_server(proc: subprocess.Popen, run_dir: Path, timeout: float = 600) -> dict:
    path = run_dir / "server.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return yaml.safe_load(path.read_text())
        if proc.poll() is not None:
            raise LauncherError(f"the server exited with code {proc.returncode} before "
                                f"listening; see {run_dir / 'logs' / 'server.log'}")
        time.sleep(0.05)
    raise LauncherError(f"the server did not start within {timeout:g} s")


class Progress:
    """Console progress bar over finished simulations (tqdm), fed by server pongs."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="sim", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, status: dict[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.total = status.get("target", self.bar.total)
        self.bar.n = status.get("sims_done", 0)
        self.bar.set_postfix(it=status.get("iteration", 0), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(cfg: dict[str, Any], run_dir: Path, argv: list[str], resume: bool = False) -> int:
    if resume:
        token = (run_dir / "token").read_text().strip()
    else:
        token = prepare_run_dir(cfg, run_dir, argv)
    logging.basicConfig(filename=run_dir / "logs" / "launcher.log", level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lc = cfg["launcher"]
    options = {**lc.get(lc["backend"], {}), "mpiexec": lc["mpiexec"], "run_dir": str(run_dir)}
    backend = make_backend(lc["backend"], options)
    server = start_server(cfg, run_dir, resume)
    launcher = None
    progress = Progress(cfg["study"]["simulations"], cfg["training"]["progress"])
    try:
        endpoints = wait_for_server(server, run_dir)
        env = {"BREED_SERVER": endpoints["control"], "BREED_TOKEN": token}
        launcher = Launcher(cfg, run_dir, backend, env, lambda: server.poll() is None)
        link = ServerLink(endpoints["control"], token_from_hex(token), timeout=5.0)
        try:
            status = launcher.run(link, progress)
            launcher.shutdown()
            link.ping({"shutdown": True})
        finally:
            link.close()
        code = server.wait(timeout=120)
        if code != 0:
            raise LauncherError(f"the server exited with code {code}; see logs/server.log")
        if status.get("sims_done", 0) < status.get("target", 0):
            raise LauncherError(f"only {status['sims_done']} of {status['target']} "
                                "simulations finished")
        return 0
    except LauncherError as exc:
        print(f"breed run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("breed run: interrupted; resume with `breed run --resume "
              f"{run_dir}`", file=sys.stderr)
        return 130
    finally:
        progress.close()
        if launcher is not None:
            write_table(run_dir / "jobs.csv", launcher.job_rows(), JOB_COLUMNS)
            launcher.backend.close()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="breed run", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, help="run configuration (YAML)")
    parser.add_argument("--output", "-o", type=Path, help="run directory (default: output key)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set model.hidden=32")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR",
                        help="continue an interrupted run from its directory")
    args = parser.parse_args(argv)
    try:
        if args.resume is not None:
            cfg_path = args.resume / "config.resolved.yaml"
            if not cfg_path.exists():
                raise ConfigError(f"--resume: {args.resume} is not a run directory")
            cfg = load_config(cfg_path)
            return run(cfg, args.resume, argv, resume=True)
        if args.config is None:
            raise ConfigError("config: give a configuration file (or --resume RUN_DIR)")
        cfg = load_config(args.config, parse_overrides(args.set))
    except ConfigError as exc:
        print(f"breed run: {exc}", file=sys.stderr)
        return 2
    run_dir = args.output or Path(cfg["output"])
    return run(cfg, run_dir, argv)
