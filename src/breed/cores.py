"""Which CPU cores the trainer has to itself (``training.cores: dedicated``).

On a small machine the trainer shares its cores with the clients, the receiver and ZeroMQ's
I/O threads, and its step runs up to 2.5x slower than off-line (issue 15). Binding the
trainer thread to cores of its own, and everything else a run starts on this host to the
rest, is what ``srun --cpu-bind`` does on a cluster node; this module is the one place that
decides the split, so the launcher (clients) and the server (trainer, receiver, ingest
process) agree without talking. Linux only (``os.sched_setaffinity``); elsewhere, or with a
single core, there is no split and nothing is bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

SHARED, DEDICATED = "shared", "dedicated"


@dataclass(frozen=True)
class CorePlan:
    trainer: frozenset[int]  # the training thread (and torch's intra-op threads)
    others: frozenset[int]  # clients, receiver, ingest process, ZeroMQ I/O threads

    def describe(self) -> str:
        return f"trainer on cores {_span(self.trainer)}, the rest on {_span(self.others)}"


def trainer_threads(cfg: dict[str, Any]) -> int:
    """The trainer's thread count under a dedicated split: ``training.threads``, or half
    the cores this process may use (at least 1)."""
    threads = cfg["training"]["threads"]
    return int(threads) if threads else max(1, len(_available()) // 2)


def plan(cfg: dict[str, Any]) -> CorePlan | None:
    """The split for this run on this host, or None (shared cores, or nothing to split)."""
    if cfg["training"].get("cores", SHARED) != DEDICATED or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(_available())
    t = trainer_threads(cfg)
    if len(cpus) < 2 or t >= len(cpus):
        return None
    # the last cores for the trainer: core 0 keeps the system's interrupts and daemons
    return CorePlan(trainer=frozenset(cpus[-t:]), others=frozenset(cpus[:-t]))


def bind(cpus: frozenset[int], tid: int = 0) -> None:
    """Bind one thread (``tid``; 0: the calling thread, Linux semantics) or process."""
    os.sched_setaffinity(tid, cpus)


def _available() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _span(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))
