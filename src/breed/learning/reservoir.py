"""Training-sample buffers between the receiver thread and the training loop (paper, App. A).

:class:`Reservoir` is Melissa DL's reservoir (Meyer et al., SC23): a fixed-capacity buffer whose
new samples replace random already-seen ones once it is full, so batches drawn at random reuse
samples while fresh data keeps arriving. Training starts once ``watermark`` unique samples were
received (paper: 300). When every held sample is still unseen, the buffer refuses new ones:
the receiver stops reading its socket, the ZeroMQ high-water marks fill up and the clients block
in ``send`` (backpressure). No sample is ever dropped before the model has trained on it.
:class:`FifoBuffer` has the same interface for comparison: each sample is trained on exactly once.

The storage, locking, normalisation and checkpoint snapshot they share are
:class:`breed.learning.buffer.SampleBuffer`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from breed.learning.buffer import SampleBuffer
from breed.learning.normalisation import Normalisation


class Reservoir(SampleBuffer):
    """Random-replacement reservoir (paper, App. A): samples are reused across batches."""

    kind = "reservoir"
    _SCALARS = (*SampleBuffer._SCALARS, "_size", "_unseen_count", "_n_seen")

    def __init__(
        self,
        capacity: int,
        watermark: int,
        field_size: int,
        seed: int = 0,
        normalisation: Normalisation | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__(capacity, watermark, field_size, seed, normalisation, dim)
        self._size = 0
        self._unseen_count = 0
        # Slots seen at least once, as an indexable set: eviction picks one in O(1).
        self._seen_slots = np.empty(capacity, dtype=np.int64)
        self._seen_pos = np.full(capacity, -1, dtype=np.int64)
        self._n_seen = 0

    @property
    def fill(self) -> int:
        return self._size

    def _held(self) -> np.ndarray:
        return np.arange(self._size)

    def _unseen(self) -> int:
        return self._unseen_count

    def _can_accept(self) -> bool:
        return self._size < self.capacity or self._n_seen > 0

    def _store(self) -> int:
        if self._size < self.capacity:
            slot = self._size
            self._size += 1
        else:  # replace a random sample that was already trained on, never an unseen one
            k = int(self._rng.integers(self._n_seen))
            slot = int(self._seen_slots[k])
            self._drop_seen(k)
            self.evicted += 1
        self._unseen_count += 1
        return slot

    def _drop_seen(self, k: int) -> None:
        slot = self._seen_slots[k]
        last = self._seen_slots[self._n_seen - 1]
        self._seen_slots[k] = last
        self._seen_pos[last] = k
        self._seen_pos[slot] = -1
        self._n_seen -= 1

    def _draw(self, size: int) -> np.ndarray | None:
        n = self._size
        if n == 0:
            return None
        if size <= n:  # within a batch without replacement when possible
            idx = self._rng.choice(n, size=size, replace=False)
        else:
            idx = self._rng.integers(n, size=size)
        idx = idx.astype(np.int64, copy=False)
        first = np.unique(idx[self._seen[idx] == 0])
        np.add.at(self._seen, idx, 1)
        if first.size:
            self._unseen_count -= int(first.size)
            self._seen_slots[self._n_seen : self._n_seen + first.size] = first
            self._seen_pos[first] = np.arange(self._n_seen, self._n_seen + first.size)
            self._n_seen += int(first.size)
        return idx

    def _used(self) -> int:
        return self._size

    def _snapshot_extra(self) -> dict[str, np.ndarray]:
        return {"_seen_slots": self._seen_slots[: self._n_seen].copy()}

    def _restore_extra(self, snap: dict[str, Any]) -> None:
        n = self._n_seen
        self._seen_slots[:n] = snap["arrays"]["_seen_slots"]
        self._seen_pos[:] = -1
        self._seen_pos[self._seen_slots[:n]] = np.arange(n)

    def seen_counts(self) -> np.ndarray:
        """Copy of the per-sample seen counters of the filled slots."""
        with self._lock:
            return self._seen[: self._size].copy()


class FifoBuffer(SampleBuffer):
    """First-in first-out queue: batches pop the oldest samples, each trained on once."""

    kind = "fifo"
    _SCALARS = (*SampleBuffer._SCALARS, "_head", "_size")

    def __init__(
        self,
        capacity: int,
        watermark: int,
        field_size: int,
        seed: int = 0,
        normalisation: Normalisation | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__(capacity, watermark, field_size, seed, normalisation, dim)
        self._head = 0  # slot of the oldest sample
        self._size = 0

    @property
    def fill(self) -> int:
        return self._size

    def _held(self) -> np.ndarray:
        return (self._head + np.arange(self._size)) % self.capacity

    def _unseen(self) -> int:
        return self._size  # a popped sample is gone; every held one is unseen

    def _can_accept(self) -> bool:
        return self._size < self.capacity

    def _store(self) -> int:
        slot = (self._head + self._size) % self.capacity
        self._size += 1
        return slot

    def _draw(self, size: int) -> np.ndarray | None:
        # A full batch, or what is left at the end of the stream (or all a small buffer holds).
        want = min(size, self.capacity)
        if self._size < want and not (self._closed and self._size > 0):
            return None
        n = min(size, self._size)
        idx = (self._head + np.arange(n, dtype=np.int64)) % self.capacity
        self._seen[idx] += 1
        self._head = (self._head + n) % self.capacity
        self._size -= n
        return idx


def make_buffer(
    kind: str,
    capacity: int,
    watermark: int,
    field_size: int,
    seed: int = 0,
    normalisation: Normalisation | None = None,
) -> SampleBuffer:
    """The buffer named by the config's ``buffer.kind``."""
    classes = {"reservoir": Reservoir, "fifo": FifoBuffer}
    if kind not in classes:
        raise ValueError(f"buffer.kind: {kind!r} is not one of {sorted(classes)}")
    return classes[kind](capacity, watermark, field_size, seed, normalisation)


def buffer_from_config(
    cfg: dict[str, Any], normalisation: Normalisation | None = None
) -> SampleBuffer:
    """The run's buffer (``buffer.*``, the problem's sample size, ``seed``), normalising by
    default; it recycles samples after the stream when the run has an iteration budget."""
    from breed.learning.budget import iteration_budget
    from breed.problems import problem_of

    bc = cfg["buffer"]
    problem = problem_of(cfg)
    norm = normalisation or Normalisation.from_problem(problem)
    buf = make_buffer(
        bc["kind"],
        bc["capacity"],
        bc["watermark"],
        problem.sample_size,
        seed=cfg["seed"],
        normalisation=norm,
    )
    buf.recycle = iteration_budget(cfg) is not None
    return buf
