"""The storage both buffer kinds share (:mod:`breed.learning.reservoir`): slots, one lock, the
batch copies, statistics and the checkpoint snapshot of the samples.

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

The receiver (``breed.server.receiver``) reads its data socket only while
:meth:`~SampleBuffer.can_accept` holds, and stores with ``put`` (one sample, thread ingest) or
``offer_many`` (a run of samples from the ingest process, as many as fit).

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

    def __init__(
        self,
        capacity: int,
        watermark: int,
        field_size: int,
        seed: int = 0,
        normalisation: Normalisation | None = None,
        dim: int | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if not 1 <= watermark <= capacity:
            raise ValueError(
                f"buffer watermark must be in [1, capacity={capacity}], got {watermark}"
            )
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

    def offer_many(
        self,
        params: np.ndarray,
        steps: np.ndarray,
        fields: np.ndarray,
        sim_ids: np.ndarray,
        normalised: bool = False,
    ) -> int:
        """Store, in order, as many of k samples as fit without blocking; returns how many.

        One lock and vectorised copies for the whole group (the ingest process hands samples
        over in bulk). ``normalised``: ``fields`` are already in model units, float32."""
        params = np.asarray(params, dtype=np.float64)
        dim = self._set_dim(params.shape[-1] if params.ndim > 1 else params.size)
        params = params.reshape(-1, dim)
        fields = np.asarray(fields).reshape(len(params), -1)
        if fields.shape[1] != self.field_size:
            raise ValueError(
                f"sample fields have {fields.shape[1]} values, the buffer expects {self.field_size}"
            )
        steps = np.asarray(steps, dtype=np.int64)
        with self._lock:
            self._raise_if_closed()
            slots: list[int] = []
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
                self._inputs[idx, : self.dim] = params[:n]
                self._inputs[idx, self.dim] = steps[:n]
            else:
                self._inputs[idx] = norm.inputs(params[:n], steps[:n])
            self._sim_ids[idx] = np.asarray(sim_ids, dtype=np.int64)[:n]
            self._steps[idx] = steps[:n]
            self._seen[idx] = 0
            self.received += n
            self._after_write()
            return n

    def put(
        self,
        params: np.ndarray,
        step: int,
        field: np.ndarray,
        sim_id: int,
        timeout: float | None = None,
    ) -> bool:
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
            batch = Batch(
                self._inputs[idx],
                self._fields[idx],
                self._sim_ids[idx],
                self._steps[idx],
                waited,  # fancy indexing copies
                normalised=self.normalisation is not None and self.normalisation.frozen,
            )
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
                "kind": self.kind,
                "capacity": self.capacity,
                "watermark": self.watermark,
                "fill": self.fill,
                "unseen": self._unseen(),
                "received": self.received,
                "evicted": self.evicted,
                "batches": self.batches,
                "samples_drawn": self.samples_drawn,
                "refused": self.refused,
                "put_waits": self.put_waits,
                "put_wait_time": self.put_wait_time,
                "batch_waits": self.batch_waits,
                "batch_wait_time": self.batch_wait_time,
                "started": self._started,
                "closed": self._closed,
            }

    def state_dict(self) -> dict[str, Any]:
        """Statistics for a checkpoint; the samples themselves are not saved."""
        return self.stats()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the cumulative counters after a restart (the buffer itself starts empty,
        so ``started`` is not restored: training waits for the watermark again)."""
        with self._lock:
            for key in (
                "received",
                "evicted",
                "batches",
                "samples_drawn",
                "refused",
                "put_waits",
                "batch_waits",
            ):
                setattr(self, key, int(state.get(key, 0)))
            for key in ("put_wait_time", "batch_wait_time"):
                setattr(self, key, float(state.get(key, 0.0)))

    # -- checkpoint of the samples themselves (breed.server.recovery) ---------------------
    _SCALARS: tuple[str, ...] = (
        "received",
        "evicted",
        "batches",
        "samples_drawn",
        "refused",
        "put_waits",
        "batch_waits",
        "put_wait_time",
        "batch_wait_time",
        "_started",
    )
    _ARRAYS = ("_fields", "_inputs", "_sim_ids", "_steps", "_seen")

    def snapshot(self) -> dict[str, Any]:
        """Copy of the samples, seen counters, bookkeeping and RNG: samples received but not
        yet trained on would otherwise be lost with the process (their simulations are done)."""
        with self._lock:
            used = self._used()
            return {
                "kind": self.kind,
                "capacity": self.capacity,
                "field_size": self.field_size,
                "used": used,
                "scalars": {k: getattr(self, k) for k in self._SCALARS},
                "rng": self._rng.bit_generator.state,
                "arrays": {
                    **{k: getattr(self, k)[:used].copy() for k in self._ARRAYS},
                    **self._snapshot_extra(),
                },
            }

    def restore(self, snap: dict[str, Any]) -> None:
        """Inverse of :meth:`snapshot` into a fresh buffer of the same kind and size."""
        for key in ("kind", "capacity", "field_size"):
            if snap[key] != getattr(self, key):
                raise ValueError(
                    f"checkpoint buffer {key} is {snap[key]!r}, this run has {getattr(self, key)!r}"
                )
        used = int(snap["used"])
        with self._lock:
            # lambda's dimension is the snapshot's (a buffer without a normalisation learns it
            # from its first sample; a mismatch with a normalisation's is a one-line error)
            self._set_dim(int(np.shape(snap["arrays"]["_inputs"])[1]) - 1)
            for name in self._ARRAYS:
                getattr(self, name)[:used] = snap["arrays"][name]
            for name, value in snap["scalars"].items():
                setattr(self, name, value)
            self._rng.bit_generator.state = snap["rng"]
            self._restore_extra(snap)

    def _used(self) -> int:
        """Slots a snapshot must copy (lock held)."""
        return self.capacity

    def _snapshot_extra(self) -> dict[str, np.ndarray]:
        """The kind's own index arrays (lock held)."""
        return {}

    def _restore_extra(self, snap: dict[str, Any]) -> None:
        """Rebuild the kind's own indices from a snapshot (lock held)."""

    # -- internals --------------------------------------------------------------------------
    def _check(self, params: np.ndarray, field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        params = np.asarray(params, dtype=np.float64)
        field = np.asarray(field)
        if field.size != self.field_size:
            raise ValueError(
                f"sample field has {field.size} values, the buffer expects {self.field_size}"
            )
        with self._lock:
            self._set_dim(params.size)
        return params.reshape(-1), field.reshape(-1)

    def _set_dim(self, d: int) -> int:
        """Lambda's dimension, fixed by the normalisation or the first sample (lock held)."""
        if self.dim is None:
            self.dim = int(d)
            self._inputs = np.empty((self.capacity, self.dim + 1), dtype=np.float32)
        elif d != self.dim:
            raise ValueError(f"sample parameters have {d} values, expected {self.dim}")
        return self.dim

    def _raise_if_closed(self) -> None:
        if self._closed:
            raise BufferClosedError("sample put into a closed buffer (after end of stream)")

    def _write(self, params: np.ndarray, step: int, field: np.ndarray, sim_id: int) -> None:
        slot = self._store()
        row, inputs = self._fields[slot], self._inputs[slot]
        norm = self.normalisation
        if norm is None:
            row[...] = field
            inputs[: self.dim] = params
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
