"""Wire protocol: round trips, every malformed case, and a fuzz test that only ProtocolError
escapes ``decode`` (a receiver must be able to count and skip anything)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breed.protocol import (
    FINISH_BODY,
    HEADER,
    MAGIC,
    MAX_CONTROL_BYTES,
    PROTOCOL_VERSION,
    STEP_BODY,
    STEPS_BODY,
    AuthError,
    ControlMessage,
    FinishMessage,
    Kind,
    ProtocolError,
    StepMessage,
    StepRun,
    check_token,
    decode,
    encode_control,
    encode_finish,
    encode_step,
    encode_steps,
    queue_messages,
    token_from_hex,
)

TOKEN = bytes(range(32))


def header(
    kind: int = Kind.REQUEST,
    token: bytes = TOKEN,
    magic: bytes = MAGIC,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    return HEADER.pack(magic, version, kind, token)


def step_frames(**kw) -> list[bytes]:
    block = kw.pop("block", np.arange(12.0).reshape(3, 4))
    return encode_step(TOKEN, 5, 7, block, rank=1, nranks=3, row_offset=2, global_rows=10, **kw)


# -- round trips ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind", sorted(k for k in Kind if k not in (Kind.STEP, Kind.STEPS, Kind.FINISH))
)
def test_control_round_trip(kind):
    body = {"sim_id": 3, "params": [1.5, 2.0], "data": "tcp://127.0.0.1:5", "x": None}
    msg = decode(encode_control(kind, TOKEN, body), TOKEN)
    assert msg == ControlMessage(kind, body)
    assert decode(encode_control(kind, TOKEN), TOKEN) == ControlMessage(kind, {})


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f8", "<f4"])
def test_step_round_trip_is_bit_exact(dtype):
    block = np.random.default_rng(0).standard_normal((3, 4)).astype(dtype)
    frames = step_frames(block=block)
    assert frames[2] == block.astype(np.dtype(block.dtype).newbyteorder("<")).tobytes()
    msg = decode(frames, TOKEN)
    assert isinstance(msg, StepMessage)
    assert (
        msg.sim_id,
        msg.step,
        msg.rank,
        msg.nranks,
        msg.row_offset,
        msg.global_rows,
        msg.rows,
        msg.field,
    ) == (5, 7, 1, 3, 2, 10, 3, 0)
    assert msg.block.dtype.isnative and msg.block.dtype.itemsize == block.dtype.itemsize
    assert np.array_equal(msg.block, block)  # may be a read-only view of the frame


def test_step_from_non_contiguous_block():
    full = np.arange(40.0).reshape(8, 5)
    msg = decode(encode_step(TOKEN, 0, 0, full[::2, 1:], global_rows=4), TOKEN)
    assert np.array_equal(msg.block, full[::2, 1:])


def test_step_field_index_round_trips():
    msg = decode(step_frames(field=4), TOKEN)
    assert isinstance(msg, StepMessage) and msg.field == 4


def test_step_blocks_of_one_or_many_axes_travel_as_rows():
    col = decode(encode_step(TOKEN, 0, 0, np.arange(5.0)), TOKEN)
    assert col.block.shape == (5, 1) and np.array_equal(col.block[:, 0], np.arange(5.0))
    cube = np.arange(24.0).reshape(2, 3, 4)
    msg = decode(encode_step(TOKEN, 0, 0, cube), TOKEN)
    assert msg.block.shape == (2, 12) and np.array_equal(msg.block, cube.reshape(2, 12))


@pytest.mark.parametrize("dtype", [np.float32, ">f8"])
def test_steps_round_trip_is_bit_exact_and_splits_into_steps(dtype):
    rng = np.random.default_rng(1)
    blocks = [rng.standard_normal((3, 4)).astype(dtype) for _ in range(5)]
    frames = encode_steps(TOKEN, 5, 7, blocks, rank=1, nranks=3, row_offset=2, global_rows=10)
    assert len(frames[1]) == STEPS_BODY.size == 37
    assert frames[2] == b"".join(
        b.astype(np.dtype(b.dtype).newbyteorder("<")).tobytes() for b in blocks
    )
    run = decode(frames, TOKEN)
    assert isinstance(run, StepRun)
    assert (run.step, run.count, run.last_step, run.rows) == (7, 5, 11, 3)
    steps = run.split()
    assert [m.step for m in steps] == [7, 8, 9, 10, 11]
    for m, b in zip(steps, blocks, strict=True):
        assert (m.sim_id, m.rank, m.nranks, m.row_offset, m.global_rows) == (5, 1, 3, 2, 10)
        assert m.block.dtype.isnative and np.array_equal(m.block, b)


def test_steps_that_do_not_add_up_are_malformed():
    frames = encode_steps(TOKEN, 0, 0, [np.zeros((2, 3))] * 4)
    with pytest.raises(ProtocolError, match="payload is"):
        decode([frames[0], frames[1], frames[2][:-8]], TOKEN)
    zero = STEPS_BODY.pack(*STEPS_BODY.unpack(frames[1])[:-1], 0)
    with pytest.raises(ProtocolError, match="count of 0"):
        decode([frames[0], zero, b""], TOKEN)
    with pytest.raises(ProtocolError, match="STEPS body"):
        decode([frames[0], frames[1][:35], frames[2]], TOKEN)  # a STEP body under STEPS
    with pytest.raises(ValueError, match="share shape"):
        encode_steps(TOKEN, 0, 0, [np.zeros((2, 3)), np.zeros((3, 3))])


def test_queued_messages_keep_about_64_steps():
    assert [queue_messages(k) for k in (1, 8, 32, 64, 100)] == [64, 8, 2, 2, 2]


def test_finish_round_trip():
    assert decode(encode_finish(TOKEN, 9, 101, rank=2, nranks=4), TOKEN) == FinishMessage(
        9, 2, 4, 101
    )


def test_zero_copy_frames_decode():
    frames = [zmq.Frame(f) for f in step_frames()]
    assert isinstance(decode(frames, TOKEN), StepMessage)
    assert isinstance(decode([memoryview(f) for f in step_frames()], TOKEN), StepMessage)


# -- tokens -----------------------------------------------------------------------------------
def test_token_from_hex():
    assert token_from_hex(" " + TOKEN.hex() + "\n") == TOKEN
    with pytest.raises(AuthError, match="hexadecimal"):
        token_from_hex("zz" * 32)
    with pytest.raises(AuthError, match="32 bytes"):
        token_from_hex("ab" * 31)


def test_wrong_token_is_an_auth_error_for_every_kind():
    other = bytes(32)
    for frames in (
        encode_control(Kind.REQUEST, other),
        encode_step(other, 0, 0, np.zeros((1, 1))),
        encode_finish(other, 0, 0),
    ):
        with pytest.raises(AuthError, match="token"):
            decode(frames, TOKEN)
    assert check_token(TOKEN, TOKEN) and not check_token(TOKEN, other)


# -- malformed input --------------------------------------------------------------------------
FIN = FINISH_BODY.pack(1, 0, 1, 3)


def step_body(**over) -> bytes:
    f = dict(sim_id=1, step=0, rank=0, nranks=1, field=0, offset=0, rows=2, grows=2, cols=3, code=2)
    f.update(over)
    return STEP_BODY.pack(*f.values())


MALFORMED = {
    "no frames": ([], "at least 2"),
    "one frame": ([header()], "at least 2"),
    "not a list": (b"abc", "at least 2"),
    "short header": ([header()[:-1], b"{}"], "header"),
    "long header": ([header() + b"x", b"{}"], "header"),
    "bad magic": ([header(magic=b"HTTP"), b"{}"], "magic"),
    "wrong version": ([header(version=PROTOCOL_VERSION + 1), b"{}"], "version"),
    "unknown kind": ([header(kind=200), b"{}"], "kind"),
    "control with 3 frames": ([header(), b"{}", b""], "2 frames"),
    "finish with 3 frames": ([header(Kind.FINISH), FIN, b""], "2 frames"),
    "finish body short": ([header(Kind.FINISH), FIN[:-1]], "wrong size"),
    "finish rank >= nranks": ([header(Kind.FINISH), FINISH_BODY.pack(1, 2, 2, 3)], "rank"),
    "finish zero ranks": ([header(Kind.FINISH), FINISH_BODY.pack(1, 0, 0, 3)], "rank"),
    "step with 2 frames": ([header(Kind.STEP), step_body()], "3 frames"),
    "step with 4 frames": ([header(Kind.STEP), step_body(), bytes(48), b""], "3 frames"),
    "step body short": ([header(Kind.STEP), step_body()[:-1], bytes(48)], "wrong size"),
    "step rank >= nranks": ([header(Kind.STEP), step_body(rank=1), bytes(48)], "rank"),
    "step dtype code": ([header(Kind.STEP), step_body(code=9), bytes(48)], "dtype"),
    "step zero rows": ([header(Kind.STEP), step_body(rows=0), b""], "rows"),
    "step zero cols": ([header(Kind.STEP), step_body(cols=0), b""], "shape"),
    "step huge shape": ([header(Kind.STEP), step_body(grows=(1 << 24) + 1, rows=1), b""], "shape"),
    "step huge cols": ([header(Kind.STEP), step_body(cols=(1 << 28) + 1), b""], "shape"),
    "step rows past end": ([header(Kind.STEP), step_body(offset=1), bytes(48)], "rows"),
    "truncated payload": ([header(Kind.STEP), step_body(), bytes(47)], "payload"),
    "long payload": ([header(Kind.STEP), step_body(), bytes(49)], "payload"),
    "float32 size for float64": ([header(Kind.STEP), step_body(code=1), bytes(48)], "payload"),
    "garbage json": ([header(), b"{not json"], "JSON"),
    "not utf-8": ([header(), b"\xff\xfe"], "JSON"),
    "json array": ([header(), b"[1, 2]"], "object"),
    "json deeply nested": ([header(), b"[" * 30_000 + b"]" * 30_000], "undecodable|JSON"),
    "control too large": ([header(), b" " * (MAX_CONTROL_BYTES + 1)], "too large"),
    "str frames": (["abc", "def"], "undecodable"),
    "none frames": ([None, None], "undecodable"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_message_raises_protocol_error(name):
    frames, match = MALFORMED[name]
    with pytest.raises(ProtocolError, match=match) as info:
        decode(frames, TOKEN)
    assert "\n" not in str(info.value)


def test_oversized_payload_is_refused_before_use():
    big = np.zeros((512, 512))
    frames = encode_step(TOKEN, 0, 0, big)
    with pytest.raises(ProtocolError, match="exceeds the maximum"):
        decode(frames, TOKEN, max_payload=big.nbytes - 1)
    with pytest.raises(ProtocolError, match="shape"):
        decode(frames, TOKEN, max_rows=100)
    assert isinstance(decode(frames, TOKEN, max_payload=big.nbytes), StepMessage)


def test_encoders_refuse_what_they_cannot_encode():
    with pytest.raises(ValueError, match="at least one axis"):
        encode_step(TOKEN, 0, 0, np.zeros(()))
    with pytest.raises(ValueError, match="dtype"):
        encode_step(TOKEN, 0, 0, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="token"):
        encode_control(Kind.PING, b"short")
    with pytest.raises(ValueError, match="too large"):
        encode_control(Kind.PING, TOKEN, {"x": "y" * MAX_CONTROL_BYTES})
    with pytest.raises(ValueError):
        encode_control(Kind.PING, TOKEN, {"x": float("nan")})  # strict JSON only


# -- fuzzing ----------------------------------------------------------------------------------
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_decodes_or_protocol_error(frames) -> None:
    try:
        msg = decode(frames, TOKEN)
    except ProtocolError:
        return
    assert isinstance(msg, StepMessage | FinishMessage | ControlMessage)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_fuzz_random_frames(frames):
    assert_decodes_or_protocol_error(frames)


@FUZZ
@given(
    kind=st.integers(0, 255),
    version=st.sampled_from([PROTOCOL_VERSION, 0, 65535]),
    body=st.binary(max_size=STEP_BODY.size + 8),
    payload=st.lists(st.binary(max_size=64), max_size=2),
)
def test_fuzz_valid_header_random_body(kind, version, body, payload):
    assert_decodes_or_protocol_error([header(kind, version=version), body, *payload])


@FUZZ
@given(
    fields=st.tuples(
        st.integers(0, 2**64 - 1),
        st.integers(0, 2**32 - 1),
        st.integers(0, 2**16 - 1),
        st.integers(0, 2**16 - 1),
        st.integers(0, 2**16 - 1),
        *[st.integers(0, 2**32 - 1)] * 4,
        st.integers(0, 255),
    ),
    payload=st.binary(max_size=256),
)
def test_fuzz_step_header_fields(fields, payload):
    assert_decodes_or_protocol_error([header(Kind.STEP), STEP_BODY.pack(*fields), payload])


@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_messages(data):
    frames = data.draw(
        st.sampled_from(
            [
                step_frames(),
                encode_finish(TOKEN, 1, 2),
                encode_control(Kind.ASSIGN, TOKEN, {"sim_id": 1, "params": [1, 2, 3, 4, 5]}),
            ]
        )
    )
    frames = [bytearray(f) for f in frames]
    i = data.draw(st.integers(0, len(frames) - 1))
    if frames[i]:
        op = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
        j = data.draw(st.integers(0, len(frames[i]) - 1))
        if op == "flip":
            frames[i][j] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del frames[i][j:]
        else:
            frames[i] += data.draw(st.binary(min_size=1, max_size=16))
    assert_decodes_or_protocol_error([bytes(f) for f in frames])


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=20,
    )
)
def test_fuzz_json_bodies(value):
    body = json.dumps(value).encode()
    try:
        msg = decode([header(Kind.WAIT), body], TOKEN)
    except ProtocolError:
        assert not isinstance(value, dict)
        return
    assert msg == ControlMessage(Kind.WAIT, value)


def test_struct_sizes_are_stable():
    """The layout is the wire contract: changing it needs a new PROTOCOL_VERSION."""
    assert (HEADER.size, STEP_BODY.size, FINISH_BODY.size) == (39, 35, 16)
    assert struct.calcsize("!QIHHHIIIIB") == STEP_BODY.size
