"""The heat preset's client: the paper's heat solver streamed through the public client API.

``python -m breed.problems.heat2d_client`` (or ``breed client``), serial or under ``mpiexec -n
P`` (row blocks, :mod:`breed.problems.heat2d_mpi`), persistent by default: simulation after simulation
until the server says ``STOP``, so one process (or one MPI job) amortises its start-up over
many cheap simulations. It uses nothing a user's client could not: :mod:`breed.client`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from breed.cli import OneLineParser
from breed.client import (
    DEFAULT_TIMEOUT,
    Assignment,
    Client,
    ClientConfigError,
    ClientError,
    mpi_world,
)


def heat_blocks(job: Assignment, comm: Any = None) -> Iterator[tuple[int, np.ndarray, int, int]]:
    """This rank's ``(step, block, row_offset, global_rows)`` of the heat solver, step by step."""
    s = job.solver
    if comm is None or comm.Get_size() == 1:
        from breed.problems.heat2d_solver import HeatSolver

        solver = HeatSolver(job.params, s["grid"], s["dt"], s["alpha"], s["length"])
        for t, block in solver.blocks(s["steps"]):
            yield t, block, 0, solver.grid
    else:
        from breed.problems.heat2d_mpi import MPIHeatSolver

        mpi = MPIHeatSolver(comm, job.params, s["grid"], s["dt"], s["alpha"], s["length"])
        for t, block in mpi.blocks(s["steps"]):
            yield t, block, mpi.row_start, mpi.grid


def run_heat(client: Client, once: bool = False) -> int:
    """Request -> solve -> stream -> finish until STOP (or once); returns simulations run."""
    done = 0
    while (job := client.request()) is not None:
        try:
            for t, block, offset, _rows in heat_blocks(job, client.comm):
                client.send(t, block, offset)
        except BaseException as exc:
            client.abort(f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        client.finish()
        done += 1
        if once:
            break
    return done


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="breed client",
        description="Run the heat solver as a streaming "
        "client of a breed server (BREED_SERVER, BREED_TOKEN[_FILE], BREED_JOB_ID).",
    )
    parser.add_argument("--server", help="server control address (default: $BREED_SERVER)")
    parser.add_argument(
        "--once",
        action="store_true",
        help="run one simulation then exit (default: until the server says stop)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for a server reply (default: "
        f"$BREED_CLIENT_TIMEOUT or {DEFAULT_TIMEOUT:g})",
    )
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
        code = self.code if isinstance(self.code, int) else 128
        return f"terminated by signal {code - 128}"


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
