"""MPI path of the heat solver (paper Appendix B.1): row blocks, halo exchange, parallel PCG.

The ``M-2`` interior rows (index ``i``, along x1) are split into contiguous blocks, one per rank
(rank 0 also owns wall row ``i=0``, the last rank wall row ``i=M-1``), so each rank streams its
own block like Melissa's per-rank ``melissa_send``. Every implicit Euler step solves
``(I - r Lap_h) u^{t+1} = u^t + r b`` (same system as :mod:`breed.problems.heat2d_solver`) with preconditioned
conjugate gradients:

* matrix-vector products exchange one halo row with each neighbour (``Sendrecv``);
* dot products are local sums combined by ``Allreduce`` (two of them fused per iteration);
* the default preconditioner (``"interface"``) is a parallel direct solve: rows are whole on
  every rank, so a DST along j is local and splits the operator into one tridiagonal system
  along i per mode; each rank solves its rows by a local DST along i, and the coupling between
  ranks reduces to a ``2P x 2P`` interface (Schur complement) system per mode, assembled once,
  whose right-hand side is one ``Allgather`` of two rows per rank. CG then converges in one or
  two iterations whatever ``P``, and its residual test certifies the answer;
* ``"block-jacobi"`` (each rank's block solved alone, no communication) is kept for comparison:
  exact on one rank, but ~30 iterations on two at 512^2 (see ``benchmarks/solver.py``).

CG stops at ``||res|| <= rtol * ||rhs||`` with a tight ``rtol`` so the result matches the serial
spectral solver to ~1e-12 relative (tested at 1e-10 for P = 1, 2, 3).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import scipy.fft

from breed.problems.heat2d_solver import (
    HeatParameterError,
    check_settings,
    dirichlet_rhs,
    dst_eigenvalues,
    set_walls,
)

PRECONDITIONERS = ("interface", "block-jacobi")


def split_rows(interior: int, nranks: int, rank: int) -> tuple[int, int]:
    """Interior rows ``[a, b)`` (0-based among the ``interior`` ones) of ``rank``."""
    base, extra = divmod(interior, nranks)
    a = rank * base + min(rank, extra)
    return a, a + base + (1 if rank < extra else 0)


class CGDivergence(RuntimeError):
    """The parallel CG did not reach its tolerance (should not happen for this SPD system)."""


class MPIHeatSolver:
    """One rank's share of the implicit Euler solve; :meth:`blocks` yields its row block."""

    def __init__(
        self,
        comm: Any,
        params: Sequence[float] | np.ndarray,
        grid: int = 64,
        dt: float = 0.01,
        alpha: float = 1.0,
        length: float = 10.0,
        rtol: float = 1e-13,
        maxiter: int | None = None,
        preconditioner: str = "interface",
    ) -> None:
        self.params = check_settings(params, grid, 0, dt, alpha, length)
        self.comm = comm
        self.rank, self.nranks = comm.Get_rank(), comm.Get_size()
        self.grid = int(grid)
        n = self.grid - 2
        if n < self.nranks:
            raise HeatParameterError(
                f"grid {grid} has {n} interior rows, fewer than {self.nranks} MPI ranks"
            )
        a, b = split_rows(n, self.nranks, self.rank)
        self.first, self.last = self.rank == 0, self.rank == self.nranks - 1
        # the rank's output rows in the full grid, wall rows included at the ends
        self.row_start = 0 if self.first else a + 1
        self.row_stop = self.grid if self.last else b + 1
        self._rows = b - a
        h = float(length) / (self.grid - 1)
        self.r = float(alpha) * float(dt) / (h * h)
        self.rtol = rtol
        self.maxiter = maxiter if maxiter is not None else 20 * n + 100
        self._rb = self.r * dirichlet_rhs(self.params, self._rows, n, self.first, self.last)
        self._block_denom = 1.0 + self.r * (
            dst_eigenvalues(self._rows)[:, None] + dst_eigenvalues(n)[None, :]
        )
        self._up = self.rank - 1 if not self.first else _proc_null()
        self._down = self.rank + 1 if not self.last else _proc_null()
        self._above = np.zeros(n)
        self._below = np.zeros(n)
        self._sums = np.zeros(3)
        self.iterations: list[int] = []  # CG iterations of each step, for benchmarks
        if preconditioner not in PRECONDITIONERS:
            raise HeatParameterError(
                f"preconditioner must be one of {PRECONDITIONERS}, got {preconditioner!r}"
            )
        self.preconditioner = preconditioner
        if preconditioner == "interface":
            self._setup_interface(n)

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    def _halo(self, p: np.ndarray) -> None:
        self._above.fill(0.0)
        self._below.fill(0.0)
        self.comm.Sendrecv(
            p[0], dest=self._up, sendtag=1, recvbuf=self._below, source=self._down, recvtag=1
        )
        self.comm.Sendrecv(
            p[-1], dest=self._down, sendtag=2, recvbuf=self._above, source=self._up, recvtag=2
        )

    def apply(self, p: np.ndarray) -> np.ndarray:
        """``(I - r Lap_h) p`` on this rank's rows, neighbours' rows through the halo."""
        self._halo(p)
        r = self.r
        out = (1.0 + 4.0 * r) * p
        out[1:] -= r * p[:-1]
        out[:-1] -= r * p[1:]
        out[0] -= r * self._above
        out[-1] -= r * self._below
        out[:, 1:] -= r * p[:, :-1]
        out[:, :-1] -= r * p[:, 1:]
        return out

    def _setup_interface(self, n: int) -> None:
        """Precompute the Schur-complement interface system of the exact preconditioner.

        After a DST along j (rows are whole on every rank) the operator splits into one
        tridiagonal system along i per mode ``l``. On a rank's rows its solution is
        ``x = y + r x[a-1] g + r x[b] h`` with ``y = T^-1 f`` (local), ``g = T^-1 e_first``,
        ``h = T^-1 e_last``; the unknown edge rows of all ranks satisfy a ``2P x 2P`` system per
        mode, built and inverted once here (it does not change between steps).
        """
        m, p = self._rows, self.nranks
        unit = np.zeros((m, n))
        unit[0] = 1.0
        self._g = self._local_solve_i(unit)
        unit[0], unit[-1] = 0.0, 1.0
        self._h = self._local_solve_i(unit)
        mine = np.stack([self._g[0], self._g[-1], self._h[0], self._h[-1]])
        edges = np.empty((p, 4, n))
        self.comm.Allgather(mine, edges)
        reduced = np.zeros((n, 2 * p, 2 * p))
        idx = np.arange(n)
        for k in range(p):
            f, last = 2 * k, 2 * k + 1
            reduced[:, f, f] = 1.0
            reduced[:, last, last] = 1.0
            if k > 0:  # coupling to the last row of rank k-1
                reduced[idx, f, 2 * k - 1] -= self.r * edges[k, 0]
                reduced[idx, last, 2 * k - 1] -= self.r * edges[k, 1]
            if k < p - 1:  # coupling to the first row of rank k+1
                reduced[idx, f, 2 * k + 2] -= self.r * edges[k, 2]
                reduced[idx, last, 2 * k + 2] -= self.r * edges[k, 3]
        self._reduced_inv = np.linalg.inv(reduced)
        self._edge_rows = np.empty((p, 2, n))

    def _local_solve_i(self, f_hat: np.ndarray) -> np.ndarray:
        """``T^-1`` of every j-mode on this rank's rows (zero outside), by a DST along i."""
        return _dst1(_dst1(f_hat, 0) / self._block_denom, 0)

    def precondition(self, res: np.ndarray) -> np.ndarray:
        """Apply the preconditioner selected at construction to a residual block."""
        if self.preconditioner == "block-jacobi":
            return _dst(_dst(res) / self._block_denom)
        y = self._local_solve_i(_dst1(res, 1))
        self.comm.Allgather(np.stack([y[0], y[-1]]), self._edge_rows)
        # solve the interface system of every mode at once: unknowns (first, last) per rank
        rhs = self._edge_rows.reshape(2 * self.nranks, -1).T[:, :, None]
        edges = np.matmul(self._reduced_inv, rhs)[:, :, 0].T.reshape(self.nranks, 2, -1)
        k = self.rank
        if k > 0:
            y += self.r * self._g * edges[k - 1, 1]
        if k < self.nranks - 1:
            y += self.r * self._h * edges[k + 1, 0]
        return _dst1(y, 1)

    def _dots(self, *pairs: tuple[np.ndarray, np.ndarray]) -> list[float]:
        """Global dot products, all in one ``Allreduce`` (latency, not bandwidth, dominates)."""
        # einsum, not BLAS: multi-threaded BLAS dots crawl on oversubscribed nodes (one
        # OpenBLAS pool per rank) and their rounding may depend on the thread count
        local = np.array([np.einsum("ij,ij->", a, b) for a, b in pairs])
        sums = self._sums[: len(pairs)]
        self.comm.Allreduce(local, sums)
        return sums.tolist()

    def step(self, u: np.ndarray) -> np.ndarray:
        """One implicit Euler step by PCG, warm-started from ``u``."""
        rhs = u + self._rb
        x = u.copy()
        res = rhs - self.apply(x)
        rr, rhs2 = self._dots((res, res), (rhs, rhs))
        target = (self.rtol**2) * rhs2
        p: np.ndarray | None = None
        rz = 1.0
        for it in range(self.maxiter + 1):
            if rr <= target:  # tested before preconditioning: the last one would be wasted
                self.iterations.append(it)
                return x
            z = self.precondition(res)
            (rz_new,) = self._dots((res, z))
            if p is None:
                p = z
            else:
                p *= rz_new / rz
                p += z
            rz = rz_new
            ap = self.apply(p)
            (pap,) = self._dots((p, ap))
            step = rz / pap
            x += step * p
            res -= step * ap
            (rr,) = self._dots((res, res))
        raise CGDivergence(f"CG did not reach rtol {self.rtol:g} in {self.maxiter} iterations")

    def blocks(self, steps: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t, block)``: this rank's rows ``[row_start, row_stop)`` at t = 0..steps."""
        check_settings(self.params, self.grid, steps, 1.0, 1.0, 1.0)
        u = np.full((self._rows, self.grid - 2), self.params[0])
        for t in range(steps + 1):
            if t > 0:
                u = self.step(u)
            out = np.empty((self.rows, self.grid))
            lo = 1 if self.first else 0
            out[lo : lo + self._rows, 1:-1] = u
            set_walls(out, self.params, self.first, self.last)
            yield t, out


