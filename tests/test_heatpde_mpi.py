"""MPI heat solver: row blocks, halo exchange, parallel PCG; equal to the serial solver.

The ``mpi``-marked tests launch real ``mpiexec -n P`` (P = 1, 2, 3); the others run the same
code on ``COMM_SELF`` inside pytest (MPI singleton start, no launcher needed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from breed.problems.heat2d_mpi import MPIHeatSolver, solve_mpi, split_rows
from breed.problems.heat2d_solver import HeatParameterError, solve

SCRIPT = Path(__file__).parent / "mpi_scripts" / "solve_mpi.py"
LAM = [300.0, 100.0, 500.0, 200.0, 400.0]
# grid 37: 35 interior rows split unevenly over 2 and 3 ranks; length 1 gives r = 13, a stiff
# system where the blocks of different ranks are strongly coupled
GRID, STEPS, LENGTH = 37, 20, 1.0


@pytest.mark.parametrize("interior, nranks", [(35, 1), (35, 2), (35, 3), (7, 7), (10, 4)])
def test_split_rows_partitions_the_interior(interior, nranks):
    parts = [split_rows(interior, nranks, r) for r in range(nranks)]
    assert parts[0][0] == 0 and parts[-1][1] == interior
    assert all(a < b for a, b in parts)
    assert all(parts[k][1] == parts[k + 1][0] for k in range(nranks - 1))
    assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


@pytest.mark.parametrize("preconditioner", ["interface", "block-jacobi"])
def test_single_rank_equals_serial(preconditioner):
    from mpi4py import MPI

    got = solve_mpi(
        MPI.COMM_SELF, LAM, grid=GRID, steps=STEPS, length=LENGTH, preconditioner=preconditioner
    )
    ref = solve(LAM, grid=GRID, steps=STEPS, length=LENGTH)
    assert np.abs(got - ref).max() <= 1e-10 * np.abs(ref).max()
    assert np.all(got[0] == ref[0])


def test_bad_settings_raise_value_errors():
    from mpi4py import MPI

    with pytest.raises(HeatParameterError, match="preconditioner"):
        MPIHeatSolver(MPI.COMM_SELF, LAM, grid=8, preconditioner="ilu")
    with pytest.raises(HeatParameterError, match="grid"):
        MPIHeatSolver(MPI.COMM_SELF, LAM, grid=2)


def run_mpi(mpiexec: str, nranks: int, out: Path, *extra: str) -> dict:
    cmd = [
        mpiexec,
        "-n",
        str(nranks),
        sys.executable,
        str(SCRIPT),
        str(out),
        str(GRID),
        str(STEPS),
        str(LENGTH),
        *map(str, LAM),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_mpi_equals_serial(mpiexec, tmp_path, nranks):
    out = tmp_path / "traj.npy"
    info = run_mpi(mpiexec, nranks, out)
    got, ref = np.load(out), solve(LAM, grid=GRID, steps=STEPS, length=LENGTH)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"P={nranks}: max relative difference to serial {rel:.2e}, CG iterations {info}")
    assert got.shape == ref.shape and rel <= 1e-10
    # the interface preconditioner is an exact parallel solve: CG needs one or two iterations
    assert info["nranks"] == nranks and max(info["cg_iterations_first_steps"]) <= 2


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_block_jacobi_needs_iterations_but_agrees(mpiexec, tmp_path):
    out = tmp_path / "traj.npy"
    info = run_mpi(mpiexec, 3, out, "block-jacobi")
    ref = solve(LAM, grid=GRID, steps=STEPS, length=LENGTH)
    assert np.abs(np.load(out) - ref).max() <= 1e-10 * np.abs(ref).max()
    assert min(info["cg_iterations_first_steps"]) > 2  # real iterations across the block edges
