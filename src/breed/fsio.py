"""Atomic files: every file breed writes that a reader may see half-written (checkpoints,
models, validation sets, ``server.json``, rewritten logs) goes through a temporary file next to
it and a rename. One owner of the temporary names, so a server can remove what a killed write
left behind (``breed.rundir.remove_partial_writes``)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def partial_prefix(name: str) -> str:
    """Prefix of the temporary files an atomic write of ``name`` goes through
    (:func:`atomic_write`); a write killed half-way leaves one behind."""
    return f".{name}."


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(file)`` into a temp file next to ``path``, then rename: a kill or a full disk
    mid-write never leaves a torn file (the one atomic write of the package: checkpoints,
    models, validation sets, logs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=partial_prefix(path.name))
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
