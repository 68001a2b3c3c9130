"""A solver of your own, streaming into breed: 3 parameters, two 24 x 40 fields per step.

Started by the launcher (problem.client.command in toy.yaml), serially or under MPI: each
rank computes and sends its slab of rows. It needs nothing of breed but the client API.
"""

import sys

import numpy as np

from breed.client import Client, ClientError, mpi_world

NX, NY = 24, 40


def fields(p: dict, t: int, steps: int, rows: np.ndarray) -> dict:
    """u and v at step t for parameters p (a, k, w), on this rank's rows."""
    x = np.linspace(0.0, 1.0, NX)[rows, None]
    y = np.linspace(0.0, 1.0, NY)[None, :]
    decay = np.exp(-p["k"] * t / steps)
    u = p["a"] * decay * np.sin(np.pi * x) * np.cos(np.pi * p["w"] * y)
    v = p["a"] * decay * np.cos(np.pi * x) * np.sin(np.pi * p["w"] * y)
    return {"u": u, "v": v}


def main() -> int:
    comm = mpi_world()  # None when not started under mpiexec
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    rows = np.array_split(np.arange(NX), size)[rank]
    with Client(comm=comm) as client:  # address, token, job id: from the environment
        while (job := client.request()) is not None:  # None: the server has no more work
            for t in range(job.steps + 1):
                client.send(t, fields(job.named, t, job.steps, rows), row_offset=rows[0])
            client.finish()  # raises if the server refused any step
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClientError as exc:
        print(f"toy_client: {exc}", file=sys.stderr)
        sys.exit(1)
