"""The public client API: how any solver streams into a breed run (Python; C and Fortran
bindings speak the same protocol, docs/ARCHITECTURE.md).

A client is started by the launcher with its address, token and job id in the environment
(``BREED_SERVER``, ``BREED_TOKEN``, ``BREED_JOB_ID``, ``BREED_JOB_KEY``; nothing to pass by
hand). It asks for the parameters of a simulation when it is ready to run one (late binding:
the server picks λ then), streams every time step's fields, and finishes::

    from breed.client import Client

    with Client() as client:
        while (job := client.request()) is not None:   # None: no more work
            state = my_setup(job.named)                 # {"nu": ..., "a": ...}
            for t in range(job.steps + 1):              # t = 0 is the initial state
                client.send(t, {"u": my_field(state, t)})
            client.finish()                             # raises if the server refused the data

``send`` takes one array for a one-field problem, else a mapping (or sequence, in the problem's
order) of arrays, each of the field's declared shape. Under MPI (``Client(comm=MPI.COMM_WORLD)``)
each rank sends its slab of the first axis, ``client.send(t, slab, row_offset=first_row)``;
rank 0 asks for work and broadcasts the assignment. A client that breaks the problem (a wrong
shape, dtype or number of steps) gets a ``REJECT`` from the server, which ``send``/``finish``
raise as a one-line :class:`ClientError` within a second; ``abort(reason)`` gives a simulation
back (the server runs it again). Backpressure: ``send`` blocks while the server is full; a
server that takes nothing for ``send_timeout`` seconds is an error, not a hang.

``python -m breed.client`` / ``breed client`` runs the paper's heat solver this way.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from breed import protocol, security
from breed.protocol import AuthError, Kind, ProtocolError

DEFAULT_TIMEOUT = 30.0
MAX_WAIT = 60.0


class ClientConfigError(ValueError):
    """Bad usage or environment (address, token, options): exit status 2."""


class ClientError(RuntimeError):
    """The run failed at run time (no server, refused, timed out): exit status 1.

    ``collective`` is True when every MPI rank raises it together (so no rank must abort the
    others).
    """

    def __init__(self, message: str, collective: bool = False) -> None:
        super().__init__(message)
        self.collective = collective


@dataclass(frozen=True)
class FieldInfo:
    """One field a time step must carry (the problem's)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Assignment:
    """One simulation handed out by the server (``ASSIGN`` body, docs/ARCHITECTURE.md)."""

    sim_id: int
    params: tuple[float, ...]
    data: str
    attempt: int = 0
    names: tuple[str, ...] = ()
    steps: int = 0  # send t = 0..steps
    fields: tuple[FieldInfo, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)  # the problem's, as configured
    batch: tuple[int, float] | None = None  # (most steps per message, linger s): PROTOCOL 6.1

    @property
    def named(self) -> dict[str, float]:
        """λ by parameter name."""
        return dict(zip(self.names, self.params, strict=True))

    @property
    def solver(self) -> dict[str, Any]:
        """The heat preset's solver settings (its ``settings``)."""
        return self.settings

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Assignment:
        """Validate an ``ASSIGN`` body; a malformed one is the server's fault (ClientError)."""
        try:
            sim_id = body["sim_id"]
            params = tuple(float(p) for p in body["params"])
            data = body["data"]
            attempt = int(body.get("attempt", 0))
            names = tuple(str(p["name"]) for p in body["parameters"])
            steps = int(body["steps"])
            fields = tuple(
                FieldInfo(str(f["name"]), tuple(int(n) for n in f["shape"]), str(f["dtype"]))
                for f in body["fields"]
            )
            settings = dict(body.get("settings") or {})
            batch = _batch_of(body.get("batch"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(f"malformed ASSIGN from the server: {exc!r}") from None
        if isinstance(sim_id, bool) or not isinstance(sim_id, int) or sim_id < 0:
            raise ClientError(f"malformed ASSIGN: sim_id {sim_id!r}")
        if len(params) != len(names) or not params or not all(math.isfinite(p) for p in params):
            raise ClientError(f"malformed ASSIGN: params {body['params']!r}")
        if not isinstance(data, str) or not data:
            raise ClientError(f"malformed ASSIGN: data address {data!r}")
        if not fields or any(f.dtype not in ("float32", "float64") or not f.shape for f in fields):
            raise ClientError(f"malformed ASSIGN: fields {body['fields']!r}")
        return cls(sim_id, params, data, attempt, names, steps, fields, settings, batch)


def _batch_of(offer: Any) -> tuple[int, float] | None:
    """The ASSIGN's ``batch`` offer ``{"steps": k, "linger": s}``, or None (no batching)."""
    if offer is None:
        return None
    steps, linger = offer["steps"], float(offer.get("linger", 0.0))
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 0xFFFF:
        raise ValueError(f"batch steps {steps!r}")
    if not (math.isfinite(linger) and linger >= 0):
        raise ValueError(f"batch linger {linger!r}")
    return steps, linger


@dataclass
class _Held:
    """Consecutive steps of one field held for one STEPS message (copies: a solver may
    reuse its arrays)."""

    first: int
    row_offset: int
    since: float  # monotonic time the first was held
    blocks: list[np.ndarray]

    def follows(self, step: int, row_offset: int, block: np.ndarray) -> bool:
        return (
            step == self.first + len(self.blocks)
            and row_offset == self.row_offset
            and block.shape == self.blocks[0].shape
            and block.dtype == self.blocks[0].dtype
        )


def load_token(token: bytes | str | None = None) -> bytes:
    """The run token from the argument, ``BREED_TOKEN`` (hex) or ``BREED_TOKEN_FILE``."""
    try:
        if isinstance(token, bytes):
            if len(token) != protocol.TOKEN_BYTES:
                raise AuthError(f"run token must be {protocol.TOKEN_BYTES} bytes")
            return token
        if token is not None:
            return protocol.token_from_hex(token)
        if os.environ.get("BREED_TOKEN"):
            return protocol.token_from_hex(os.environ["BREED_TOKEN"])
        path = os.environ.get("BREED_TOKEN_FILE")
        if path:
            try:
                return protocol.token_from_hex(Path(path).read_text())
            except OSError as exc:
                raise ClientConfigError(
                    f"cannot read BREED_TOKEN_FILE {path}: {exc.strerror}"
                ) from None
    except AuthError as exc:
        raise ClientConfigError(str(exc)) from None
    raise ClientConfigError("no run token: set BREED_TOKEN or BREED_TOKEN_FILE")


def timeout_from_env(value: float | None = None) -> float:
    """Seconds to wait for a server reply: argument, ``BREED_CLIENT_TIMEOUT`` or 30."""
    raw: Any = (
        value if value is not None else os.environ.get("BREED_CLIENT_TIMEOUT", DEFAULT_TIMEOUT)
    )
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        raise ClientConfigError(f"timeout must be a number of seconds, got {raw!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ClientConfigError(f"timeout must be > 0 seconds, got {raw!r}")
    return seconds


class Client:
    """One client process (or one MPI job): request, send, finish, abort. See module doc."""

    def __init__(
        self,
        server: str | None = None,
        token: bytes | str | None = None,
        *,
        job_id: str | None = None,
        timeout: float | None = None,
        send_timeout: float | None = None,
        sndhwm: int | None = None,
        comm: Any = None,
    ) -> None:
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.nranks = comm.Get_size() if comm is not None else 1
        self.server = server or os.environ.get("BREED_SERVER") or ""
        if not self.server:
            raise ClientConfigError("no server address: pass --server or set BREED_SERVER")
        self.token = load_token(token)
        self.job_id = job_id if job_id is not None else os.environ.get("BREED_JOB_ID")
        self.job_key = os.environ.get(security.ENV_JOB_KEY)  # proves the job id is ours
        self.once = os.environ.get(security.ENV_ONCE) == "1"  # one simulation per job
        self.finished = 0  # simulations this client finished
        self.timeout = timeout_from_env(timeout)
        # backpressure may legitimately stall a while; only a server gone for long is an error
        self.send_timeout = (
            max(10 * self.timeout, 60.0) if send_timeout is None else float(send_timeout)
        )
        self.sndhwm = sndhwm  # None: about 64 steps, whatever the batch (queue_messages)
        self._held: dict[int, _Held] = {}  # field index -> steps held for a STEPS message
        self.curve_serverkey = security.curve_from_env()  # BREED_CURVE_SERVERKEY: encrypt
        self.assignment: Assignment | None = None
        self._steps_sent = 0
        self._ctx = zmq.Context()
        self._req: zmq.Socket | None = None
        self._push: dict[str, zmq.Socket] = {}
        problem = None
        if self.rank == 0:
            try:
                self._req = self._connect_req()
            except ClientConfigError as exc:
                problem = str(exc)
        if self.nranks > 1:  # every rank must learn that rank 0 could not start
            problem = comm.bcast(problem, root=0)
        if problem is not None:
            self.close(discard=True)
            raise ClientConfigError(problem)

    # -- control path (rank 0) --------------------------------------------------------------
    def _connect_req(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
        try:
            if self.curve_serverkey is not None:
                security.make_curve_client(sock, self.curve_serverkey)
            sock.connect(self.server)
        except (zmq.ZMQError, ValueError) as exc:
            sock.close()
            raise ClientConfigError(
                f"invalid server address {self.server!r} or {security.ENV_CURVE}: {exc}"
            ) from None
        return sock

    def _call(self, kind: Kind, body: dict[str, Any]) -> protocol.ControlMessage:
        """One request/reply on the REQ socket; any failure is a one-line ClientError."""
        assert self._req is not None
        try:
            self._req.send_multipart(protocol.encode_control(kind, self.token, body))
            frames = self._req.recv_multipart()
        except zmq.Again:
            # a REQ socket that missed its reply cannot be reused: start a fresh one
            self._req.close()
            self._req = self._connect_req()
            raise ClientError(
                f"no reply from server {self.server} within {self.timeout:g} s "
                "(wrong address or server down?)"
            ) from None
        try:
            msg = protocol.decode(frames, self.token)
        except AuthError:
            raise ClientError(
                f"server {self.server} reply failed the run-token check "
                "(wrong BREED_TOKEN for this run?)"
            ) from None
        except ProtocolError as exc:
            raise ClientError(f"undecodable reply from server {self.server}: {exc}") from None
        if not isinstance(msg, protocol.ControlMessage):
            raise ClientError(f"unexpected {type(msg).__name__} reply from the server")
        if msg.kind is Kind.REJECT:
            reason = str(msg.body.get("reason", "no reason given"))
            raise ClientError(f"server rejected {kind.name}: {reason}")
        return msg

    def _request_root(self) -> Assignment | None:
        body = {
            "client": f"{socket.gethostname()}:{os.getpid()}",
            "job_id": self.job_id,
            "job_key": self.job_key,
            "nranks": self.nranks,
        }
        while True:
            msg = self._call(Kind.REQUEST, body)
            if msg.kind is Kind.ASSIGN:
                return Assignment.from_body(msg.body)
            if msg.kind is Kind.STOP:
                return None
            if msg.kind is Kind.WAIT:
                try:
                    delay = float(msg.body.get("retry_after", 1.0))
                except (TypeError, ValueError):
                    delay = 1.0
                time.sleep(min(max(delay, 0.01), MAX_WAIT) if math.isfinite(delay) else 1.0)
                continue
            raise ClientError(f"unexpected {msg.kind.name} reply to REQUEST")

    def request(self) -> Assignment | None:
        """Ask for the next simulation: an :class:`Assignment`, or None when told to stop."""
        if self.assignment is not None:
            raise ClientError(f"sim {self.assignment.sim_id} is still open: finish or abort it")
        if self.once and self.finished:
            return None
        error: str | None = None
        got: Assignment | None = None
        if self.rank == 0:
            try:
                got = self._request_root()
            except ClientError as exc:
                error = str(exc)
        if self.comm is not None and self.nranks > 1:
            error, got = self.comm.bcast((error, got), root=0)
        if error is not None:
            raise ClientError(error, collective=True)
        self.assignment = got
        self._steps_sent = 0
        self._held.clear()
        return self.assignment

    # -- data path (every rank) -------------------------------------------------------------
    def _data_socket(self, address: str) -> zmq.Socket:
        sock = self._push.get(address)
        if sock is None:
            # DEALER, not PUSH: the server answers on the same connection (REJECT, FINISH ack)
            sock = self._ctx.socket(zmq.DEALER)
            batch = self.assignment.batch if self.assignment is not None else None
            hwm = self.sndhwm or protocol.queue_messages(batch[0] if batch else 1)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.SNDTIMEO, int(self.send_timeout * 1000))
            # on close, keep trying to deliver what is queued, but not forever
            sock.setsockopt(zmq.LINGER, int(self.send_timeout * 1000))
            try:
                if self.curve_serverkey is not None:
                    security.make_curve_client(sock, self.curve_serverkey)
                sock.connect(address)
            except zmq.ZMQError as exc:
                sock.close()
                raise ClientError(
                    f"invalid data address {address!r} from the server: {exc}"
                ) from None
            self._push[address] = sock
        return sock

    def _push_frames(self, frames: list[bytes]) -> None:
        assert self.assignment is not None
        try:
            self._data_socket(self.assignment.data).send_multipart(frames, copy=False)
        except zmq.Again:
            raise ClientError(
                f"server {self.assignment.data} took no data for {self.send_timeout:g} s"
            ) from None

    def _answers(self, wait: float) -> protocol.ControlMessage | None:
        """The server's next answer on the data connection within ``wait`` s (a REJECT of
        the current simulation is raised as :class:`ClientError`; a late one of an earlier
        simulation, already given back, is dropped), or None."""
        assert self.assignment is not None
        sock = self._data_socket(self.assignment.data)
        if not sock.poll(int(wait * 1000)):
            return None
        try:
            msg = protocol.decode(sock.recv_multipart(), self.token)
        except ProtocolError as exc:
            raise ClientError(
                f"undecodable answer from server {self.assignment.data}: {exc}"
            ) from None
        if (
            isinstance(msg, protocol.ControlMessage)
            and msg.kind is Kind.REJECT
            and msg.body.get("sim_id", self.assignment.sim_id) == self.assignment.sim_id
        ):
            raise ClientError(
                f"server rejected the data of simulation "
                f"{self.assignment.sim_id}: "
                f"{msg.body.get('reason', 'no reason given')}"
            )
        return msg if isinstance(msg, protocol.ControlMessage) else None

    def send(self, step: int, fields: Any, row_offset: int = 0) -> None:
        """Push this rank's part of every field of one time step: one array for a one-field
        problem, else a mapping name -> array (or a sequence in the problem's order). Under
        MPI each array is this rank's rows ``[row_offset, row_offset + len(array))`` of the
        field's first axis. When the server offers batches (PROTOCOL.md 6.1) the step is held
        (a copy) and sent with the next ones of its field in one STEPS message: when ``k``
        are held, before a step that does not follow, at :meth:`finish`, or once the oldest
        held step is the offer's ``linger`` seconds old (checked here, at each send)."""
        job = self.assignment
        if job is None:
            raise ClientError("send() without an assignment: call request() first")
        self._answers(0.0)  # a REJECT for an earlier step: stop now, not at the end
        for k, (info, block) in enumerate(zip(job.fields, self._ordered(fields), strict=True)):
            block = np.asarray(block, dtype=info.dtype)
            if block.ndim == 0:
                raise ClientError(
                    f"field {info.name}: a scalar, the problem declares shape {list(info.shape)}"
                )
            if job.batch is not None:
                self._hold(k, step, block, row_offset, job.batch[0])
                continue
            frames = protocol.encode_step(
                self.token,
                job.sim_id,
                step,
                block,
                rank=self.rank,
                nranks=self.nranks,
                row_offset=row_offset,
                global_rows=info.shape[0],
                field=k,
            )
            self._push_frames(frames)
        if job.batch is not None and self._held:
            if time.monotonic() - min(h.since for h in self._held.values()) >= job.batch[1]:
                self._flush()
        self._steps_sent += 1

    def _hold(self, k: int, step: int, block: np.ndarray, row_offset: int, most: int) -> None:
        held = self._held.get(k)
        if held is not None and not held.follows(step, row_offset, block):
            self._flush(k)
            held = None
        if held is None:
            held = self._held[k] = _Held(step, row_offset, time.monotonic(), [])
        held.blocks.append(np.array(block, copy=True))
        if len(held.blocks) >= most:
            self._flush(k)

    def _flush(self, which: int | None = None) -> None:
        """Send what is held of one field (or of every field) as STEPS messages."""
        job = self.assignment
        assert job is not None
        for k in [which] if which is not None else sorted(self._held):
            held = self._held.pop(k)
            self._push_frames(
                protocol.encode_steps(
                    self.token,
                    job.sim_id,
                    held.first,
                    held.blocks,
                    rank=self.rank,
                    nranks=self.nranks,
                    row_offset=held.row_offset,
                    global_rows=job.fields[k].shape[0],
                    field=k,
                )
            )

    def _ordered(self, fields: Any) -> list[Any]:
        job = self.assignment
        assert job is not None
        if isinstance(fields, dict):
            names = [f.name for f in job.fields]
            unknown = sorted(set(fields) - set(names))
            missing = [n for n in names if n not in fields]
            if unknown or missing:
                raise ClientError(
                    f"send(): fields {unknown or missing} "
                    f"{'are not' if unknown else 'are missing from'} the "
                    f"problem's {names}"
                )
            return [fields[n] for n in names]
        if len(job.fields) == 1:
            # a sequence of one array (the problem's order) or the array itself: a field's
            # block has the field's rank, a sequence of one block one axis more
            one = isinstance(fields, list | tuple) and len(fields) == 1
            if one and np.ndim(fields) == len(job.fields[0].shape) + 1:
                return [fields[0]]
            return [fields]
        if isinstance(fields, list | tuple) and len(fields) == len(job.fields):
            return list(fields)
        raise ClientError(
            f"send(): the problem has {len(job.fields)} fields "
            f"{[f.name for f in job.fields]}: pass a mapping name -> array"
        )

    def finish(self) -> None:
        """Tell the server this rank sent all its steps of the current simulation, and wait
        for its answer: raises :class:`ClientError` if it refused any of them."""
        job = self.assignment
        if job is None:
            raise ClientError("finish() without an assignment")
        self._flush()  # every held step before FINISH (one connection keeps order)
        self._push_frames(
            protocol.encode_finish(
                self.token, job.sim_id, self._steps_sent, rank=self.rank, nranks=self.nranks
            )
        )
        deadline = time.monotonic() + self.send_timeout
        try:
            while True:  # the ack comes after every step this rank sent (one connection)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClientError(
                        f"server {job.data} did not acknowledge the end of "
                        f"simulation {job.sim_id} within {self.send_timeout:g} s"
                    )
                msg = self._answers(left)
                if (
                    msg is not None
                    and msg.kind is Kind.PONG
                    and msg.body.get("sim_id") == job.sim_id
                ):
                    self.finished += 1
                    break
        finally:
            self.assignment = None

    def abort(self, reason: str) -> bool:
        """Report the current simulation as failed (rank 0 only, best effort); True if heard."""
        if self.assignment is None:
            return False
        sim_id, self.assignment = self.assignment.sim_id, None
        self._held.clear()
        if self.rank != 0:
            return False
        try:
            self._call(
                Kind.ABORT,
                {
                    "sim_id": sim_id,
                    "reason": reason[:1000],
                    "job_id": self.job_id,
                    "job_key": self.job_key,
                },
            )
        except ClientError:
            return False
        return True

    def close(self, discard: bool = False) -> None:
        """Close the sockets; queued steps are still delivered for up to ``send_timeout``
        unless ``discard`` (after an error nobody will wait for them)."""
        if self._req is not None:
            self._req.close()
            self._req = None
        for sock in self._push.values():
            sock.close(0 if discard else None)
        self._push.clear()
        if not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(discard=exc_type is not None)


def mpi_world() -> Any:
    """COMM_WORLD when started by an MPI launcher with more than one rank, else None.

    Checked through the launcher's environment first so a serial client never initialises MPI.
    """
    size = next(
        (os.environ[v] for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE") if os.environ.get(v)), None
    )
    if size is None:  # PMIx (Slurm's srun --mpi=pmix) and MPICH's hydra say less
        if not any(os.environ.get(v) for v in ("PMIX_RANK", "MPI_LOCALNRANKS")):
            return None
    elif size.strip() in ("", "1"):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


if __name__ == "__main__":  # the heat client, as before
    from breed.problems.heat2d_client import main

    sys.exit(main())
