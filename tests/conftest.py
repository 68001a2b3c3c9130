"""Shared fixtures: free loopback ports, run tokens, the venv's bin dir on PATH (mpiexec)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def token() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def mpiexec() -> str:
    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpiexec not found: install the dev extras (pip install -e '.[dev]')")
    return exe
