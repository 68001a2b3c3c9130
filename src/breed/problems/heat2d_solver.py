"""2D heat equation of the paper (Appendix B.1, eqs. 13-16), serial solver.

Problem: ``du/dt = alpha * (d2u/dx1^2 + d2u/dx2^2)`` on ``[0, L]^2`` with Dirichlet walls
``u(x1=0)=T1``, ``u(x1=L)=T2`` (eq. 14), ``u(x2=0)=T3``, ``u(x2=L)=T4`` (eq. 15) and interior
initial value ``u(t=0)=T0`` (eq. 16); ``lambda = (T0, T1, T2, T3, T4)``.

Discretisation: an ``M x M`` grid of nodes *including* the boundary nodes, spacing
``h = L/(M-1)``, node ``(i, j)`` at ``(x1, x2) = (i*h, j*h)``; the 5-point Laplacian on the
``(M-2)^2`` interior nodes; implicit Euler in time::

    (I - r * Lap_h) u^{t+1} = u^t + r * b,      r = alpha * dt / h^2,

where ``Lap_h`` is the unscaled 5-point stencil with zero outside the interior and ``b`` holds
the wall values of the boundary neighbours (the Dirichlet data folded into the right-hand side).

Corner ownership: the four corner nodes belong to the x1 walls, i.e. ``u[0, 0] = u[0, -1] = T1``
and ``u[-1, 0] = u[-1, -1] = T2``. The 5-point stencil of an interior node never touches a corner,
so this choice only affects the reported field, never the dynamics.

Why a DST: ``I - r*Lap_h`` is diagonalised by the orthonormal type-I discrete sine transform
(eigenvalues ``1 + r*(l_k + l_m)``, ``l_k = 4 sin^2(k*pi / (2(M-1)))``), so every implicit step
is a pointwise division in spectral space and only one inverse transform per step is needed to
report the field: ``O(M^2 log M)`` per step, no factorisation, no fresh sparse solve per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.fft

N_PARAMS = 5


class HeatParameterError(ValueError):
    """Invalid solver parameters or discretisation settings."""


def check_settings(
    params: Sequence[float] | np.ndarray,
    grid: int,
    steps: int,
    dt: float,
    alpha: float,
    length: float,
) -> np.ndarray:
    """Validate the inputs shared by the serial and MPI solvers; return ``params`` as float64."""
    try:
        lam = np.asarray(params, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise HeatParameterError(f"params must be {N_PARAMS} numbers (T0..T4)") from exc
    if lam.shape != (N_PARAMS,):
        raise HeatParameterError(
            f"params must be {N_PARAMS} numbers (T0..T4), got shape {lam.shape}"
        )
    if not np.all(np.isfinite(lam)):
        raise HeatParameterError(f"params must be finite, got {lam.tolist()}")
    if isinstance(grid, bool) or not isinstance(grid, int | np.integer) or grid < 3:
        raise HeatParameterError(f"grid must be an integer >= 3 (one interior node), got {grid!r}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise HeatParameterError(f"steps must be an integer >= 0, got {steps!r}")
    for name, value in (("dt", dt), ("alpha", alpha), ("length", length)):
        if not (
            isinstance(value, int | float | np.floating) and math.isfinite(value) and value > 0
        ):
            raise HeatParameterError(f"{name} must be a finite number > 0, got {value!r}")
    return lam


def dirichlet_rhs(lam: np.ndarray, rows: int, cols: int, first: bool, last: bool) -> np.ndarray:
    """Wall contribution ``b`` for a block of interior rows (``first``/``last``: touches x1 walls).

    An interior node next to a wall sees the wall value through the stencil; a node next to two
    walls (interior corner) sees both.
    """
    b = np.zeros((rows, cols))
    if rows == 0:
        return b
    b[:, 0] += lam[3]
    b[:, -1] += lam[4]
    if first:
        b[0, :] += lam[1]
    if last:
        b[-1, :] += lam[2]
    return b


def dst_eigenvalues(n: int) -> np.ndarray:
    """Eigenvalues ``4 sin^2(k pi / (2(n+1)))``, k = 1..n, of the 1-D ``-(u[k-1]-2u[k]+u[k+1])``."""
    k = np.arange(1, n + 1)
    return 4.0 * np.sin(k * np.pi / (2.0 * (n + 1))) ** 2


def set_walls(field: np.ndarray, lam: np.ndarray, first: bool = True, last: bool = True) -> None:
    """Write the wall values into a field (or row block); the x1 walls own the corners."""
    field[:, 0] = lam[3]
    field[:, -1] = lam[4]
    if first:
        field[0, :] = lam[1]
    if last:
        field[-1, :] = lam[2]


class HeatSolver:
    """Serial implicit-Euler stepper in the DST eigenbasis; yields one field per step.

    ``solve`` and the streaming client both go through :meth:`fields`, so a streamed trajectory
    is bit-identical to ``solve``'s.
    """

    def __init__(
        self,
        params: Sequence[float] | np.ndarray,
        grid: int = 64,
        dt: float = 0.01,
        alpha: float = 1.0,
        length: float = 10.0,
    ) -> None:
        self.params = check_settings(params, grid, 0, dt, alpha, length)
        self.grid = int(grid)
        self.dt, self.alpha, self.length = float(dt), float(alpha), float(length)
        n = self.grid - 2
        h = self.length / (self.grid - 1)
        r = self.alpha * self.dt / (h * h)
        lam_1d = dst_eigenvalues(n)
        self._denom = 1.0 + r * (lam_1d[:, None] + lam_1d[None, :])
        b = dirichlet_rhs(self.params, n, n, True, True)
        self._forcing = r * _dst(b)
        self._u0_hat = _dst(np.full((n, n), self.params[0]))

    def fields(self, steps: int) -> Iterator[np.ndarray]:
        """Yield the full ``grid x grid`` field at t = 0, 1, ..., steps (fresh arrays)."""
        for t, u_hat in self._spectral(steps):
            out = np.empty((self.grid, self.grid))
            self._write(t, u_hat, out)
            yield out

    def blocks(
        self, steps: int, row_start: int = 0, row_stop: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(t, field[row_start:row_stop])`` per step, e.g. one rank's row block."""
        stop = self.grid if row_stop is None else row_stop
        if not 0 <= row_start < stop <= self.grid:
            raise HeatParameterError(f"row range [{row_start}, {stop}) outside 0..{self.grid}")
        for t, field in enumerate(self.fields(steps)):
            yield t, field[row_start:stop]

    def trajectory(self, steps: int) -> np.ndarray:
        """Whole trajectory ``(steps+1, grid, grid)`` written in place (no per-step copies)."""
        out = np.empty((steps + 1, self.grid, self.grid))
        for t, u_hat in self._spectral(steps):
            self._write(t, u_hat, out[t])
        return out

    def _spectral(self, steps: int) -> Iterator[tuple[int, np.ndarray | None]]:
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
            raise HeatParameterError(f"steps must be an integer >= 0, got {steps!r}")
        yield 0, None
        u_hat = self._u0_hat
        for t in range(1, steps + 1):
            # one implicit Euler step: (I - r Lap_h) u^{t+1} = u^t + r b, diagonal here
            u_hat = (u_hat + self._forcing) / self._denom
            yield t, u_hat

    def _write(self, t: int, u_hat: np.ndarray | None, out: np.ndarray) -> None:
        if u_hat is None:
            out[1:-1, 1:-1] = self.params[0]  # exact initial field, not a round trip
        else:
            out[1:-1, 1:-1] = _dst(u_hat)
        set_walls(out, self.params)


def _dst(a: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DST-I; it is its own inverse."""
    return scipy.fft.dstn(a, type=1, norm="ortho")


def solve(
    params: Sequence[float] | np.ndarray,
    grid: int = 64,
    steps: int = 100,
    dt: float = 0.01,
    alpha: float = 1.0,
    length: float = 10.0,
) -> np.ndarray:
    """Trajectory of eqs. (13)-(16): float64 array ``(steps+1, grid, grid)``, index ``[t, i, j]``.

    ``i`` runs along x1 (``i=0``: wall T1, ``i=-1``: wall T2, which own the corners), ``j``
    along x2 (``j=0``: wall T3, ``j=-1``: wall T4); ``[0]`` is the initial field: T0 inside,
    wall values on the boundary nodes.
    """
    check_settings(params, grid, steps, dt, alpha, length)
    return HeatSolver(params, grid, dt, alpha, length).trajectory(steps)
