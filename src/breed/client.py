"""Streaming client API: ask the server for work, stream every time step, finish (or abort).

Solver-agnostic: any solver (serial or MPI) uses :class:`Client` like Melissa's client API::

    with Client() as client:                      # BREED_SERVER, BREED_TOKEN from the env
        while (job := client.request()) is not None:   # late binding: server picks lambda now
            for t, block in my_solver(job.params):
                client.send(t, block, row_offset, global_rows)
            client.finish()

Under MPI, rank 0 asks on a ``REQ`` socket and broadcasts the assignment; every rank pushes its
own row block of every step on a ``PUSH`` socket to the assignment's ``data`` address (the server
reassembles by offset, :mod:`breed.assembly`). The ``PUSH`` high-water mark makes ``send`` block
when the server is slow (backpressure, no data lost); a server that takes nothing for
``send_timeout`` seconds is reported as an error instead of hanging the job forever.

``python -m breed.client`` / ``breed client`` runs the heat solver (:mod:`breed.heatpde`) this
way, persistent by default: simulation after simulation until the server says ``STOP``, so one
process (or one MPI job) amortises its start-up over many cheap simulations.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from breed import protocol, security
from breed.cli import OneLineParser
from breed.protocol import AuthError, Kind, ProtocolError

DEFAULT_TIMEOUT = 30.0
SOLVER_DEFAULTS: dict[str, Any] = {"grid": 64, "steps": 100, "dt": 0.01, "alpha": 1.0,
                                   "length": 10.0, "dtype": "float64"}
MAX_WAIT = 60.0
DATA_SNDHWM = 64  # steps a rank may queue before send blocks (backpressure)


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
class Assignment:
    """One simulation handed out by the server (``ASSIGN`` body, docs/ARCHITECTURE.md)."""

    sim_id: int
    params: tuple[float, ...]
    data: str
    attempt: int = 0
    solver: dict[str, Any] = field(default_factory=lambda: dict(SOLVER_DEFAULTS))

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Assignment:
        """Validate an ``ASSIGN`` body; a malformed one is the server's fault (ClientError)."""
        try:
            sim_id = body["sim_id"]
            params = tuple(float(p) for p in body["params"])
            data = body["data"]
            attempt = int(body.get("attempt", 0))
            solver = {**SOLVER_DEFAULTS, **(body.get("solver") or {})}
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(f"malformed ASSIGN from the server: {exc!r}") from None
        if isinstance(sim_id, bool) or not isinstance(sim_id, int) or sim_id < 0:
            raise ClientError(f"malformed ASSIGN: sim_id {sim_id!r}")
        if len(params) != 5 or not all(math.isfinite(p) for p in params):
            raise ClientError(f"malformed ASSIGN: params {body['params']!r}")
        if not isinstance(data, str) or not data:
            raise ClientError(f"malformed ASSIGN: data address {data!r}")
        if solver["dtype"] not in ("float32", "float64"):
            raise ClientError(f"malformed ASSIGN: dtype {solver['dtype']!r}")
        return cls(sim_id, params, data, attempt, solver)


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
                raise ClientConfigError(f"cannot read BREED_TOKEN_FILE {path}: "
                                        f"{exc.strerror}") from None
    except AuthError as exc:
        raise ClientConfigError(str(exc)) from None
    raise ClientConfigError("no run token: set BREED_TOKEN or BREED_TOKEN_FILE")


def timeout_from_env(value: float | None = None) -> float:
    """Seconds to wait for a server reply: argument, ``BREED_CLIENT_TIMEOUT`` or 30."""
    raw: Any = value if value is not None else os.environ.get("BREED_CLIENT_TIMEOUT",
                                                              DEFAULT_TIMEOUT)
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        raise ClientConfigError(f"timeout must be a number of seconds, got {raw!r}") from None
    if not (math.isfinite(seconds) and seconds > 0):
        raise ClientConfigError(f"timeout must be > 0 seconds, got {raw!r}")
    return seconds


