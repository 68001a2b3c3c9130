"""The server side of the conformance suite: scripted exchanges over real ZeroMQ sockets.

:class:`ScriptedServer` binds a control ROUTER and a data ROUTER on 127.0.0.1 and answers
each REQUEST with the next entry of its script (``("assign", overrides)``, ``("wait", s)``,
``("stop",)``, ``("reject", reason)``, ``("gone",)``: close both sockets without a word). It
records every message a client sends, answers each FINISH on the client's data connection
(PONG, or REJECT when steps are missing) and can REJECT the first STEP of a simulation. A
STEPS message (several steps, offered by an ASSIGN's ``batch``) is recorded as its steps. It
speaks only what docs/PROTOCOL.md specifies, so any client implementation can be run
against it (tests/conformance/test_conformance.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from breed.protocol import (
    ControlMessage,
    FinishMessage,
    Kind,
    ProtocolError,
    StepMessage,
    StepRun,
    decode,
    encode_control,
)

PROBLEM: dict[str, Any] = {
    "name": "conformance",
    "steps": 3,
    "parameters": [{"name": "a", "low": 0.0, "high": 1.0}, {"name": "b", "low": 0.0, "high": 9.0}],
    "fields": [
        {"name": "u", "shape": [6, 5], "dtype": "float64"},
        {"name": "v", "shape": [4, 2, 3], "dtype": "float32"},
    ],
    "settings": {"grid": 6},
}


def expected_block(params: list[float], t: int, k: int, shape: list[int]) -> np.ndarray:
    """What the suite's reference clients send: every value sum(params) + t + field index."""
    return np.full((shape[0], int(np.prod(shape[1:]))), sum(params) + t + k)


class ScriptedServer(threading.Thread):
    def __init__(self, token: bytes, script: list[tuple], reject_step: bool = False) -> None:
        super().__init__(daemon=True)
        self.token, self.script, self.reject_step = token, deque(script), reject_step
        self.ctx = zmq.Context()
        self.control = self.ctx.socket(zmq.ROUTER)
        self.data = self.ctx.socket(zmq.ROUTER)
        for s in (self.control, self.data):
            s.setsockopt(zmq.LINGER, 0)
        port = self.control.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.data_address = f"tcp://127.0.0.1:{self.data.bind_to_random_port('tcp://127.0.0.1')}"
        self.requests: list[dict] = []
        self.aborts: list[dict] = []
        self.steps: list[StepMessage] = []  # a STEPS message as the steps it carries
        self.step_messages: list[int] = []  # per data message with steps: how many it carried
        self.finishes: list[FinishMessage] = []
        self.assigned: dict[int, list[float]] = {}
        self.expect_steps: dict[int, int] = {}
        self.undecodable = 0
        self.gone = threading.Event()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.next_id = 0

    def run(self) -> None:
        try:
            poller = zmq.Poller()
            poller.register(self.control, zmq.POLLIN)
            poller.register(self.data, zmq.POLLIN)
            while not self.stop.is_set() and not self.gone.is_set():
                events = dict(poller.poll(20))
                if self.control in events:
                    self._on_control(self.control.recv_multipart())
                if self.data in events and not self.gone.is_set():
                    self._on_data(self.data.recv_multipart())
        except BaseException as exc:  # surfaced by the fixture
            self.errors.append(exc)
        finally:
            self.control.close(0)
            self.data.close(0)
            self.ctx.term()

    def _reply(self, ident: bytes, kind: Kind, body: dict) -> None:
        self.control.send_multipart([ident, b"", *encode_control(kind, self.token, body)])

    def _on_control(self, frames: list[bytes]) -> None:
        ident = frames[0]
        try:
            msg = decode(frames[2:], self.token)
        except ProtocolError:
            self.undecodable += 1
            self._reply(ident, Kind.REJECT, {"reason": "wrong run token"})
            return
        assert isinstance(msg, ControlMessage)
        if msg.kind is Kind.ABORT:
            self.aborts.append(msg.body)
            self._reply(ident, Kind.PONG, {})
            return
        self.requests.append(msg.body)
        step = self.script.popleft() if self.script else ("stop",)
        if step[0] == "assign":
            sim_id, self.next_id = self.next_id, self.next_id + 1
            body = {
                "sim_id": sim_id,
                "params": [0.25 + sim_id, 2.0],
                "attempt": 0,
                "data": self.data_address,
                **PROBLEM,
                **(step[1] if len(step) > 1 else {}),
            }
            self.assigned[sim_id] = body["params"]
            self.expect_steps[sim_id] = body["steps"] + 1
            self._reply(ident, Kind.ASSIGN, body)
        elif step[0] == "wait":
            self._reply(ident, Kind.WAIT, {"retry_after": step[1]})
        elif step[0] == "reject":
            self._reply(ident, Kind.REJECT, {"reason": step[1]})
        elif step[0] == "gone":
            self.gone.set()
        else:
            self._reply(ident, Kind.STOP, {})

    def _answer(self, ident: bytes, kind: Kind, body: dict) -> None:
        self.data.send_multipart([ident, *encode_control(kind, self.token, body)])

    def _on_data(self, frames: list[bytes]) -> None:
        ident = frames[0]
        try:
            msg = decode(frames[1:], self.token)
        except ProtocolError:
            self.undecodable += 1
            return
        if isinstance(msg, StepMessage | StepRun):
            self.step_messages.append(msg.count)
            for one in msg.split():
                self.steps.append(
                    StepMessage(
                        one.sim_id,
                        one.step,
                        one.rank,
                        one.nranks,
                        one.row_offset,
                        one.global_rows,
                        np.array(one.block),
                        one.field,
                    )
                )
            if self.reject_step:
                self._answer(
                    ident,
                    Kind.REJECT,
                    {
                        "reason": "field u: 6 rows x 4 values per row, expected 5",
                        "sim_id": msg.sim_id,
                    },
                )
        elif isinstance(msg, FinishMessage):
            self.finishes.append(msg)
            if msg.steps_sent == self.expect_steps.get(msg.sim_id) and not self.reject_step:
                self._answer(ident, Kind.PONG, {"sim_id": msg.sim_id})
            else:
                self._answer(ident, Kind.REJECT, {"reason": "refused", "sim_id": msg.sim_id})

    def close(self) -> None:
        self.stop.set()
        self.join(10)
        assert not self.is_alive(), "scripted server did not stop"
        assert not self.errors, self.errors


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False
