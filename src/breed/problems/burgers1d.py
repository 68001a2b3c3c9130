"""``problem: burgers1d``: 1D viscous Burgers on a periodic domain, a preset that is not heat.

    u_t + u u_x = ν u_xx,   x ∈ [0, 2π) periodic,   u(x, 0) = a sin x + b sin 2x,

with λ = (ν, a, b): ν ∈ [0.02, 0.3] sampled per decade (``scale: log``), a ∈ [0.5, 1.5],
b ∈ [-0.5, 0.5]. The field ``u`` (``grid`` nodes) is streamed at ``steps + 1`` equally spaced
times in ``[0, t_end]``. Difficulty is concentrated where ν is small and a large: the front
that forms near t ≈ 1/a stays steep (width ~ ν/a), so a surrogate errs there first — room for
active learning (a problem of the AL4PDE family). The maximum principle bounds every value by
``|a| + |b| ≤ 2``, the field's declared range.

The client (``python -m breed.problems.burgers1d_client``) uses only the public client API.
:func:`cole_hopf` is an independent oracle: the Cole–Hopf transform turns the equation into
heat's, whose solution on the line is a Gaussian integral (evaluated in log space, so small ν
does not underflow). The client's finite-difference solver is checked against it in the tests.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from scipy.special import logsumexp

from breed.problems.problem import ClientCommand, FieldSpec, Parameter, Problem

GRID, STEPS, T_END = 256, 50, 2.0
SETTINGS: dict[str, float] = {"grid": GRID, "steps": STEPS, "t_end": T_END}


def burgers1d(
    grid: int = GRID, steps: int = STEPS, t_end: float = T_END, ranks: int = 1
) -> Problem:
    return Problem(
        name="burgers1d",
        parameters=(
            Parameter("nu", 0.02, 0.3, "log"),
            Parameter("a", 0.5, 1.5),
            Parameter("b", -0.5, 0.5),
        ),
        fields=(FieldSpec("u", (int(grid),), "float64", (-2.0, 2.0)),),
        steps=int(steps),
        client=ClientCommand((sys.executable, "-m", "breed.problems.burgers1d_client"), int(ranks)),
        settings={"grid": int(grid), "t_end": float(t_end)},
        statistic="unit_std",
    )


def initial_potential(y: np.ndarray, a: float, b: float) -> np.ndarray:
    """F(y) = ∫_0^y u(s, 0) ds (periodic: u(., 0) has zero mean)."""
    return a * (1.0 - np.cos(y)) + 0.5 * b * (1.0 - np.cos(2.0 * y))


def cole_hopf(params: Any, x: np.ndarray, t: float, *, points: int | None = None) -> np.ndarray:
    """Exact u(x, t) by the Cole–Hopf transform (Hopf's formula on the real line):

        u = ∫ (x - y)/t · e^{-G/2ν} dy / ∫ e^{-G/2ν} dy,   G = F(y) + (x - y)² / 2t.

    The trapezoid rule on a window where the weights exceed e^-40 of their peak, with a
    spacing a fraction of the kernel width √(2νt), is accurate to round-off.
    """
    nu, a, b = (float(p) for p in params)
    x = np.asarray(x, dtype=np.float64)
    if t <= 0.0:
        return a * np.sin(x) + b * np.sin(2.0 * x)
    bound = 2.0 * (abs(a) + abs(b))  # max of F minus min of F
    half = np.sqrt(2.0 * t * (bound + 80.0 * nu))
    width = np.sqrt(2.0 * nu * t)
    n = points or int(np.clip(2.0 * half / (width / 12.0), 400, 40_000))
    s = np.linspace(-half, half, n)  # y = x - s
    out = np.empty_like(x)
    for k in range(0, x.size, 64):  # bounded memory: 64 x n at a time
        xs = x.ravel()[k : k + 64, None]
        y = xs - s[None, :]
        log_w = -(initial_potential(y, a, b) + s[None, :] ** 2 / (2.0 * t)) / (2.0 * nu)
        num_pos = logsumexp(log_w, axis=1, b=np.maximum(s, 0.0)[None, :] + 0.0 * log_w)
        num_neg = logsumexp(log_w, axis=1, b=np.maximum(-s, 0.0)[None, :] + 0.0 * log_w)
        den = logsumexp(log_w, axis=1)
        out.ravel()[k : k + 64] = (np.exp(num_pos - den) - np.exp(num_neg - den)) / t
    return out
