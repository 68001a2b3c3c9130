"""Processes known only by a pid (``server.json``, ``jobs.csv``): alive, and still ours.

The one owner of both checks, for the launcher (a resumed run finds its server and its
orphaned client jobs by pid) and for anything else that holds a pid it did not start. A pid
is reused once its process is gone, so a stored pid names our process only while that process
carries our marks in its environment (``BREED_RUN_DIR``, ``BREED_JOB_ID``); ``/proc`` is read
directly because a zombie (an orphan, which init reaps, not us) must not count as alive.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def carries(pid: int, env: Mapping[str, str]) -> bool:
    """The process's environment holds every ``NAME=value`` of ``env`` (False when it cannot
    be read: gone, or not ours to read)."""
    try:
        have = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return False
    return {f"{k}={v}".encode() for k, v in env.items()} <= have
