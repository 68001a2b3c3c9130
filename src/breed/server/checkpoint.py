"""Server checkpoints: a file format that cannot run code when loaded, and writes that may fail.

Format. A checkpoint is ``torch.save`` of a tree of dicts, lists, tuples, strings, numbers,
bytes and tensors only, read back with ``torch.load(weights_only=True)``: PyTorch's restricted
unpickler refuses every other object, so a crafted ``checkpoint.pt`` (a pickle that calls
``os.system`` when loaded, say) is refused with one line instead of running. numpy arrays are
stored as tensors under a tag (:func:`to_plain` / :func:`from_plain`), numpy scalars as Python
numbers.

Failure. A checkpoint write that fails (disk full, too many open files, the folder replaced or
gone) must not kill the server, or each restart from that checkpoint dies the same way:
:class:`Checkpointer` logs it, keeps the previous checkpoint (writes go through a temporary file
and a rename, :func:`breed.fsio.atomic_write_bytes`), retries with a growing delay, and says so
in the server's status (the launcher shows it on the console) and in ``summary.json``.
"""

from __future__ import annotations

import io
import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from breed.fsio import atomic_write_bytes

log = logging.getLogger("breed.server")
NDARRAY = "__ndarray__"
RETRY_FIRST_S, RETRY_MAX_S = 1.0, 60.0


class CheckpointError(ValueError):
    """A checkpoint that cannot or must not be loaded (one line)."""


def to_plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tagged tensors and numpy scalars as Python numbers."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"checkpoint: cannot store a numpy array of dtype {obj.dtype}")
        return {NDARRAY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {key: to_plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_plain(value) for value in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        if len(obj) == 1 and NDARRAY in obj:
            return obj[NDARRAY].numpy()
        return {key: from_plain(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(from_plain(value) for value in obj)
    return obj


def dumps(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(to_plain(state), buf)
    return buf.getvalue()


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint; :class:`CheckpointError` for anything that is not one of ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        what = next((x.strip() for x in first if "GLOBAL" in x or "Unsupported" in x), "")
        raise CheckpointError(
            f"checkpoint {path}: refused, it holds objects other than "
            f"tensors and plain data{f' ({what})' if what else ''}; a crafted "
            "or foreign file is never loaded"
        ) from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"checkpoint {path}: unreadable ({reason})") from None
    if not isinstance(state, dict) or "trainer" not in state:
        raise CheckpointError(f"checkpoint {path}: not a breed server checkpoint")
    return from_plain(state)


class Checkpointer:
    """Writes the server's checkpoints; a failed write is retried, never fatal."""

    def __init__(self, path: Path, interval: int) -> None:
        self.path = path
        self.interval = interval
        self.failures = 0  # writes that failed, over the server's life
        self.last_error: str | None = None
        self.last_iteration: int | None = None  # of the newest checkpoint on disk
        self.pending = False  # the last write failed: retry once the delay has passed
        self._delay = RETRY_FIRST_S
        self._retry_at = 0.0

    def due(self, iteration: int) -> bool:
        return iteration % self.interval == 0 or (
            self.pending and time.monotonic() >= self._retry_at
        )

    def write(self, state: Callable[[], dict[str, Any]], iteration: int) -> bool:
        """Write ``state()`` as the checkpoint of ``iteration``; False if it failed."""
        try:
            atomic_write_bytes(self.path, dumps(state()))
        except OSError as exc:
            self.failures += 1
            self.pending = True
            self.last_error = exc.strerror or str(exc)
            self._retry_at = time.monotonic() + self._delay
            log.error(
                "checkpoint at iteration %d not written (%s); keeping %s, retrying in %g s",
                iteration,
                self.last_error,
                "none"
                if self.last_iteration is None
                else f"the one of iteration {self.last_iteration}",
                self._delay,
            )
            self._delay = min(2 * self._delay, RETRY_MAX_S)
            return False
        if self.pending:
            log.info(
                "checkpoint written again at iteration %d after %d failures",
                iteration,
                self.failures,
            )
        self.pending, self._delay = False, RETRY_FIRST_S
        self.last_iteration = iteration
        return True

    def warning(self) -> str | None:
        """One line for the console while writes are failing, else None."""
        if not self.pending:
            return None
        kept = (
            "no checkpoint yet"
            if self.last_iteration is None
            else f"the checkpoint of iteration {self.last_iteration} is kept"
        )
        return (
            f"checkpoint writes are failing ({self.failures} so far: {self.last_error}); "
            f"{kept}, retrying"
        )

    def summary(self) -> dict[str, Any]:
        return {
            "failures": self.failures,
            "last_error": self.last_error,
            "last_iteration": self.last_iteration,
        }
