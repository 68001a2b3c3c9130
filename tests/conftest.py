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


@pytest.fixture
def make_run(tmp_path):
    """``make_run(changes)`` -> a :class:`faultkit.RunUnderTest` in ``tmp_path``; at teardown
    every process of every run is killed, and none may be left."""
    from faultkit import RunUnderTest, run_processes

    runs: list = []

    def make(changes: dict | None = None):
        run = RunUnderTest(tmp_path, changes)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.kill_everything()
    for run in runs:
        assert not run_processes(run.dir), f"processes of {run.dir} left behind"
