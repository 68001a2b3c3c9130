"""``problem: heat2d``: the paper's 2D heat equation (Appendix B.1) as a preset.

It expands the ``solver:`` section into a :class:`~breed.problems.problem.Problem` like any
user's: five parameters T0..T4 sharing ``solver.bounds``, one field ``u`` of shape
``(grid, grid)``, ``solver.steps`` steps, and the built-in client ``python -m breed.problems.heat2d_client``,
which uses only the public client API. The field's normalisation range is the parameter range:
by the maximum principle every temperature stays within the bounds, so values outside them
(1 % slack) are refused as corrupt.
"""

from __future__ import annotations

import sys
from typing import Any

from breed.problems.problem import ClientCommand, FieldSpec, Parameter, Problem

NAMES = ("T0", "T1", "T2", "T3", "T4")
SETTINGS = ("grid", "steps", "dt", "alpha", "length")  # the wire dtype is the field's


def heat2d(solver: dict[str, Any]) -> Problem:
    lo, hi = (float(x) for x in solver["bounds"])
    grid = int(solver["grid"])
    return Problem(
        name="heat2d",
        parameters=tuple(Parameter(n, lo, hi) for n in NAMES),
        fields=(FieldSpec("u", (grid, grid), str(solver["dtype"]), (lo, hi), bounded=True),),
        steps=int(solver["steps"]),
        client=ClientCommand(
            (sys.executable, "-m", "breed.problems.heat2d_client"), int(solver["ranks"])
        ),
        settings={k: solver[k] for k in SETTINGS},
        statistic="std",
    )
