"""Server-side reassembly of per-rank row blocks into full fields (pure, no sockets).

An MPI client sends each rank's rows ``[row_offset, row_offset + rows)`` of every time step as
its own ``STEP`` message (like Melissa's per-rank ``melissa_send``); blocks of different ranks
arrive interleaved and in any order. :class:`Assembler` puts them back together by offset and
hands out each ``(sim_id, step, field)`` exactly once.

Why it is strict: a block that overlaps another rank's rows, changes a rank's row range, or
disagrees on the field shape, dtype or rank count means a buggy or hostile client; it raises
:class:`~breed.protocol.ProtocolError` so the server can reject that simulation instead of
training on a corrupt field. Re-sent data (a client retried after a crash) is *not* an error:
duplicate blocks and already-complete steps are ignored and counted.

Memory: only steps still missing a rank hold a buffer; it is freed as soon as the step is
complete, when every rank has finished the simulation, or on :meth:`Assembler.discard`.
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
class _Sim:
    shape: tuple[int, int] | None  # None: no block seen yet (a rank finished before sending)
    dtype: np.dtype | None
    nranks: int | None = None
    layout: dict[int, tuple[int, int]] = field(default_factory=dict)  # rank -> (offset, rows)
    partial: dict[int, _Partial] = field(default_factory=dict)
    completed: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    done: bool = False


class Assembler:
    """Reassemble ``STEP`` row blocks into ``(sim_id, step, field)`` once per step.

    ``max_partial_steps`` bounds the incomplete steps buffered per simulation, so a client that
    never sends some rank's rows cannot exhaust the server's memory.
    """

    def __init__(self, max_partial_steps: int = 1024) -> None:
        if max_partial_steps < 1:
            raise ValueError("max_partial_steps must be >= 1")
        self.max_partial_steps = max_partial_steps
        self._sims: dict[int, _Sim] = {}
        self.duplicates = 0  # blocks ignored: same rank and step again, or step already complete
        self.stale = 0  # blocks ignored: the simulation had already finished on every rank

    def expect(self, sim_id: int, shape: tuple[int, int], dtype: np.dtype | str = "float64",
               nranks: int | None = None) -> None:
        """Declare a simulation's field shape (and rank count) before its data arrives."""
        sim = self._sims.get(sim_id)
        if sim is None:
            self._sims[sim_id] = _Sim((int(shape[0]), int(shape[1])), np.dtype(dtype), nranks)
            return
        if sim.shape is None:
            sim.shape, sim.dtype = (int(shape[0]), int(shape[1])), np.dtype(dtype)
        self._check_shape(sim_id, sim, (int(shape[0]), int(shape[1])), np.dtype(dtype))
        if nranks is not None:
            self._check_nranks(sim_id, sim, nranks)

    def add(self, msg: StepMessage) -> tuple[int, int, np.ndarray] | None:
        """Store one block; return the full field when this block completes its step (for a
        one-rank simulation the block itself, possibly a read-only view: copy to keep it)."""
        block = msg.block
        if block.ndim != 2 or block.shape[0] == 0:
            raise ProtocolError(f"sim {msg.sim_id}: a block must be 2-D with at least one row")
        if msg.row_offset < 0 or msg.row_offset + msg.rows > msg.global_rows:
            raise ProtocolError(f"sim {msg.sim_id}: rows [{msg.row_offset}, "
                                f"{msg.row_offset + msg.rows}) outside 0..{msg.global_rows}")
        shape = (msg.global_rows, int(block.shape[1]))
        sim = self._sims.get(msg.sim_id)
        if sim is None:
            sim = self._sims[msg.sim_id] = _Sim(shape, block.dtype)
        elif sim.shape is None:
            sim.shape, sim.dtype = shape, block.dtype
        self._check_shape(msg.sim_id, sim, shape, block.dtype)
        if msg.step in sim.completed:
            self.duplicates += 1
            return None
        if sim.done:
            self.stale += 1
            return None
        self._check_nranks(msg.sim_id, sim, msg.nranks)
        self._check_layout(msg.sim_id, sim, msg.rank, msg.row_offset, msg.rows)
        if msg.nranks == 1:  # the whole field in one block: nothing to reassemble or copy
            sim.completed.add(msg.step)
            return msg.sim_id, msg.step, block
        part = sim.partial.get(msg.step)
        if part is None:
            if len(sim.partial) >= self.max_partial_steps:
                raise ProtocolError(f"sim {msg.sim_id}: more than {self.max_partial_steps} "
                                    "incomplete steps buffered")
            part = sim.partial[msg.step] = _Partial(np.empty(sim.shape, sim.dtype), set())
        elif msg.rank in part.ranks:
            self.duplicates += 1
            return None
        part.field[msg.row_offset:msg.row_offset + msg.rows] = block
        part.ranks.add(msg.rank)
        if len(part.ranks) < msg.nranks:
            return None
        del sim.partial[msg.step]
        sim.completed.add(msg.step)
        return msg.sim_id, msg.step, part.field

    def finish(self, msg: FinishMessage) -> bool:
        """Record one rank's ``FINISH``; True exactly once, when every rank has finished.
        A rank may finish before sending anything (its solver failed at once): the server
        then hands the simulation out again without waiting for a timeout."""
        sim = self._sims.get(msg.sim_id)
        if sim is None:
            sim = self._sims[msg.sim_id] = _Sim(None, None)
        if sim.done or msg.rank in sim.finished:
            self.duplicates += 1
            return False
        self._check_nranks(msg.sim_id, sim, msg.nranks)
        sim.finished.add(msg.rank)
        if len(sim.finished) < msg.nranks:
            return False
        sim.done = True
        sim.partial.clear()  # steps still incomplete now can never complete
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
        self._sims[sim_id] = _Sim(sim.shape, sim.dtype, completed=sim.completed)

    def completed_steps(self, sim_id: int) -> frozenset[int]:
        """Steps of ``sim_id`` already handed out by :meth:`add`."""
        sim = self._sims.get(sim_id)
        return frozenset(sim.completed) if sim else frozenset()

    def is_finished(self, sim_id: int) -> bool:
        sim = self._sims.get(sim_id)
        return bool(sim and sim.done)

    def partial_steps(self, sim_id: int) -> int:
        sim = self._sims.get(sim_id)
        return len(sim.partial) if sim else 0

    @property
    def buffered_bytes(self) -> int:
        """Memory held by incomplete steps, all simulations together."""
        return sum(p.field.nbytes for s in self._sims.values() for p in s.partial.values())

    @staticmethod
    def _check_shape(sim_id: int, sim: _Sim, shape: tuple[int, int], dtype: np.dtype) -> None:
        if shape != sim.shape:
            raise ProtocolError(f"sim {sim_id}: field shape {shape[0]}x{shape[1]}, expected "
                                f"{sim.shape[0]}x{sim.shape[1]}")
        if dtype != sim.dtype:
            raise ProtocolError(f"sim {sim_id}: dtype {dtype}, expected {sim.dtype}")

    @staticmethod
    def _check_nranks(sim_id: int, sim: _Sim, nranks: int) -> None:
        if sim.nranks is None:
            if sim.shape is not None and nranks > sim.shape[0]:
                raise ProtocolError(f"sim {sim_id}: {nranks} ranks for {sim.shape[0]} rows")
            sim.nranks = nranks
        elif nranks != sim.nranks:
            raise ProtocolError(f"sim {sim_id}: nranks {nranks}, expected {sim.nranks}")

    @staticmethod
    def _check_layout(sim_id: int, sim: _Sim, rank: int, offset: int, rows: int) -> None:
        if rank >= (sim.nranks or 0):
            raise ProtocolError(f"sim {sim_id}: rank {rank} out of range for {sim.nranks} ranks")
        known = sim.layout.get(rank)
        if known is not None:
            if known != (offset, rows):
                raise ProtocolError(f"sim {sim_id}: rank {rank} sent rows [{offset}, "
                                    f"{offset + rows}), earlier [{known[0]}, {sum(known)})")
            return
        for other, (o, n) in sim.layout.items():
            if offset < o + n and o < offset + rows:
                raise ProtocolError(f"sim {sim_id}: rank {rank} rows [{offset}, {offset + rows})"
                                    f" overlap rank {other} rows [{o}, {o + n})")
        sim.layout[rank] = (offset, rows)
        if len(sim.layout) == sim.nranks and sum(n for _, n in sim.layout.values()) != \
                sim.shape[0]:
            del sim.layout[rank]
            raise ProtocolError(f"sim {sim_id}: the blocks of {sim.nranks} ranks do not cover "
                                f"the {sim.shape[0]} rows")
