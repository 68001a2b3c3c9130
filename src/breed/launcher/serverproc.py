"""The server process as the launcher sees it: started as a child (``breed server``, under
``mpiexec`` for several ranks) or found alive again on ``--resume``; ready when it wrote
``server.json``; its one-line reason when it exits early, read from its log."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from breed import procs, rundir
from breed.config import ConfigError
from breed.launcher.launcher import LauncherError, ServerLink
from breed.launcher.mpi import find_mpiexec

log = logging.getLogger("breed.run")


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
