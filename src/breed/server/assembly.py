"""Server-side reassembly of per-rank slabs into complete time steps (pure, no sockets).

An MPI client sends each rank's rows ``[row_offset, row_offset + rows)`` of the first axis of
every field of every time step as its own ``STEP`` message (like Melissa's per-rank
``melissa_send``); blocks of different ranks and fields arrive interleaved and in any order.
:class:`Assembler` puts them back together by offset and hands out each ``(sim_id, step,
fields)`` exactly once, when every field of the step is complete.

Why it is strict: a block that overlaps another rank's rows, changes a rank's row range, or
disagrees on a field's shape, dtype or the rank count means a buggy or hostile client; it
raises :class:`~breed.protocol.ProtocolError` so the server can reject that simulation instead
of training on a corrupt field. Re-sent data (a client retried after a crash) is *not* an
error: duplicate blocks and already-complete steps are ignored and counted.

Memory: only steps still missing a rank or a field hold a buffer; it is freed as soon as the
step is complete, when every rank has finished the simulation, or on :meth:`Assembler.discard`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from breed.protocol import FinishMessage, ProtocolError, StepMessage


@dataclass
class _Partial:
    field: np.ndarray
    ranks: set[int]


@dataclass
class _Stream:
    """One field of one simulation: its wire shape, the ranks' rows, incomplete steps."""

    shape: tuple[int, int]
    dtype: np.dtype
    layout: dict[int, tuple[int, int]] = field(default_factory=dict)  # rank -> (offset, rows)
    partial: dict[int, _Partial] = field(default_factory=dict)


@dataclass
class _Sim:
    nranks: int | None = None
    streams: dict[int, _Stream] = field(default_factory=dict)
    parts: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # step -> field -> full
    completed: set[int] = field(default_factory=set)  # steps with every field complete
    finished: set[int] = field(default_factory=set)
    done: bool = False


