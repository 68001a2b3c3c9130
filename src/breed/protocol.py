"""Wire protocol between clients, launcher and server (ZeroMQ multipart messages).

Every message is a list of frames ``[header, body, *payload]``:

* ``header``: ``!4sHB32s`` = magic ``b"BRED"``, protocol version, message kind, run token
  (32 raw bytes). The token is compared in constant time (``hmac.compare_digest``).
* ``body``: a fixed ``struct`` for the hot data-path messages (``STEP``, ``FINISH``), small
  UTF-8 JSON objects for control messages. Never pickle: a peer must not be able to make the
  server execute code.
* ``payload`` (``STEP``, ``STEPS``): the raw bytes of one rank's block of one field of one time
  step (``STEPS``: of ``count`` consecutive steps, step-major), C order. A field of shape ``(n0, n1, ...)`` travels as rows of its first axis, the other
  axes flattened: a rank sends the rows ``[row_offset, row_offset + rows)`` of it (its slab),
  ``cols = n1 * n2 * ...``. Version 2 added the field index (several fields per step).

Socket patterns (why): clients ask for work on a ``REQ`` socket connected to the server's
``ROUTER`` (late binding: the server picks λ when asked); time steps go over ``DEALER`` →
``ROUTER`` with high-water marks on both ends, so a server that stops reading makes ``send``
block in the clients (backpressure) instead of dropping data, and the server can answer a
client that breaks the problem on its own connection (``REJECT``) and acknowledge its
``FINISH``. The launcher pings the control ``ROUTER``.

Any undecodable input raises :class:`ProtocolError` and nothing else, so a receiver can count
and skip it.
"""

from __future__ import annotations

import hmac
import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np

MAGIC = b"BRED"
PROTOCOL_VERSION = 2
TOKEN_BYTES = 32
HEADER = struct.Struct("!4sHB32s")
# sim_id, step, rank, nranks, field, row_offset, rows, global_rows, cols, dtype code
STEP_BODY = struct.Struct("!QIHHHIIIIB")
# STEP_BODY's fields (step = the first one), then count: consecutive steps in one message
STEPS_BODY = struct.Struct("!QIHHHIIIIBH")
# sim_id, rank, nranks, steps sent by this rank
FINISH_BODY = struct.Struct("!QHHI")
MAX_CONTROL_BYTES = 64 * 1024
QUEUED_STEPS = 64  # steps a data connection queues before a send blocks (backpressure)
DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024

DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f8")}
"""Payload dtypes: little-endian on the wire (a fixed order, so clients and servers of any
endianness agree; little because x86 and ARM then decode without a byte swap)."""
DTYPE_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}


