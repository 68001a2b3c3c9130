"""The MPI launcher (``launcher.mpiexec``): found once, for the local backend's client jobs
and for a multi-rank server."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def find_mpiexec(name: str = "mpiexec") -> str:
    """``mpiexec`` on PATH, else next to the running interpreter (a venv's mpich wheel)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise FileNotFoundError(f"launcher.mpiexec: {name!r} not found on PATH")
    return found
