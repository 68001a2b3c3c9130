"""The Burgers preset's client: a standalone solver streaming through the public client API.

``python -m breed.problems.burgers1d_client`` (serial). Method of lines on ``grid`` periodic
nodes: the flux u²/2 and the diffusion by second-order central differences (conservative),
classical RK4 in time with a step bounded by advection (CFL 0.5) and diffusion (0.25 dx²/ν)
and landing exactly on every output time. Second order in space: checked against the Cole–Hopf
oracle (:func:`breed.problems.burgers1d.cole_hopf`) in the tests.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator

import numpy as np

from breed.client import Client, ClientError


def rhs(u: np.ndarray, nu: float, dx: float) -> np.ndarray:
    up, um = np.roll(u, -1), np.roll(u, 1)
    return -(up * up - um * um) / (4.0 * dx) + nu * (up - 2.0 * u + um) / (dx * dx)


def solve(
    params: tuple[float, ...], grid: int, steps: int, t_end: float
) -> Iterator[tuple[int, np.ndarray]]:
    """``(t, u)`` at the ``steps + 1`` output times ``t_end * t / steps``."""
    nu, a, b = params
    x = 2.0 * np.pi * np.arange(grid) / grid
    dx = 2.0 * np.pi / grid
    u = a * np.sin(x) + b * np.sin(2.0 * x)
    yield 0, u.copy()
    umax = abs(a) + abs(b)  # the maximum principle: |u| never grows
    dt_max = min(0.5 * dx / umax, 0.25 * dx * dx / nu)
    interval = t_end / steps
    sub = max(1, math.ceil(interval / dt_max))
    dt = interval / sub
    for t in range(1, steps + 1):
        for _ in range(sub):
            k1 = rhs(u, nu, dx)
            k2 = rhs(u + 0.5 * dt * k1, nu, dx)
            k3 = rhs(u + 0.5 * dt * k2, nu, dx)
            k4 = rhs(u + dt * k3, nu, dx)
            u = u + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        yield t, u.copy()


def main() -> int:
    with Client() as client:  # address, token, job id: from the launcher's environment
        while (job := client.request()) is not None:
            s = job.settings
            try:
                for t, u in solve(job.params, int(s["grid"]), job.steps, float(s["t_end"])):
                    client.send(t, u)
            except (FloatingPointError, ValueError) as exc:
                client.abort(f"solver failed: {exc}")
                raise
            client.finish()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClientError as exc:
        print(f"burgers1d_client: {exc}", file=sys.stderr)
        sys.exit(1)
