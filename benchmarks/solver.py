"""Heat solver benchmark (issue 2): serial DST solver vs sparse LU per step, MPI 1 vs 2 ranks.

    python benchmarks/solver.py            # prints a table, ~1 minute on 2 cores

Measured in one run: seconds per 100-step trajectory of :func:`breed.problems.heat2d_solver.solve` at 64^2
and 256^2; the same trajectory with a plain ``scipy.sparse.linalg.spsolve`` per step (the
naive implicit Euler, its per-step time extrapolated from a few steps at 256^2 to keep the
run short); and the MPI solver (:mod:`breed.problems.heat2d_mpi`) at 512^2 on 1 and 2 ranks, each an
``mpiexec`` subprocess of this script, timed inside MPI (start-up excluded, best of 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spl

from breed.problems.heat2d_solver import solve

LAM = [300.0, 100.0, 500.0, 200.0, 400.0]
STEPS = 100


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def sparse_lu_per_step(grid: int, steps: int, length: float = 10.0, dt: float = 0.01) -> float:
    """Seconds per step of the naive method: assemble once, ``spsolve`` (a fresh LU) per step."""
    n, h = grid - 2, length / (grid - 1)
    r = dt / h**2
    second = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    eye = sp.identity(n)
    a = (sp.identity(n * n) + r * (sp.kron(second, eye) + sp.kron(eye, second))).tocsc()
    b = np.zeros((n, n))
    b[0] += LAM[1]
    b[-1] += LAM[2]
    b[:, 0] += LAM[3]
    b[:, -1] += LAM[4]
    u = np.full(n * n, LAM[0])
    t0 = time.perf_counter()
    for _ in range(steps):
        u = spl.spsolve(a, u + r * b.ravel())
    return (time.perf_counter() - t0) / steps


def mpi_worker(grid: int, steps: int) -> None:
    """Run under mpiexec: time solve_mpi, print one JSON line on rank 0."""
    from mpi4py import MPI

    from breed.problems.heat2d_mpi import MPIHeatSolver, solve_mpi

    comm = MPI.COMM_WORLD
    MPIHeatSolver(comm, LAM, grid=grid)  # warm-up: imports, FFT plans
    times = []
    for _ in range(2):  # best of two: the machine may be shared
        comm.Barrier()
        t0 = time.perf_counter()
        traj = solve_mpi(comm, LAM, grid=grid, steps=steps)
        times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    seconds = min(times)
    probe = MPIHeatSolver(comm, LAM, grid=grid)
    for _ in probe.blocks(3):
        pass
    if comm.Get_rank() == 0:
        ref = solve(LAM, grid=grid, steps=steps)
        rel = float(np.abs(traj - ref).max() / np.abs(ref).max())
        print(
            json.dumps(
                {"seconds": seconds, "rel_diff_to_serial": rel, "cg_iterations": probe.iterations}
            ),
            flush=True,
        )


def run_mpi(nranks: int, grid: int, steps: int) -> dict:
    exe = shutil.which(
        "mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if exe is None:
        raise SystemExit("benchmark: error: mpiexec not found (pip install -e '.[dev]')")
    cmd = [exe, "-n", str(nranks), sys.executable, __file__, "--mpi-worker", str(grid), str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark: error: {' '.join(cmd)} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mpi-worker", nargs=2, type=int, metavar=("GRID", "STEPS"), help=argparse.SUPPRESS
    )
    parser.add_argument("--mpi-grid", type=int, default=512)
    args = parser.parse_args(argv)
    if args.mpi_worker:
        mpi_worker(*args.mpi_worker)
        return 0
    print(
        f"heat solver benchmark, {STEPS} implicit Euler steps, {os.cpu_count()} CPUs "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    rows = []
    for grid, repeat, lu_steps in ((64, 20, STEPS), (256, 5, 5)):
        dst = best_of(lambda g=grid: solve(LAM, grid=g, steps=STEPS), repeat)
        lu = sparse_lu_per_step(grid, lu_steps) * STEPS
        rows.append((grid, dst, lu, lu_steps))
    print(f"{'grid':>6} {'DST solve [s]':>14} {'spsolve/step [s]':>17} {'speed-up':>9}")
    for grid, dst, lu, lu_steps in rows:
        note = "" if lu_steps == STEPS else f"  (LU: {lu_steps} steps x {STEPS // lu_steps})"
        print(f"{grid:>4}^2 {dst:>14.4f} {lu:>17.3f} {lu / dst:>8.0f}x{note}")
    target = rows[0][1] * 1e3
    print(
        f"64^2 x {STEPS} trajectory: {target:.1f} ms (target <= 15 ms: "
        f"{'met' if target <= 15 else 'MISSED'})"
    )
    g = args.mpi_grid
    serial = best_of(lambda: solve(LAM, grid=g, steps=STEPS), 2)
    print(f"{g}^2 serial DST solve: {serial:.3f} s")
    results = {p: run_mpi(p, g, STEPS) for p in (1, 2)}
    for p, res in results.items():
        print(
            f"{g}^2 MPI PCG, {p} rank{'s' if p > 1 else ' '}: {res['seconds']:.3f} s  "
            f"(CG iterations/step {statistics.mean(res['cg_iterations']):.0f}, "
            f"max rel. diff to serial {res['rel_diff_to_serial']:.1e})"
        )
    print(f"{g}^2 MPI speed-up 1 -> 2 ranks: {results[1]['seconds'] / results[2]['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