def queue_messages(batch_steps: int) -> int:
    """A data connection's high-water mark in messages when each carries up to
    ``batch_steps`` steps: about :data:`QUEUED_STEPS` steps wait, as without batching."""
    return max(2, -(-QUEUED_STEPS // max(1, batch_steps)))


class ProtocolError(ValueError):
    """A message that cannot be decoded or fails validation. The only error decode raises."""


class AuthError(ProtocolError):
    """Well-formed message whose run token is missing or wrong."""


class Kind(IntEnum):
    REQUEST = 1  # client -> server: give me a simulation (JSON: client, job_id, nranks)
    ASSIGN = 2  # server -> client: sim_id, params, data endpoints
    STOP = 3  # server -> client: no more work, exit
    WAIT = 4  # server -> client: nothing now, ask again after retry_after s
    STEP = 5  # client -> server: one rank's block of one field of one time step
    FINISH = 6  # client -> server: this rank sent all its steps of a simulation
    ABORT = 7  # client -> server: this simulation failed on the client side
    PING = 8  # launcher -> server (JSON status of the launcher)
    PONG = 9  # server -> launcher (JSON status of the server)
    REJECT = 10  # server -> anyone: your message was refused (JSON: reason)
    STEPS = 11  # client -> server: one rank's blocks of one field of consecutive time steps


CONTROL_KINDS = {
    Kind.REQUEST,
    Kind.ASSIGN,
    Kind.STOP,
    Kind.WAIT,
    Kind.ABORT,
    Kind.PING,
    Kind.PONG,
    Kind.REJECT,
}


@dataclass(frozen=True)
class StepMessage:
    """One rank's row block ``[row_offset, row_offset+rows)`` of field ``field`` of step
    ``step`` of ``sim_id``."""

    sim_id: int
    step: int
    rank: int
    nranks: int
    row_offset: int
    global_rows: int
    block: np.ndarray  # (rows, cols), native byte order; may be a read-only view of the frame
    field: int = 0  # index into the problem's fields

    @property
    def rows(self) -> int:
        return int(self.block.shape[0])

    @property
    def count(self) -> int:
        return 1

    @property
    def last_step(self) -> int:
        return self.step

    def split(self) -> list[StepMessage]:
        return [self]


@dataclass(frozen=True)
class StepRun:
    """A ``STEPS`` message: one rank's row block of field ``field`` for the consecutive steps
    ``step .. step + count - 1``; ``block`` is ``(count, rows, cols)``."""

    sim_id: int
    step: int
    rank: int
    nranks: int
    row_offset: int
    global_rows: int
    block: np.ndarray  # (count, rows, cols), native byte order; may be a read-only view
    field: int = 0

    @property
    def rows(self) -> int:
        return int(self.block.shape[1])

    @property
    def count(self) -> int:
        return int(self.block.shape[0])

    @property
    def last_step(self) -> int:
        return self.step + self.count - 1

    def split(self) -> list[StepMessage]:
        """The run as the STEP messages it stands for (views of one frame)."""
        return [
            StepMessage(
                self.sim_id,
                self.step + i,
                self.rank,
                self.nranks,
                self.row_offset,
                self.global_rows,
                self.block[i],
                self.field,
            )
            for i in range(self.count)
        ]


@dataclass(frozen=True)
class FinishMessage:
    sim_id: int
    rank: int
    nranks: int
    steps_sent: int


@dataclass(frozen=True)
class ControlMessage:
    kind: Kind
    body: dict[str, Any] = field(default_factory=dict)


Message = StepMessage | StepRun | FinishMessage | ControlMessage


def token_from_hex(text: str) -> bytes:
    """Parse a run token as stored in ``token`` files and ``BREED_TOKEN`` (64 hex digits)."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError as exc:
        raise AuthError("run token is not hexadecimal") from exc
    if len(raw) != TOKEN_BYTES:
        raise AuthError(f"run token must be {TOKEN_BYTES} bytes ({2 * TOKEN_BYTES} hex digits)")
    return raw


def _header(kind: Kind, token: bytes) -> bytes:
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"token must be {TOKEN_BYTES} bytes")
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, int(kind), token)


def encode_control(kind: Kind, token: bytes, body: dict[str, Any] | None = None) -> list[bytes]:
    data = json.dumps(body or {}, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_CONTROL_BYTES:
        raise ValueError("control message too large")
    return [_header(kind, token), data]


def encode_step(
    token: bytes,
    sim_id: int,
    step: int,
    block: np.ndarray,
    *,
    rank: int = 0,
    nranks: int = 1,
    row_offset: int = 0,
    global_rows: int | None = None,
    field: int = 0,
) -> list[bytes]:
    """Frames for one block; the payload is the block's bytes (little-endian, C order).
    A block of more than two axes is sent as ``(rows, rest flattened)``; a 1-D one as a
    column."""
    block = _as_rows(block)
    code = _dtype_code(block)
    rows, cols = block.shape
    body = STEP_BODY.pack(
        sim_id,
        step,
        rank,
        nranks,
        field,
        row_offset,
        rows,
        rows if global_rows is None else global_rows,
        cols,
        code,
    )
    payload = np.ascontiguousarray(block, dtype=DTYPES[code]).tobytes()
    return [_header(Kind.STEP, token), body, payload]


def encode_steps(
    token: bytes,
    sim_id: int,
    first_step: int,
    blocks: np.ndarray | list[np.ndarray],
    *,
    rank: int = 0,
    nranks: int = 1,
    row_offset: int = 0,
    global_rows: int | None = None,
    field: int = 0,
) -> list[bytes]:
    """Frames for the blocks of consecutive steps ``first_step, first_step + 1, ...`` of one
    field and slab (one ``STEPS`` message); each block as :func:`encode_step` takes it."""
    parts = [_as_rows(np.asarray(b)) for b in blocks]
    if not parts or len(parts) > 0xFFFF:
        raise ValueError("a STEPS message carries 1 to 65535 steps")
    if any(p.shape != parts[0].shape or p.dtype != parts[0].dtype for p in parts):
        raise ValueError("the blocks of a STEPS message must share shape and dtype")
    code = _dtype_code(parts[0])
    rows, cols = parts[0].shape
    body = STEPS_BODY.pack(
        sim_id,
        first_step,
        rank,
        nranks,
        field,
        row_offset,
        rows,
        rows if global_rows is None else global_rows,
        cols,
        code,
        len(parts),
    )
    payload = np.ascontiguousarray(np.stack(parts), dtype=DTYPES[code]).tobytes()
    return [_header(Kind.STEPS, token), body, payload]


def _as_rows(block: np.ndarray) -> np.ndarray:
    """A block as ``(rows, rest flattened)``; a 1-D one as a column."""
    if block.ndim == 1:
        return block.reshape(-1, 1)
    if block.ndim > 2:
        return block.reshape(block.shape[0], -1)
    if block.ndim != 2:
        raise ValueError("a step block needs at least one axis")
    return block


def _dtype_code(block: np.ndarray) -> int:
    native = block.dtype.newbyteorder("=")
    if native not in DTYPE_CODES:
        raise ValueError(f"unsupported dtype {block.dtype}; use float32 or float64")
    return DTYPE_CODES[native]


def encode_finish(
    token: bytes, sim_id: int, steps_sent: int, *, rank: int = 0, nranks: int = 1
) -> list[bytes]:
    return [_header(Kind.FINISH, token), FINISH_BODY.pack(sim_id, rank, nranks, steps_sent)]


def check_token(received: bytes, expected: bytes) -> bool:
    """Constant-time comparison, so response timing leaks nothing about the token."""
    return hmac.compare_digest(received, expected)


def decode(
    frames: list[bytes],
    token: bytes,
    *,
    max_payload: int = DEFAULT_MAX_PAYLOAD,
    max_rows: int = 1 << 24,
    max_cols: int = 1 << 28,
) -> Message:
    """Decode and validate one message; raise :class:`ProtocolError` on anything wrong."""
    try:
        return _decode(frames, token, max_payload, max_rows, max_cols)
    except ProtocolError:
        raise
    except Exception as exc:  # belt and braces: nothing but ProtocolError may escape
        raise ProtocolError(f"undecodable message: {type(exc).__name__}") from exc


def _decode(
    frames: list[bytes], token: bytes, max_payload: int, max_rows: int, max_cols: int
) -> Message:
    if not isinstance(frames, list | tuple) or len(frames) < 2:
        raise ProtocolError("expected at least 2 frames")
    head = bytes(frames[0])
    if len(head) != HEADER.size:
        raise ProtocolError(f"header is {len(head)} bytes, expected {HEADER.size}")
    magic, version, kind_code, msg_token = HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not a breed message")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, this side speaks {PROTOCOL_VERSION}")
    try:
        kind = Kind(kind_code)
    except ValueError:
        raise ProtocolError(f"unknown message kind {kind_code}") from None
    if not check_token(msg_token, token):
        raise AuthError("wrong run token")
    body = bytes(frames[1])
    if kind is Kind.STEP or kind is Kind.STEPS:
        return _decode_step(frames, body, kind, max_payload, max_rows, max_cols)
    if len(frames) != 2:
        raise ProtocolError(f"{kind.name} takes 2 frames, got {len(frames)}")
    if kind is Kind.FINISH:
        if len(body) != FINISH_BODY.size:
            raise ProtocolError("FINISH body has the wrong size")
        sim_id, rank, nranks, steps = FINISH_BODY.unpack(body)
        _check_ranks(rank, nranks)
        return FinishMessage(sim_id, rank, nranks, steps)
    if len(body) > MAX_CONTROL_BYTES:
        raise ProtocolError("control body too large")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("control body is not UTF-8 JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("control body must be a JSON object")
    return ControlMessage(kind, obj)


def _check_ranks(rank: int, nranks: int) -> None:
    if nranks < 1 or rank >= nranks:
        raise ProtocolError(f"rank {rank} out of range for {nranks} ranks")


def _decode_step(
    frames: list[bytes], body: bytes, kind: Kind, max_payload: int, max_rows: int, max_cols: int
) -> StepMessage | StepRun:
    if len(frames) != 3:
        raise ProtocolError(f"{kind.name} takes 3 frames, got {len(frames)}")
    layout = STEP_BODY if kind is Kind.STEP else STEPS_BODY
    if len(body) != layout.size:
        raise ProtocolError(f"{kind.name} body has the wrong size")
    sim_id, step, rank, nranks, fld, offset, rows, grows, cols, code, *more = layout.unpack(body)
    count = more[0] if more else 1
    if count == 0:
        raise ProtocolError("STEPS with a count of 0")
    _check_ranks(rank, nranks)
    if code not in DTYPES:
        raise ProtocolError(f"unknown dtype code {code}")
    if not (0 < grows <= max_rows and 0 < cols <= max_cols):
        raise ProtocolError(f"field shape {grows}x{cols} out of range")
    if rows == 0 or offset + rows > grows:
        raise ProtocolError(f"rows [{offset}, {offset + rows}) outside 0..{grows}")
    payload = frames[2]
    size = len(payload)
    if size > max_payload:
        raise ProtocolError(f"payload of {size} bytes exceeds the maximum {max_payload}")
    dtype = DTYPES[code]
    if size != count * rows * cols * dtype.itemsize:
        raise ProtocolError(
            f"payload is {size} bytes, header says {count}x{rows}x{cols} {dtype.name}"
        )
    # a read-only view of the frame on little-endian hosts: the assembler copies it once
    values = np.frombuffer(payload, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    if kind is Kind.STEP:
        return StepMessage(
            sim_id, step, rank, nranks, offset, grows, values.reshape(rows, cols), fld
        )
    blocks = values.reshape(count, rows, cols)
    return StepRun(sim_id, step, rank, nranks, offset, grows, blocks, fld)
