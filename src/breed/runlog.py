"""Run-directory writers: metrics, per-sample losses, simulation table, provenance, checkpoints.

Everything a figure needs is written here as plain JSON lines / CSV, so figures are a pure
function of the run directory (no re-training to redraw).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from breed.fsio import atomic_write_bytes

log = logging.getLogger("breed.runlog")
PER_SAMPLE_COLUMNS = [
    "iteration",
    "sim_id",
    "step",
    "sample_loss",
    "batch_loss",
    "delta",
    "Q",
    "uniform",
]
PACKAGES = ["breed", "numpy", "scipy", "torch", "pyzmq", "mpi4py", "pandas", "snakemake"]


def git_revision(start: Path | None = None) -> str | None:
    """Revision of the breed source tree (``+dirty`` when it has local changes)."""
    where = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty.strip() else "")


def provenance(seed: int, subcommand: str, argv: list[str]) -> dict[str, Any]:
    """What ``provenance.json`` records of a run: seed, the command line as typed (``breed``,
    the sub-command, its arguments), revision, versions, host, start time."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "seed": seed,
        "command": ["breed", subcommand, *argv],
        "git_revision": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "start_time": time.time(),
        "versions": versions,
    }


class AppendFile:
    """An append-only log file whose writes may fail (a full disk) without raising or losing
    rows: bytes not yet written are kept, up to ``MAX_PENDING``, and written before the next
    rows once the disk takes them again. Each row goes out in one ``write`` call (no torn
    rows from buffering); rows past the limit are counted as dropped and logged."""

    MAX_PENDING = 64 << 20

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._pending = bytearray()
        self.failures = self.dropped = 0

    def write(self, data: bytes) -> bool:
        """Append ``data`` after whatever is still pending; False if some is still pending."""
        if len(self._pending) + len(data) > self.MAX_PENDING:
            self.dropped += 1
        else:
            self._pending += data
        while self._pending:
            try:
                n = os.write(self._fd, self._pending)
            except OSError as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 1000 == 0:
                    log.error(
                        "%s: %s; %d bytes kept to write later",
                        self.path.name,
                        exc.strerror or exc,
                        len(self._pending),
                    )
                return False
            del self._pending[:n]
        return True

    def close(self) -> None:
        self.write(b"")
        os.close(self._fd)


class JsonLines:
    """Append-only JSON-lines file, one row per write, so a crash loses at most one row."""

    def __init__(self, path: Path) -> None:
        self._file = AppendFile(path)

    def write(self, row: dict[str, Any]) -> None:
        self._file.write((json.dumps(row, default=float) + "\n").encode())

    def close(self) -> None:
        self._file.close()


class MetricsLog(JsonLines):
    """``metrics.jsonl`` rows, mirrored as TensorBoard scalars (``<kind>/<key>`` at the row's
    iteration) when a log directory is given."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        super().__init__(path)
        self._tb = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))

    def write(self, row: dict[str, Any]) -> None:
        super().write(row)
        if self._tb is not None:
            step, kind = int(row.get("iteration", 0)), row.get("kind", "metrics")
            for key, value in row.items():
                if (
                    key not in ("kind", "iteration")
                    and isinstance(value, int | float)
                    and not isinstance(value, bool)
                ):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        super().close()
        if self._tb is not None:
            self._tb.close()


class CsvLog:
    """Append-only CSV with a fixed header (written once); rows go out on :meth:`flush`."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self._file = AppendFile(path)
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf)
        if new:
            self._writer.writerow(columns)
            self.flush()

    def write_rows(self, rows: list[list[Any]]) -> None:
        self._writer.writerows(rows)
        self.flush()

    def flush(self) -> None:
        if self._buf.tell():
            self._file.write(self._buf.getvalue().encode())
            self._buf.seek(0)
            self._buf.truncate()

    def close(self) -> None:
        self.flush()
        self._file.close()


def write_table(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rewrite a whole CSV table atomically (the simulation table changes in place)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