class Client:
    """One client process (or one MPI job): request, send, finish, abort. See module doc."""

    def __init__(self, server: str | None = None, token: bytes | str | None = None, *,
                 job_id: str | None = None, timeout: float | None = None,
                 send_timeout: float | None = None, sndhwm: int = DATA_SNDHWM, comm: Any = None) -> None:
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.nranks = comm.Get_size() if comm is not None else 1
        self.server = server or os.environ.get("BREED_SERVER") or ""
        if not self.server:
            raise ClientConfigError("no server address: pass --server or set BREED_SERVER")
        self.token = load_token(token)
        self.job_id = job_id if job_id is not None else os.environ.get("BREED_JOB_ID")
        self.job_key = os.environ.get(security.ENV_JOB_KEY)  # proves the job id is ours
        self.timeout = timeout_from_env(timeout)
        # backpressure may legitimately stall a while; only a server gone for long is an error
        self.send_timeout = max(10 * self.timeout, 60.0) if send_timeout is None else \
            float(send_timeout)
        self.sndhwm = sndhwm
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
            raise ClientConfigError(f"invalid server address {self.server!r} or "
                                    f"{security.ENV_CURVE}: {exc}") from None
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
            raise ClientError(f"no reply from server {self.server} within {self.timeout:g} s "
                              "(wrong address or server down?)") from None
        try:
            msg = protocol.decode(frames, self.token)
        except AuthError:
            raise ClientError(f"server {self.server} reply failed the run-token check "
                              "(wrong BREED_TOKEN for this run?)") from None
        except ProtocolError as exc:
            raise ClientError(f"undecodable reply from server {self.server}: {exc}") from None
        if not isinstance(msg, protocol.ControlMessage):
            raise ClientError(f"unexpected {type(msg).__name__} reply from the server")
        if msg.kind is Kind.REJECT:
            reason = str(msg.body.get("reason", "no reason given"))
            raise ClientError(f"server rejected {kind.name}: {reason}")
        return msg

    def _request_root(self) -> Assignment | None:
        body = {"client": f"{socket.gethostname()}:{os.getpid()}", "job_id": self.job_id,
                "job_key": self.job_key, "nranks": self.nranks}
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
        outcome: tuple[str, Any]
        if self.rank == 0:
            try:
                outcome = ("ok", self._request_root())
            except ClientError as exc:
                outcome = ("error", str(exc))
        else:
            outcome = ("ok", None)
        if self.comm is not None and self.nranks > 1:
            outcome = self.comm.bcast(outcome, root=0)
        if outcome[0] == "error":
            raise ClientError(outcome[1], collective=True)
        self.assignment = outcome[1]
        self._steps_sent = 0
        return self.assignment

    # -- data path (every rank) -------------------------------------------------------------
    def _data_socket(self, address: str) -> zmq.Socket:
        sock = self._push.get(address)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self.sndhwm)
            sock.setsockopt(zmq.SNDTIMEO, int(self.send_timeout * 1000))
            # on close, keep trying to deliver what is queued, but not forever
            sock.setsockopt(zmq.LINGER, int(self.send_timeout * 1000))
            try:
                if self.curve_serverkey is not None:
                    security.make_curve_client(sock, self.curve_serverkey)
                sock.connect(address)
            except zmq.ZMQError as exc:
                sock.close()
                raise ClientError(f"invalid data address {address!r} from the server: "
                                  f"{exc}") from None
            self._push[address] = sock
        return sock

    def _push_frames(self, frames: list[bytes]) -> None:
        assert self.assignment is not None
        try:
            self._data_socket(self.assignment.data).send_multipart(frames, copy=False)
        except zmq.Again:
            raise ClientError(f"server {self.assignment.data} took no data for "
                              f"{self.send_timeout:g} s") from None

    def send(self, step: int, block: np.ndarray, row_offset: int = 0,
             global_rows: int | None = None) -> None:
        """Push this rank's rows ``[row_offset, row_offset + len(block))`` of one time step."""
        if self.assignment is None:
            raise ClientError("send() without an assignment: call request() first")
        dtype = self.assignment.solver["dtype"]
        frames = protocol.encode_step(
            self.token, self.assignment.sim_id, step, np.asarray(block, dtype=dtype),
            rank=self.rank, nranks=self.nranks, row_offset=row_offset, global_rows=global_rows)
        self._push_frames(frames)
        self._steps_sent += 1

    def finish(self) -> None:
        """Tell the server this rank sent all its steps of the current simulation."""
        if self.assignment is None:
            raise ClientError("finish() without an assignment")
        self._push_frames(protocol.encode_finish(self.token, self.assignment.sim_id,
                                                 self._steps_sent, rank=self.rank,
                                                 nranks=self.nranks))
        self.assignment = None

    def abort(self, reason: str) -> bool:
        """Report the current simulation as failed (rank 0 only, best effort); True if heard."""
        if self.assignment is None:
            return False
        sim_id, self.assignment = self.assignment.sim_id, None
        if self.rank != 0:
            return False
        try:
            self._call(Kind.ABORT, {"sim_id": sim_id, "reason": reason[:1000],
                                    "job_id": self.job_id, "job_key": self.job_key})
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


