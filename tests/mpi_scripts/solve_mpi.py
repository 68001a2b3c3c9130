"""Run breed.problems.heat2d_mpi.solve_mpi under mpiexec; rank 0 saves the trajectory (tests, benchmark).

usage: mpiexec -n P python solve_mpi.py OUT.npy GRID STEPS LENGTH T0 T1 T2 T3 T4 [PRECONDITIONER]
OUT.npy may be "-" (do not save).
Prints one JSON line on rank 0: wall time of the solve and CG iterations per step.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from mpi4py import MPI

from breed.problems.heat2d_mpi import MPIHeatSolver, solve_mpi


def main(argv: list[str]) -> int:
    out, grid, steps, length = argv[0], int(argv[1]), int(argv[2]), float(argv[3])
    params = [float(v) for v in argv[4:9]]
    pre = argv[9] if len(argv) > 9 else "interface"
    comm = MPI.COMM_WORLD
    comm.Barrier()
    start = time.perf_counter()
    traj = solve_mpi(comm, params, grid=grid, steps=steps, length=length, preconditioner=pre)
    elapsed = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    # iteration counts from a separate short run so the timed solve stays untouched
    probe = MPIHeatSolver(comm, params, grid=grid, length=length, preconditioner=pre)
    for _ in probe.blocks(min(steps, 3)):
        pass
    if comm.Get_rank() == 0:
        if out != "-":
            np.save(out, traj)
        print(
            json.dumps(
                {
                    "nranks": comm.Get_size(),
                    "seconds": elapsed,
                    "cg_iterations_first_steps": probe.iterations,
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
