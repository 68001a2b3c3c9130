"""The run directory: the names of its files, and how it is created, locked and resumed.

A run directory holds exactly one run. ``breed run`` creates it fresh (an existing non-empty
directory is refused, or moved aside with ``--overwrite``: nothing is ever deleted), and
``breed run --resume DIR`` continues it. Whoever works on it holds an exclusive lock for its
whole life: the launcher ``DIR/launcher.lock``, the server ``DIR/server.lock``. A second
launcher (a run or a resume) or a second server on the same directory is refused with one line
naming the holder's pid and host, instead of two of them writing checkpoints, metrics and jobs
over each other. The locks are ``flock`` locks: the kernel releases them when the holder dies,
however it dies, so a stale lock never blocks a resume (on NFS, Linux maps them to POSIX locks,
which the NFS lock manager shares between hosts).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from breed.config import ConfigError
from breed.fsio import atomic_write_json, partial_prefix

CONFIG = "config.resolved.yaml"
PROVENANCE = "provenance.json"
SERVER_INFO = "server.json"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.csv"
PER_SAMPLE = "per_sample_loss.csv"
JOBS = "jobs.csv"
MODEL = "model.pt"
VALIDATION = "validation.npz"
LOGS = "logs"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "checkpoint.pt"
LAUNCHER_LOCK = "launcher.lock"
SERVER_LOCK = "server.lock"
SERVER_LOG = "server.log"  # in LOGS
LAUNCHER_LOG = "launcher.log"  # in LOGS
TENSORBOARD = "tensorboard"
TRAJECTORIES = "trajectories.npz"  # a collection run's whole trajectories
RESULTS = (SUMMARY, METRICS, SAMPLES, PER_SAMPLE)  # what a finished training run holds


@dataclass(frozen=True)
class ServerInfo:
    """``server.json``: where a running server listens. The server writes it once its sockets
    are bound; the launcher (and a resumed launcher, and the fault tests) read it."""

    control: str  # the control socket, tcp://host:port
    data: list[str]  # one data socket per server rank
    pid: int
    ranks: int
    host: str

    def write(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / SERVER_INFO, asdict(self))

    @classmethod
    def read(cls, run_dir: Path) -> ServerInfo:
        """The server's record; OSError if absent, ValueError if it is not one."""
        raw = json.loads((Path(run_dir) / SERVER_INFO).read_text())
        try:
            return cls(
                control=str(raw["control"]),
                data=[str(a) for a in raw["data"]],
                pid=int(raw["pid"]),
                ranks=int(raw["ranks"]),
                host=str(raw["host"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{SERVER_INFO}: not a server record ({exc})") from None


class RunDirError(ConfigError):
    """The run directory cannot be used as asked (exit 2, nothing changed)."""


def remove_partial_writes(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Delete what killed atomic writes of ``names`` left in ``folder`` (the caller holds the
    lock that makes it the only writer); returns the files removed."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    prefixes = tuple(partial_prefix(n) for n in names)
    for entry in entries:
        if entry.name.startswith(prefixes) and entry.is_file():
            try:
                entry.unlink()
                removed.append(entry)
            except OSError:
                pass
    return removed


class RunLock:
    """An exclusive lock on ``DIR/<name>`` for as long as this process holds it."""

    def __init__(self, run_dir: Path, name: str, role: str) -> None:
        self.path = Path(run_dir) / name
        self.role = role
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds (or last held) the lock, as written by them."""
        try:
            info = json.loads(self.path.read_text())
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
            return f"{info['role']} (pid {info['pid']} on host {info['host']}, since {since})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self, record: bool = True) -> RunLock:
        """Take the lock (:class:`RunDirError` naming the holder if someone has it); with
        ``record``, write who we are into the lock file for the next one to read."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"{self.path.parent}: cannot lock it: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(f"{self.path.parent} is in use by {self.holder()}") from None
        self._fd = fd
        if record:
            self.record()
        return self

    def record(self) -> None:
        """Write who holds the lock (pid, host, since) into its file."""
        assert self._fd is not None, "record() without the lock"
        info = {
            "role": self.role,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def held_elsewhere(self) -> bool:
        """True if another process holds the lock now (checked without taking it for good)."""
        if not self.path.exists():
            return False
        try:
            self.acquire(record=False)
        except RunDirError:
            return True
        self.release()
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe(run_dir: Path) -> str:
    """What a non-empty directory holds, for the refusal message."""
    if (run_dir / CONFIG).exists():
        state = "a finished run" if (run_dir / SUMMARY).exists() else "a run"
        return f"holds {state}"
    return "is not empty"


def move_aside(run_dir: Path) -> Path:
    """Rename ``run_dir`` to ``run_dir.old-<time>`` (never delete a user's files)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}" + (f"-{k}" if k else ""))
        if not target.exists():
            run_dir.rename(target)
            return target
    raise RunDirError(f"--overwrite: cannot find a free name to move {run_dir} aside")


def create(run_dir: Path, overwrite: bool = False) -> Path | None:
    """Make a fresh, empty run directory; returns where an old one was moved (``--overwrite``).

    Raises :class:`RunDirError` for a directory that is not empty (without ``overwrite``), in
    use by a launcher or server, a path that is a file or lies under one, or one that cannot be
    made.
    """
    run_dir = Path(run_dir)
    moved = None
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--output: {run_dir} exists and is not a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            finished = (run_dir / SUMMARY).exists()
            resume = (
                ""
                if finished or not (run_dir / CONFIG).exists()
                else f"continue it with `breed run --resume {run_dir}`, "
            )
            raise RunDirError(
                f"--output: {run_dir} {describe(run_dir)}; {resume}move it aside "
                "with --overwrite, or choose another --output"
            )
        mine = RunLock(run_dir, LAUNCHER_LOCK, "breed run").acquire(record=False)
        try:  # no launcher may start meanwhile
            server = RunLock(run_dir, SERVER_LOCK, "breed server")
            if server.held_elsewhere():
                raise RunDirError(f"--overwrite: {run_dir} is in use by {server.holder()}")
            try:
                moved = move_aside(run_dir)
            except OSError as exc:
                raise RunDirError(
                    f"--overwrite: cannot move {run_dir} aside: {exc.strerror}"
                ) from None
        finally:
            mine.release()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LOGS).mkdir(exist_ok=True)
        (run_dir / CHECKPOINTS).mkdir(exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(
            f"--output: {run_dir}: a part of this path is a file, not a directory"
        ) from None
    except OSError as exc:
        raise RunDirError(f"--output: cannot create {run_dir}: {exc.strerror}") from None
    return moved


def check_resumable(run_dir: Path) -> None:
    """Refuse ``--resume`` of something that is not an unfinished run directory."""
    if not run_dir.is_dir() or not (run_dir / CONFIG).is_file():
        raise RunDirError(f"--resume: {run_dir} is not a run directory (no {CONFIG})")
    if (run_dir / SUMMARY).exists():
        raise RunDirError(
            f"--resume: {run_dir} is a finished run ({SUMMARY} exists); nothing to resume"
        )
