"""Run-directory writers: metrics, per-sample losses, simulation table, provenance, checkpoints.

Everything a figure needs is written here as plain JSON lines / CSV, so figures are a pure
function of the run directory (no re-training to redraw).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PER_SAMPLE_COLUMNS = ["iteration", "sim_id", "step", "sample_loss", "batch_loss", "delta", "Q",
                      "uniform"]
PACKAGES = ["breed", "numpy", "scipy", "torch", "pyzmq", "mpi4py", "pandas", "snakemake"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + rename, so a kill mid-write never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())


def git_revision(start: Path | None = None) -> str | None:
    """Revision of the breed source tree (``+dirty`` when it has local changes)."""
    where = start or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty.strip() else "")


def provenance(seed: int, argv: list[str] | None = None) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"seed": seed, "command": argv if argv is not None else sys.argv,
            "git_revision": git_revision(), "python": sys.version.split()[0],
            "platform": platform.platform(), "host": socket.gethostname(),
            "start_time": time.time(), "versions": versions}


class JsonLines:
    """Append-only JSON-lines file, flushed per row so a crash loses at most one row."""

    def __init__(self, path: Path) -> None:
        self._fh = open(path, "a", buffering=1)  # noqa: SIM115

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, default=float) + "\n")

    def close(self) -> None:
        self._fh.close()


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
                if key not in ("kind", "iteration") and isinstance(value, int | float) \
                        and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        super().close()
        if self._tb is not None:
            self._tb.close()


class CsvLog:
    """Append-only CSV with a fixed header (written once)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self._fh = open(path, "a", newline="")  # noqa: SIM115
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(columns)

    def write_rows(self, rows: list[list[Any]]) -> None:
        self._writer.writerows(rows)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def write_table(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rewrite a whole CSV table atomically (the simulation table changes in place)."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