def heat_blocks(job: Assignment, comm: Any = None) -> Iterator[tuple[int, np.ndarray, int, int]]:
    """This rank's ``(step, block, row_offset, global_rows)`` of the heat solver, step by step."""
    s = job.solver
    if comm is None or comm.Get_size() == 1:
        from breed.heatpde import HeatSolver

        solver = HeatSolver(job.params, s["grid"], s["dt"], s["alpha"], s["length"])
        for t, block in solver.blocks(s["steps"]):
            yield t, block, 0, solver.grid
    else:
        from breed.heatpde_mpi import MPIHeatSolver

        mpi = MPIHeatSolver(comm, job.params, s["grid"], s["dt"], s["alpha"], s["length"])
        for t, block in mpi.blocks(s["steps"]):
            yield t, block, mpi.row_start, mpi.grid


def run_heat(client: Client, once: bool = False) -> int:
    """Request -> solve -> stream -> finish until STOP (or once); returns simulations run."""
    done = 0
    while (job := client.request()) is not None:
        try:
            for t, block, offset, rows in heat_blocks(job, client.comm):
                client.send(t, block, offset, rows)
        except BaseException as exc:
            client.abort(f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        client.finish()
        done += 1
        if once:
            break
    return done


def mpi_world() -> Any:
    """COMM_WORLD when started by an MPI launcher with more than one rank, else None.

    Checked through the launcher's environment first so a serial client never initialises MPI.
    """
    size = next((os.environ[v] for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
                 if os.environ.get(v)), "1")
    if size.strip() in ("", "1"):
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="breed client", description="Run the heat solver as a streaming "
                     "client of a breed server (BREED_SERVER, BREED_TOKEN[_FILE], BREED_JOB_ID).")
    parser.add_argument("--server", help="server control address (default: $BREED_SERVER)")
    parser.add_argument("--once", action="store_true",
                        help="run one simulation then exit (default: until the server says stop)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for a server reply (default: "
                             f"$BREED_CLIENT_TIMEOUT or {DEFAULT_TIMEOUT:g})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    # a job killed by its scheduler still tells the server (ABORT) on its way out
    signal.signal(signal.SIGTERM, _terminate)
    comm = mpi_world()
    rank = comm.Get_rank() if comm is not None else 0
    client = None
    failed = True
    try:
        client = Client(args.server, timeout=args.timeout, comm=comm)
        run_heat(client, once=args.once)
        failed = False
    except ClientConfigError as exc:  # raised by every rank alike
        if rank == 0:
            print(f"breed client: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except (ClientError, ValueError, zmq.ZMQError, OSError) as exc:
        collective = getattr(exc, "collective", False)
        if rank == 0 or not collective:
            print(f"breed client: error: {exc}".splitlines()[0], file=sys.stderr)
        if comm is not None and not collective:
            comm.Abort(1)  # the other ranks may be blocked in a collective
        return 1
    finally:
        if client is not None:
            client.close(discard=failed)
    return 0


class Terminated(SystemExit):
    """SIGTERM (scheduler kill, launcher stop): exit 128+15 after telling the server."""

    def __str__(self) -> str:
        return f"terminated by signal {int(self.code) - 128}"


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
