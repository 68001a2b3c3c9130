"""Training-sample buffers between the receiver thread and the training loop (paper, App. A).

:class:`Reservoir` is Melissa DL's reservoir (Meyer et al., SC23): a fixed-capacity buffer whose
new samples replace random already-seen ones once it is full, so batches drawn at random reuse
samples while fresh data keeps arriving. Training starts once ``watermark`` unique samples were
received (paper: 300). When every held sample is still unseen, the buffer refuses new ones:
the receiver stops reading its socket, the ZeroMQ high-water marks fill up and the clients block
in ``send`` (backpressure). No sample is ever dropped before the model has trained on it.
:class:`FifoBuffer` has the same interface for comparison: each sample is trained on exactly once.

What is stored. A sample is one time step of one simulation: its fields (the problem's fields,
flattened and concatenated), its parameters λ, its time step t and its simulation id. With a
:class:`breed.learning.normalisation.Normalisation` (always, in a run) the buffer stores the model's
inputs and targets in model units, converted once while copying into the preallocated float32
slot: a batch goes to the model without per-batch arithmetic, and a sample reused k times is
not normalised k times. Fields whose scale is estimated from the first samples are stored raw
until ``watermark`` samples are in, then normalised in place at once (before any batch).
Without a normalisation (tests, hand-made data) values are stored as given and batches are
marked ``normalised=False``, which the trainer refuses.

Threading. One lock guards the storage; ``put``/``offer`` (receiver) and ``sample_batch``
(trainer) may run in different threads. Batches are copies, so a later replacement cannot change
a batch in use. Random choices (eviction slot, batch indices) come from one generator seeded by
``seed``: the same sequence of calls gives the same result.

Typical receiver loop::

    if not buffer.wait_can_accept(timeout=0.1):
        continue                      # do not read the socket: clients block on the HWM
    buffer.offer(params, step, field, sim_id)  # never refused right after can_accept

Typical training loop::

    while not buffer.finished():      # closed and every sample trained on
        batch = buffer.sample_batch(B, timeout=0.5)
        if batch is not None:
            trainer.step(batch)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from breed.learning.normalisation import Normalisation


class BufferClosedError(RuntimeError):
    """A sample was put after :meth:`close` (end of stream): a bug in the caller."""


@dataclass(frozen=True)
class Batch:
    """A training batch: copies of the buffer's rows, safe to keep while the buffer changes."""

    inputs: np.ndarray  # (B, d+1) float32: (lambda', t')
    targets: np.ndarray  # (B, S) float32: the sample's fields, in model units
    sim_ids: np.ndarray  # (B,) int64
    steps: np.ndarray  # (B,) int64, time step t of each sample
    waited: float = 0.0  # seconds sample_batch waited for data (trainer starvation)
    normalised: bool = True  # False: raw values from a buffer without a Normalisation

    def __len__(self) -> int:
        return int(self.sim_ids.shape[0])


