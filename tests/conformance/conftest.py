"""Client implementations under test, and the C/Fortran build they need (CMake, from source,
in a temporary build directory, once per session)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV_EXTRA = "BREED_CONFORMANCE_CLIENT"  # "name=command args" (';' between several)


def build_clients(build: Path) -> Path:
    """Configure and build clients/ (library, examples, Fortran module) into ``build``."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake not found: apt-get install cmake libzmq3-dev pkg-config gfortran")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (
        ["cmake", "-S", str(ROOT / "clients"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return build


@pytest.fixture(scope="session")
def clients_build(tmp_path_factory) -> Path:
    return build_clients(tmp_path_factory.mktemp("clients-build"))


def extra_clients() -> list[tuple[str, list[str]]]:
    out = []
    for item in filter(None, os.environ.get(ENV_EXTRA, "").split(";")):
        name, _, cmd = item.partition("=")
        out.append((name.strip(), shlex.split(cmd)))
    return out