class Assembler:
    """Reassemble ``STEP`` blocks into ``(sim_id, step, [field arrays])`` once per step.

    ``nfields``: fields per time step (the problem's). ``max_partial_steps`` bounds the
    incomplete (step, field) pairs buffered per simulation, so a client that never sends some
    rank's rows cannot exhaust the server's memory.
    """

    def __init__(self, max_partial_steps: int = 1024, nfields: int = 1) -> None:
        if max_partial_steps < 1:
            raise ValueError("max_partial_steps must be >= 1")
        if nfields < 1:
            raise ValueError("nfields must be >= 1")
        self.max_partial_steps = max_partial_steps
        self.nfields = nfields
        self._sims: dict[int, _Sim] = {}
        self.duplicates = 0  # blocks ignored: same rank and step again, or step already complete
        self.stale = 0  # blocks ignored: the simulation had already finished on every rank

    def expect(
        self,
        sim_id: int,
        shape: tuple[int, int],
        dtype: np.dtype | str = "float64",
        nranks: int | None = None,
        field: int = 0,
    ) -> None:
        """Declare a field's wire shape (and the rank count) before its data arrives."""
        sim = self._sims.setdefault(sim_id, _Sim())
        want = (int(shape[0]), int(shape[1]))
        stream = sim.streams.get(field)
        if stream is None:
            sim.streams[field] = _Stream(want, np.dtype(dtype))
        else:
            self._check_shape(sim_id, field, stream, want, np.dtype(dtype))
        if nranks is not None:
            self._check_nranks(sim_id, sim, nranks, want[0])

    def add(self, msg: StepMessage) -> tuple[int, int, list[np.ndarray]] | None:
        """Store one block; return ``(sim_id, step, fields)`` when it completes its step (the
        fields in index order; for a one-rank simulation the blocks themselves, possibly
        read-only views: copy to keep them)."""
        block = msg.block
        if block.ndim != 2 or block.shape[0] == 0:
            raise ProtocolError(f"sim {msg.sim_id}: a block must be 2-D with at least one row")
        if not 0 <= msg.field < self.nfields:
            raise ProtocolError(
                f"sim {msg.sim_id}: field {msg.field} out of range for {self.nfields} fields"
            )
        if msg.row_offset < 0 or msg.row_offset + msg.rows > msg.global_rows:
            raise ProtocolError(
                f"sim {msg.sim_id}: rows [{msg.row_offset}, "
                f"{msg.row_offset + msg.rows}) outside 0..{msg.global_rows}"
            )
        shape = (msg.global_rows, int(block.shape[1]))
        sim = self._sims.setdefault(msg.sim_id, _Sim())
        stream = sim.streams.get(msg.field)
        if stream is None:
            stream = sim.streams[msg.field] = _Stream(shape, block.dtype)
        self._check_shape(msg.sim_id, msg.field, stream, shape, block.dtype)
        done_part = sim.parts.get(msg.step, {})
        if msg.step in sim.completed or msg.field in done_part:
            self.duplicates += 1
            return None
        if sim.done:
            self.stale += 1
            return None
        self._check_nranks(msg.sim_id, sim, msg.nranks, shape[0])
        self._check_layout(msg.sim_id, msg.field, sim, stream, msg.rank, msg.row_offset, msg.rows)
        if msg.nranks == 1:  # the whole field in one block: nothing to reassemble or copy
            full = block
        else:
            part = stream.partial.get(msg.step)
            if part is None:
                if self._partial_count(sim) >= self.max_partial_steps:
                    raise ProtocolError(
                        f"sim {msg.sim_id}: more than {self.max_partial_steps} "
                        "incomplete steps buffered"
                    )
                part = stream.partial[msg.step] = _Partial(
                    np.empty(stream.shape, stream.dtype), set()
                )
            elif msg.rank in part.ranks:
                self.duplicates += 1
                return None
            part.field[msg.row_offset : msg.row_offset + msg.rows] = block
            part.ranks.add(msg.rank)
            if len(part.ranks) < msg.nranks:
                return None
            del stream.partial[msg.step]
            full = part.field
        if self.nfields == 1:
            sim.completed.add(msg.step)
            return msg.sim_id, msg.step, [full]
        parts = sim.parts.setdefault(msg.step, {})
        if len(parts) >= self.max_partial_steps and msg.step not in sim.parts:
            raise ProtocolError(f"sim {msg.sim_id}: too many incomplete steps")
        parts[msg.field] = full if msg.nranks > 1 else np.array(full)  # keep past the frame
        if len(parts) < self.nfields:
            return None
        del sim.parts[msg.step]
        sim.completed.add(msg.step)
        return msg.sim_id, msg.step, [parts[k] for k in range(self.nfields)]

    def finish(self, msg: FinishMessage) -> bool:
        """Record one rank's ``FINISH``; True exactly once, when every rank has finished.
        A rank may finish before sending anything (its solver failed at once): the server
        then hands the simulation out again without waiting for a timeout."""
        sim = self._sims.setdefault(msg.sim_id, _Sim())
        if sim.done or msg.rank in sim.finished:
            self.duplicates += 1
            return False
        self._check_nranks(msg.sim_id, sim, msg.nranks, None)
        sim.finished.add(msg.rank)
        if len(sim.finished) < msg.nranks:
            return False
        sim.done = True
        for stream in sim.streams.values():  # steps still incomplete now can never complete
            stream.partial.clear()
        sim.parts.clear()
        return True

    def discard(self, sim_id: int, *, forget_completed: bool = False) -> None:
        """Drop a simulation's partial state (buffers, rank layout, finish marks).

        By default the set of completed steps is kept, so a retried client (possibly with another
        rank count) re-sending those steps gets them ignored as duplicates rather than delivered
        twice; ``forget_completed=True`` forgets the simulation entirely.
        """
        sim = self._sims.get(sim_id)
        if sim is None:
            return
        if forget_completed:
            del self._sims[sim_id]
            return
        self._sims[sim_id] = _Sim(
            completed=sim.completed,
            streams={k: _Stream(s.shape, s.dtype) for k, s in sim.streams.items()},
        )

    def completed_steps(self, sim_id: int) -> frozenset[int]:
        """Steps of ``sim_id`` already handed out by :meth:`add`."""
        sim = self._sims.get(sim_id)
        return frozenset(sim.completed) if sim else frozenset()

    def is_finished(self, sim_id: int) -> bool:
        sim = self._sims.get(sim_id)
        return bool(sim and sim.done)

    def partial_steps(self, sim_id: int) -> int:
        sim = self._sims.get(sim_id)
        return self._partial_count(sim) if sim else 0

    @staticmethod
    def _partial_count(sim: _Sim) -> int:
        return sum(len(s.partial) for s in sim.streams.values()) + len(sim.parts)

    @property
    def buffered_bytes(self) -> int:
        """Memory held by incomplete steps, all simulations together."""
        return sum(
            p.field.nbytes
            for s in self._sims.values()
            for st in s.streams.values()
            for p in st.partial.values()
        ) + sum(a.nbytes for s in self._sims.values() for d in s.parts.values() for a in d.values())

    # -- checks -----------------------------------------------------------------------------
    @staticmethod
    def _check_shape(
        sim_id: int, fld: int, stream: _Stream, shape: tuple[int, int], dtype: np.dtype
    ) -> None:
        if shape != stream.shape:
            raise ProtocolError(
                f"sim {sim_id} field {fld}: shape {shape[0]}x{shape[1]}, "
                f"expected {stream.shape[0]}x{stream.shape[1]}"
            )
        if dtype != stream.dtype:
            raise ProtocolError(f"sim {sim_id} field {fld}: dtype {dtype}, expected {stream.dtype}")

    @staticmethod
    def _check_nranks(sim_id: int, sim: _Sim, nranks: int, rows: int | None) -> None:
        if sim.nranks is None:
            if rows is not None and nranks > rows:
                raise ProtocolError(f"sim {sim_id}: {nranks} ranks for {rows} rows")
            sim.nranks = nranks
        elif nranks != sim.nranks:
            raise ProtocolError(f"sim {sim_id}: nranks {nranks}, expected {sim.nranks}")

    @staticmethod
    def _check_layout(
        sim_id: int, fld: int, sim: _Sim, stream: _Stream, rank: int, offset: int, rows: int
    ) -> None:
        if rank >= (sim.nranks or 0):
            raise ProtocolError(f"sim {sim_id}: rank {rank} out of range for {sim.nranks} ranks")
        known = stream.layout.get(rank)
        if known is not None:
            if known != (offset, rows):
                raise ProtocolError(
                    f"sim {sim_id}: rank {rank} sent rows [{offset}, "
                    f"{offset + rows}), earlier [{known[0]}, {sum(known)})"
                )
            return
        for other, (o, n) in stream.layout.items():
            if offset < o + n and o < offset + rows:
                raise ProtocolError(
                    f"sim {sim_id}: rank {rank} rows [{offset}, {offset + rows})"
                    f" overlap rank {other} rows [{o}, {o + n})"
                )
        stream.layout[rank] = (offset, rows)
        if (
            len(stream.layout) == sim.nranks
            and sum(n for _, n in stream.layout.values()) != stream.shape[0]
        ):
            del stream.layout[rank]
            raise ProtocolError(
                f"sim {sim_id} field {fld}: the blocks of {sim.nranks} ranks "
                f"do not cover the {stream.shape[0]} rows"
            )
