"""Multi-rank server: the link between server rank 0 and the other ranks.

Rank 0 keeps the one simulation table and the one sampler (Breed needs every rank's losses;
paper Section 3.3), answers all work requests and tells the owner rank of each simulation
(``sim_id % R``) its parameters; clients stream that simulation's steps to the owner rank's data
socket; the owner tells rank 0 when all steps arrived. Both directions are ZeroMQ PUSH/PULL
between server processes, bound on the configured host.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from breed.server.simtable import SimRecord, SimTable


class RankLink:
    """Rank 0: one PUSH per other rank (assignments) + one PULL (completions).
    Rank r > 0: one PULL (assignments) + one PUSH to rank 0 (completions)."""

    def __init__(self, rank: int, size: int, addr: str) -> None:
        self.rank, self.size = rank, size
        self._ctx: zmq.Context = zmq.Context.instance()
        self.inbox = self._ctx.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        port = self.inbox.bind_to_random_port(f"tcp://{addr}")
        self.address = f"tcp://{addr}:{port}"
        self.outboxes: dict[int, zmq.Socket] = {}
        self._lock = threading.Lock()  # PUSH sockets are used from the receiver thread only,
        # but rank 0's completions inbox is drained by the training loop

    def connect(self, addresses: list[str]) -> None:
        """After an allgather of every rank's inbox address."""
        targets = range(1, self.size) if self.rank == 0 else [0]
        for r in targets:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 1000)
            sock.connect(addresses[r])
            self.outboxes[r] = sock

    def send(self, rank: int, obj: dict[str, Any]) -> None:
        self.outboxes[rank].send(json.dumps(obj).encode())

    def receive(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._lock:
            if not self.inbox.poll(timeout_ms):
                return out
            while True:
                try:
                    out.append(json.loads(self.inbox.recv(zmq.NOBLOCK)))
                except zmq.Again:
                    return out

    def close(self) -> None:
        for sock in self.outboxes.values():
            sock.close()
        self.inbox.close(0)


class ShardedTable(SimTable):
    """Rank 0's table: also tells the owner rank about each simulation it hands out."""

    def __init__(self, *args: Any, link: RankLink, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.link = link

    def request(self, job_id: str | None, client: str) -> SimRecord | str:
        got = super().request(job_id, client)
        if isinstance(got, SimRecord):
            owner = got.sim_id % self.link.size
            if owner != 0:  # before the ASSIGN reply leaves, so the owner usually knows first
                self.link.send(owner, {"assign": got.sim_id, "params": got.params})
        return got

    def collect_completions(self) -> list[int]:
        """Simulations other ranks finished since the last call (counted once)."""
        done = []
        for msg in self.link.receive():
            if "seen" in msg and self.known(int(msg["seen"])):
                self.on_step(int(msg["seen"]))
            elif "done" in msg and self.complete(int(msg["done"])):
                done.append(int(msg["done"]))
        return done


class RemoteTable:
    """What a rank r > 0 receiver needs of the table, backed by rank 0 over the link."""

    def __init__(self, link: RankLink, wait_unknown: float = 2.0) -> None:
        self.link = link
        self.params: dict[int, np.ndarray] = {}
        self.done: set[int] = set()
        self.wait_unknown = wait_unknown
        self.heartbeat = 2.0  # s between "still receiving" notes to rank 0, per simulation
        self._last_note: dict[int, float] = {}
        self.clock: Callable[[], float] = time.monotonic  # liveness is rank 0's

    def _pull(self, timeout_ms: int = 0) -> None:
        for msg in self.link.receive(timeout_ms):
            self.params[int(msg["assign"])] = np.asarray(msg["params"], dtype=np.float64)

    def known(self, sim_id: int) -> bool:
        if sim_id % self.link.size != self.link.rank:
            return False  # not this rank's simulation
        if sim_id not in self.params:
            self._pull()
            deadline = time.monotonic() + self.wait_unknown
            while sim_id not in self.params and time.monotonic() < deadline:
                self._pull(50)  # the assignment may trail the client's first step
        return sim_id in self.params

    def on_step(self, sim_id: int) -> None:
        """Rank 0 tracks liveness (simulation_timeout): tell it, rate-limited."""
        now = time.monotonic()
        if now - self._last_note.get(sim_id, 0.0) >= self.heartbeat:
            self._last_note[sim_id] = now
            self.link.send(0, {"seen": sim_id})

    def params_of(self, sim_id: int) -> np.ndarray:
        return self.params[sim_id]

    def complete(self, sim_id: int) -> bool:
        if sim_id in self.done:
            return False
        self.done.add(sim_id)
        self._last_note.pop(sim_id, None)
        self.link.send(0, {"done": sim_id})
        return True

    def fail(self, sim_id: int, reason: str) -> None:
        """Not failed here: rank 0's liveness timeout hands the simulation out again."""
        return None

    def expire(self, timeout: float) -> list[int]:
        return []