class SampleBuffer:
    """Storage, locking and statistics shared by both buffer kinds."""

    kind = "base"

    def __init__(self, capacity: int, watermark: int, field_size: int, seed: int = 0,
                 normalisation: Normalisation | None = None, dim: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if not 1 <= watermark <= capacity:
            raise ValueError(f"buffer watermark must be in [1, capacity={capacity}], "
                             f"got {watermark}")
        if field_size < 1:
            raise ValueError(f"field_size must be >= 1, got {field_size}")
        self.capacity, self.watermark, self.field_size = int(capacity), int(watermark), field_size
        self.normalisation = normalisation
        # lambda's dimension: the normalisation's, else the first sample's (hand-made data)
        self.dim = normalisation.dim if normalisation is not None else dim
        self._fields = np.empty((capacity, field_size), dtype=np.float32)
        self._inputs = np.empty((capacity, (self.dim or 0) + 1), dtype=np.float32)
        self._sim_ids = np.empty(capacity, dtype=np.int64)
        self._steps = np.empty(capacity, dtype=np.int64)
        self._seen = np.zeros(capacity, dtype=np.int64)
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._space = threading.Condition(self._lock)  # put waits here
        self._data = threading.Condition(self._lock)  # sample_batch waits here
        self._closed = False
        self._started = False
        # keep drawing batches after the end of the stream (``training.iterations``: a budget
        # spent on the reservoir once every simulation is in); the trainer decides when to stop
        self.recycle = False
        self.received = 0  # samples accepted
        self.evicted = 0  # seen samples replaced by new ones (reservoir only)
        self.batches = 0
        self.samples_drawn = 0
        self.refused = 0  # offer() calls answered False (backpressure)
        self.put_waits = 0  # put() calls that had to block
        self.put_wait_time = 0.0
        self.batch_waits = 0  # sample_batch() calls that had to block
        self.batch_wait_time = 0.0

    # -- subclass hooks (called with the lock held) ----------------------------------------
    @property
    def fill(self) -> int:
        """Samples held now."""
        raise NotImplementedError

    def _can_accept(self) -> bool:
        raise NotImplementedError

    def _store(self) -> int:
        """Choose the slot of a new sample (and update the bookkeeping); returns the slot."""
        raise NotImplementedError

    def _draw(self, size: int) -> np.ndarray | None:
        """Slots of the next batch, or None when it must wait for more data."""
        raise NotImplementedError

    def _unseen(self) -> int:
        raise NotImplementedError

    # -- receiver side ----------------------------------------------------------------------
    def can_accept(self) -> bool:
        """True when a sample put now would be stored without blocking."""
        with self._lock:
            return self._closed or self._can_accept()

    def wait_can_accept(self, timeout: float | None = None) -> bool:
        """Block until a sample can be stored (or the buffer is closed); False on timeout."""
        with self._lock:
            return self._space.wait_for(lambda: self._closed or self._can_accept(), timeout)

    def offer(self, params: np.ndarray, step: int, field: np.ndarray, sim_id: int) -> bool:
        """Store a sample (lambda in K, step t, field u in K) if it fits without blocking;
        False (nothing stored) otherwise."""
        params, field = self._check(params, field)
        with self._lock:
            self._raise_if_closed()
            if not self._can_accept():
                self.refused += 1
                return False
            self._write(params, step, field, sim_id)
            return True

    def offer_many(self, params: np.ndarray, steps: np.ndarray, fields: np.ndarray,
                   sim_ids: np.ndarray, normalised: bool = False) -> int:
        """Store, in order, as many of k samples as fit without blocking; returns how many.

        One lock and vectorised copies for the whole group (the ingest process hands samples
        over in bulk). ``normalised``: ``fields`` are already in model units, float32."""
        params = np.asarray(params, dtype=np.float64)
        self._set_dim(params.shape[-1] if params.ndim > 1 else params.size)
        params = params.reshape(-1, self.dim)
        fields = np.asarray(fields).reshape(len(params), -1)
        if fields.shape[1] != self.field_size:
            raise ValueError(f"sample fields have {fields.shape[1]} values, the buffer "
                             f"expects {self.field_size}")
        steps = np.asarray(steps, dtype=np.int64)
        with self._lock:
            self._raise_if_closed()
            slots = []
            while len(slots) < len(params) and self._can_accept():
                slots.append(self._store())
            n = len(slots)
            if n == 0:
                self.refused += 1
                return 0
            idx = np.asarray(slots, dtype=np.int64)
            norm = self.normalisation
            if norm is None or normalised or not norm.frozen:
                self._fields[idx] = fields[:n]
            else:
                self._fields[idx] = norm.field(fields[:n])
            if norm is None:
                self._inputs[idx, :self.dim] = params[:n]
                self._inputs[idx, self.dim] = steps[:n]
            else:
                self._inputs[idx] = norm.inputs(params[:n], steps[:n])
            self._sim_ids[idx] = np.asarray(sim_ids, dtype=np.int64)[:n]
            self._steps[idx] = steps[:n]
            self._seen[idx] = 0
            self.received += n
            self._after_write()
            return n

    def put(self, params: np.ndarray, step: int, field: np.ndarray, sim_id: int,
            timeout: float | None = None) -> bool:
        """Store a sample, blocking while the buffer cannot take it; False on timeout.

        Raises :class:`BufferClosedError` if the buffer is (or gets) closed.
        """
        params, field = self._check(params, field)
        with self._lock:
            self._raise_if_closed()
            if not self._can_accept():
                self.put_waits += 1
                t0 = time.perf_counter()
                ok = self._space.wait_for(lambda: self._closed or self._can_accept(), timeout)
                self.put_wait_time += time.perf_counter() - t0
                if not ok:
                    return False
                self._raise_if_closed()
            self._write(params, step, field, sim_id)
            return True

    def close(self) -> None:
        """End of stream: no more samples will come. Wakes every waiting thread."""
        with self._lock:
            self._closed = True
            self._space.notify_all()
            self._data.notify_all()

    # -- trainer side -----------------------------------------------------------------------
    def ready(self) -> bool:
        """Training may start: ``watermark`` samples were received (sticky), or the stream
        ended with samples left (a budget smaller than the watermark still trains)."""
        with self._lock:
            return self._ready()

    def sample_batch(self, size: int, timeout: float | None = None) -> Batch | None:
        """Next batch of at most ``size`` samples, blocking until one can be drawn.

        Returns None on timeout or once :meth:`finished` (closed and every sample trained on:
        the reservoir does not keep recycling old samples after the end of the stream, unless
        :attr:`recycle` is set).
        """
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        with self._lock:
            if self._finished() and not self.recycle:
                return None
            idx = self._draw(size) if self._ready() else None
            waited = 0.0
            if idx is None:
                if self._finished():
                    return None
                self.batch_waits += 1
                t0 = time.perf_counter()
                deadline = None if timeout is None else t0 + timeout
                while idx is None and not self._finished():
                    left = None if deadline is None else deadline - time.perf_counter()
                    if left is not None and left <= 0:
                        break
                    self._data.wait(left)
                    idx = self._draw(size) if self._ready() else None
                waited = time.perf_counter() - t0
                self.batch_wait_time += waited
                if idx is None:
                    return None
            batch = Batch(self._inputs[idx], self._fields[idx], self._sim_ids[idx],
                          self._steps[idx], waited,  # fancy indexing copies
                          normalised=self.normalisation is not None
                          and self.normalisation.frozen)
            self.batches += 1
            self.samples_drawn += len(idx)
            self._space.notify_all()
            return batch

    def all_seen(self) -> bool:
        """Every sample held now was in at least one batch."""
        with self._lock:
            return self._unseen() == 0

    def finished(self) -> bool:
        """Closed and every sample trained on: the training loop may stop."""
        with self._lock:
            return self._finished()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- statistics -------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters for the run log and checkpoints (no sample data)."""
        with self._lock:
            return {
                "kind": self.kind, "capacity": self.capacity, "watermark": self.watermark,
                "fill": self.fill, "unseen": self._unseen(), "received": self.received,
                "evicted": self.evicted, "batches": self.batches,
                "samples_drawn": self.samples_drawn, "refused": self.refused,
                "put_waits": self.put_waits, "put_wait_time": self.put_wait_time,
                "batch_waits": self.batch_waits, "batch_wait_time": self.batch_wait_time,
                "started": self._started, "closed": self._closed,
            }

    def state_dict(self) -> dict[str, Any]:
        """Statistics for a checkpoint; the samples themselves are not saved."""
        return self.stats()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cumulative counters after a restart (the buffer itself starts empty,
        so ``started`` is not restored: training waits for the watermark again)."""
        with self._lock:
            for key in ("received", "evicted", "batches", "samples_drawn", "refused",
                        "put_waits", "batch_waits"):
                setattr(self, key, int(state.get(key, 0)))
            for key in ("put_wait_time", "batch_wait_time"):
                setattr(self, key, float(state.get(key, 0.0)))

    # -- internals --------------------------------------------------------------------------
    def _check(self, params: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        params = np.asarray(params, dtype=np.float64)
        field = np.asarray(field)
        if field.size != self.field_size:
            raise ValueError(f"sample field has {field.size} values, the buffer expects "
                             f"{self.field_size}")
        with self._lock:
            self._set_dim(params.size)
        return params.reshape(-1), field.reshape(-1)

    def _set_dim(self, d: int) -> None:
        """Lambda's dimension, fixed by the normalisation or the first sample (lock held)."""
        if self.dim is None:
            self.dim = int(d)
            self._inputs = np.empty((self.capacity, self.dim + 1), dtype=np.float32)
        elif d != self.dim:
            raise ValueError(f"sample parameters have {d} values, expected {self.dim}")

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise BufferClosedError("sample put into a closed buffer (after end of stream)")

    def _write(self, params: np.ndarray, step: int, field: np.ndarray, sim_id: int) -> None:
        slot = self._store()
        row, inputs = self._fields[slot], self._inputs[slot]
        norm = self.normalisation
        if norm is None:
            row[...] = field
            inputs[:self.dim] = params
            inputs[self.dim] = step
        else:
            if norm.frozen:
                norm.field_into(row, field)  # normalise while copying, without a temporary
            else:
                row[...] = field  # raw until the watermark fixes the scale
            inputs[...] = norm.inputs(params, step)
        self._sim_ids[slot] = sim_id
        self._steps[slot] = step
        self._seen[slot] = 0
        self.received += 1
        self._after_write()

    def _after_write(self) -> None:
        """Watermark reached: training may start, and fields without a declared scale get
        theirs from the samples held now (normalised in place before any batch)."""
        if self.received >= self.watermark:
            norm = self.normalisation
            if norm is not None and not norm.frozen:
                held = self._held()
                norm.freeze(self._fields[held])
                self._fields[held] = norm.field(self._fields[held])
            self._started = True
        self._data.notify_all()

    def _held(self) -> np.ndarray:
        """Slots of the samples held now."""
        raise NotImplementedError

    def _ready(self) -> bool:
        return self._started or (self._closed and self.fill > 0)

    def _finished(self) -> bool:
        return self._closed and self._unseen() == 0


class Reservoir(SampleBuffer):
    """Random-replacement reservoir (paper, App. A): samples are reused across batches."""

    kind = "reservoir"

    def __init__(self, capacity: int, watermark: int, field_size: int, seed: int = 0,
                 normalisation: Normalisation | None = None, dim: int | None = None) -> None:
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
            self._seen_slots[self._n_seen:self._n_seen + first.size] = first
            self._seen_pos[first] = np.arange(self._n_seen, self._n_seen + first.size)
            self._n_seen += int(first.size)
        return idx

    def seen_counts(self) -> np.ndarray:
        """Copy of the per-sample seen counters of the filled slots."""
        with self._lock:
            return self._seen[:self._size].copy()


class FifoBuffer(SampleBuffer):
    """First-in first-out queue: batches pop the oldest samples, each trained on once."""

    kind = "fifo"

    def __init__(self, capacity: int, watermark: int, field_size: int, seed: int = 0,
                 normalisation: Normalisation | None = None, dim: int | None = None) -> None:
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


def make_buffer(kind: str, capacity: int, watermark: int, field_size: int, seed: int = 0,
                normalisation: Normalisation | None = None) -> SampleBuffer:
    """The buffer named by the config's ``buffer.kind``."""
    classes = {"reservoir": Reservoir, "fifo": FifoBuffer}
    if kind not in classes:
        raise ValueError(f"buffer.kind: {kind!r} is not one of {sorted(classes)}")
    return classes[kind](capacity, watermark, field_size, seed, normalisation)


def buffer_from_config(cfg: dict[str, Any], normalisation: Normalisation | None = None
                       ) -> SampleBuffer:
    """The run's buffer (``buffer.*``, the problem's sample size, ``seed``), normalising by
    default; it recycles samples after the stream when ``training.iterations`` is a budget."""
    from breed.problems import problem_of

    bc = cfg["buffer"]
    problem = problem_of(cfg)
    norm = normalisation or Normalisation.from_problem(problem)
    buf = make_buffer(bc["kind"], bc["capacity"], bc["watermark"], problem.sample_size,
                      seed=cfg["seed"], normalisation=norm)
    buf.recycle = cfg["training"].get("iterations") is not None
    return buf
