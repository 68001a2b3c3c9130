"""The server's control socket: work requests, launcher pings, aborts (rank 0's ROUTER).

Requests are answered by late binding through the simulation table (``ASSIGN`` with λ, the
data address of the rank that owns the simulation, and what the client must stream: the
problem's steps and fields, see docs/ARCHITECTURE.md), ``WAIT`` or ``STOP``. Pings from the
launcher carry its job table and job keys, and are answered with the server's status. Job ids
are bound to the launcher's keys (:class:`~breed.security.JobKeys`): a REQUEST or ABORT naming a
job without its key is refused.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from breed.problems.problem import Problem
from breed.protocol import AuthError, ControlMessage, Kind, ProtocolError, decode, encode_control
from breed.security import JobKeys
from breed.server.simtable import SimTable

log = logging.getLogger("breed.server")
WAIT_S = 0.5  # retry_after of a WAIT


class ControlHandler:
    """Answers one control message at a time; the receiver thread owns the socket."""

    def __init__(
        self,
        token: bytes,
        table: SimTable,
        problem: Problem,
        counts: Counter[str],
        send: Callable[[list[bytes]], object],
        status: Callable[[], dict[str, Any]],
        on_launcher: Callable[[dict[str, Any]], None],
        on_assign: Callable[[int], None],
        on_abort: Callable[[int], None],
        data_address: Callable[[int], str],
        batch: dict[str, float | int] | None = None,
    ) -> None:
        self.token, self.table, self.problem, self.counts = token, table, problem, counts
        self.send, self.status, self.on_launcher = send, status, on_launcher
        self.on_assign, self.on_abort, self.data_address = on_assign, on_abort, data_address
        self.job_keys = JobKeys()  # the launcher's jobs, bound to their keys
        self._describe = problem.describe()
        if batch is not None:  # several steps per data message (docs/PROTOCOL.md 6.1)
            self._describe = {**self._describe, "batch": batch}

    def handle(self, frames: list[bytes]) -> bool:
        """Answer one ROUTER message; True if it carried the run token."""
        if len(frames) < 3 or frames[1] != b"":
            self._reject("control message without a REQ envelope", "malformed")
            return False
        ident, body = frames[0], frames[2:]
        try:
            msg = decode(body, self.token)
        except AuthError:
            self._reject("control message with a wrong or missing token", "rejected_token")
            self.reply(ident, Kind.REJECT, {"reason": "wrong run token"})
            return False
        except ProtocolError as exc:
            self._reject(f"malformed control message: {exc}", "malformed")
            self.reply(ident, Kind.REJECT, {"reason": f"malformed message: {exc}"})
            return False
        if not isinstance(msg, ControlMessage):
            self._reject("data message on the control socket", "malformed")
            self.reply(ident, Kind.REJECT, {"reason": "data message on the control socket"})
            return True
        if msg.kind in (Kind.REQUEST, Kind.ABORT):
            refused = self.job_keys.refusal(msg.body.get("job_id"), msg.body.get("job_key"))
            if refused:
                self._reject(f"{msg.kind.name} refused: {refused}", "bad_job_key")
                self.reply(ident, Kind.REJECT, {"reason": refused})
                return True
        if msg.kind is Kind.REQUEST:
            self._request(ident, msg.body)
        elif msg.kind is Kind.PING:
            self.job_keys.register(msg.body.get("job_keys"))
            self.on_launcher(msg.body)
            self.reply(ident, Kind.PONG, self.status())
        elif msg.kind is Kind.ABORT:
            self._abort(ident, msg.body)
        else:
            self.reply(ident, Kind.REJECT, {"reason": f"unexpected {msg.kind.name}"})
        return True

    def _request(self, ident: bytes, body: dict[str, Any]) -> None:
        job_id = body.get("job_id")
        job_id = str(job_id) if job_id is not None else None
        got = self.table.request(job_id, str(body.get("client", "?")))
        if isinstance(got, str):  # nothing to hand out now: "stop" or "wait"
            if got == "stop":
                self.reply(ident, Kind.STOP, {})
            else:
                self.reply(ident, Kind.WAIT, {"retry_after": WAIT_S})
        else:
            self.counts["assigned"] += 1
            self.on_assign(got.sim_id)  # before the reply: its data path must know the sim
            self.reply(
                ident,
                Kind.ASSIGN,
                {
                    "sim_id": got.sim_id,
                    "params": got.params,
                    "attempt": got.attempts,
                    "data": self.data_address(got.sim_id),
                    **self._describe,
                },
            )

    def _abort(self, ident: bytes, body: dict[str, Any]) -> None:
        """A client gives up its simulation: handed out again now. Only the job that holds
        the simulation may abort it (when jobs are bound to keys)."""
        sim_id = body.get("sim_id")
        if isinstance(sim_id, int) and self.table.known(sim_id):
            holder = self.table.job_of(sim_id)
            if self.job_keys.enforcing and holder is not None and str(body.get("job_id")) != holder:
                self._reject(
                    f"ABORT of simulation {sim_id} by job {body.get('job_id')!r}, held by {holder}",
                    "bad_job_key",
                )
                self.reply(ident, Kind.REJECT, {"reason": f"simulation {sim_id} is not this job's"})
                return
            outcome = self.table.fail(sim_id, f"client abort: {body.get('reason', '')}")
            self.on_abort(sim_id)
            log.warning("simulation %d aborted by its client -> %s", sim_id, outcome)
        self.reply(ident, Kind.PONG, {})

    def reply(self, ident: bytes, kind: Kind, body: dict[str, Any]) -> None:
        self.send([ident, b"", *encode_control(kind, self.token, body)])

    def _reject(self, text: str, counter: str) -> None:
        self.counts[counter] += 1
        n = self.counts[counter]
        if n <= 5 or n % 1000 == 0:
            log.warning("rejected (%s #%d): %s", counter, n, text)
