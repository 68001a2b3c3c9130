"""What a run will take of the machine, estimated from its config before anything starts.

A config that cannot fit (grid 4096 with 100000 steps: a 24 TiB validation set;
``model.batch_size: 1000000000``; a 10^12-sample buffer) must be refused with one line, not
discovered by the kernel's OOM killer after the machine has swapped for an hour. The estimate
adds the large allocations the code makes (each term names the one it counts) and compares
them with ``resources.memory_limit_gib`` (default: 90 % of the memory available now, the
cgroup's limit included) and, for the files a run writes, with the free space of the disk that
will hold the run directory. It errs on the generous side of what is allocated, not on the
side of the interpreter's own overhead, which is a constant.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from breed import rundir
from breed.config import ConfigError
from breed.protocol import queue_messages
from breed.server.datapath import Batching, StepSpec
from breed.server.receiver import ring_slots

F32 = 4
GIB = 1 << 30
SERVER_BASE = 600 << 20  # interpreter, torch, numpy, zmq of the server process
CLIENT_BASE = 100 << 20  # interpreter, numpy, scipy, zmq of one client process


@dataclass(frozen=True)
class Estimate:
    memory: dict[str, int]  # bytes per term
    disk: dict[str, int]

    @property
    def memory_total(self) -> int:
        return sum(self.memory.values())

    @property
    def disk_total(self) -> int:
        return sum(self.disk.values())


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def estimate(cfg: dict[str, Any]) -> Estimate:
    """Peak bytes of memory and disk of the run described by a validated config."""
    from breed.learning.trainer import EVAL_ELEMENTS  # torch: only when a run is checked
    from breed.problems import problem_of

    mc, lc, bc, vc = (cfg[k] for k in ("model", "launcher", "buffer", "validation"))
    problem = problem_of(cfg)
    field, inputs = problem.sample_size, problem.dim + 1
    wire = sum(f.size * (8 if f.dtype == "float64" else 4) for f in problem.fields)
    try:
        spec = StepSpec.of(problem)
        per_message = Batching.plan(
            spec, lc["batch_steps"], lc["batch_linger"], lc["max_message_bytes"]
        ).steps
    except ValueError:  # refused by the run's config check, with its own message
        per_message = 1
    hidden, layers, batch = mc["hidden"], mc["layers"], mc["batch_size"]
    # the paper's MLP (a model.factory's own size is not known before it is built)
    params = (
        inputs * hidden
        + hidden
        + (layers - 1) * (hidden * hidden + hidden)
        + hidden * field
        + field
    )
    sample = field * F32 + inputs * F32 + 4 * 8  # fields, inputs, sim id, step, seen counters
    buffer = bc["capacity"] * sample
    frames = vc["size"] * (problem.steps + 1) * field * F32
    memory = {
        "server process": SERVER_BASE,
        "buffer": buffer,
        # a checkpoint copies the samples, then serialises the copy (breed.server.recovery)
        "checkpoint copies": 2 * buffer,
        # the validation set is held whole; made in-process, it is also being written
        "validation set": frames if vc["file"] else 2 * frames,
        # weights, gradients and Adam's two moments, plus a DDP bucket copy of the gradients
        "model": params * F32 * (5 if lc["server_ranks"] > 1 else 4),
        # targets, outputs, their difference and its gradient; hidden activations
        "batch": batch * (4 * field + 3 * hidden * layers) * F32,
        "evaluation chunk": 3 * EVAL_ELEMENTS * F32,
        # steps queued per client between its send and our receive high-water marks
        # (both high-water marks, in messages of up to per_message steps)
        "message queues": lc["max_jobs"] * 2 * queue_messages(per_message) * per_message * wire,
    }
    if lc["ingest"] == "process":
        memory["ingest ring"] = ring_slots(per_message) * (field * F32 + 64)
    if lc["server_ranks"] > 1:
        per_rank = SERVER_BASE + buffer * 3 + params * F32 * 5 + memory["batch"]
        memory["other server ranks"] = (lc["server_ranks"] - 1) * per_rank
    if lc["backend"] == "local":  # clients share this machine: solver state and send queues
        memory["clients"] = lc["max_jobs"] * (problem.client.ranks * CLIENT_BASE + 8 * field * 8)
    checkpoint = buffer + params * F32 * 3
    disk = {"checkpoint (and its replacement)": 2 * checkpoint, rundir.MODEL: params * F32}
    if not vc["file"]:
        disk["validation set"] = frames
    return Estimate(memory, disk)


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, or less under a cgroup limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: limit minus what the group already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def free_disk(path: Path) -> int | None:
    """Free bytes on the filesystem that holds (or will hold) ``path``."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def _largest(terms: dict[str, int], k: int = 3) -> str:
    top = sorted(terms.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{name} {human(size)}" for name, size in top)


def check_resources(cfg: dict[str, Any], run_dir: Path | None = None) -> Estimate:
    """Raise :class:`ConfigError` when the run cannot fit; returns the estimate."""
    est = estimate(cfg)
    rc = cfg["resources"]
    limit: int | None
    if rc["memory_limit_gib"] is not None:
        limit, source = int(rc["memory_limit_gib"] * GIB), "resources.memory_limit_gib"
    else:
        avail = available_memory()
        limit = None if avail is None else int(0.9 * avail)
        source = "90 % of the memory available on this machine"
    if limit is not None and est.memory_total > limit:
        raise ConfigError(
            f"resources.memory_limit_gib: the run needs about {human(est.memory_total)} of "
            f"memory ({_largest(est.memory)}), more than {human(limit)} ({source}); shrink the "
            "largest term or raise resources.memory_limit_gib"
        )
    if run_dir is not None and rc["check_disk"]:
        free = free_disk(run_dir)
        if free is not None and est.disk_total > free:
            raise ConfigError(
                f"resources.check_disk: the run directory {run_dir} needs about "
                f"{human(est.disk_total)} ({_largest(est.disk)}), its disk has {human(free)} "
                "free"
            )
    return est