def solve_mpi(
    comm: Any,
    params: Sequence[float] | np.ndarray,
    grid: int = 64,
    steps: int = 100,
    dt: float = 0.01,
    alpha: float = 1.0,
    length: float = 10.0,
    rtol: float = 1e-13,
    preconditioner: str = "interface",
) -> np.ndarray | None:
    """Collective: the full trajectory (as :func:`breed.problems.heat2d_solver.solve`) on rank 0, else None."""
    solver = MPIHeatSolver(
        comm, params, grid, dt, alpha, length, rtol, preconditioner=preconditioner
    )
    counts = comm.gather(solver.rows, root=0)
    out = np.empty((steps + 1, grid, grid)) if comm.Get_rank() == 0 else None
    for t, block in solver.blocks(steps):
        recv = None
        if out is not None:
            recv = (out[t], [c * grid for c in counts])
        comm.Gatherv(block, recv, root=0)
    return out


def _dst(a: np.ndarray) -> np.ndarray:
    return scipy.fft.dstn(a, type=1, norm="ortho")


def _dst1(a: np.ndarray, axis: int) -> np.ndarray:
    return scipy.fft.dst(a, type=1, norm="ortho", axis=axis)


def _proc_null() -> int:
    from mpi4py import MPI

    return MPI.PROC_NULL
