"""Launcher: keeps at most ``m`` client jobs alive through a scheduler backend."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from breed.launcher.backend import Backend, JobSpec, JobState, JobStatus

BACKENDS: dict[str, str] = {
    "local": "breed.launcher.local:LocalBackend",
    "slurm": "breed.launcher.slurm:SlurmBackend",
    "oar": "breed.launcher.oar:OarBackend",
}


def make_backend(name: str, options: Mapping[str, Any] | None = None) -> Backend:
    """Instantiate a registered backend by name (one module per scheduler)."""
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise ValueError(f"launcher.backend: unknown backend {name!r}") from None
    backend: type[Backend] = getattr(importlib.import_module(module), cls)
    return backend(options)


__all__ = ["BACKENDS", "Backend", "JobSpec", "JobState", "JobStatus", "make_backend"]
