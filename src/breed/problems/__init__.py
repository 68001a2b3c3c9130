"""Problems: what a solver computes and how breed starts it (``problem:`` in the run config).

``problem: heat2d`` (the default) is the paper's heat equation, a preset that expands, from the
``solver:`` section, into exactly the structure a user writes for a solver of their own;
``problem: burgers1d`` is 1D viscous Burgers (:mod:`breed.problems.burgers1d`)::

    problem:
      name: my-solver
      parameters:                       # d >= 1, each with its own bounds
        - {name: nu, low: 1.0e-3, high: 1.0e-1, scale: log}
        - {name: a, low: 0.5, high: 1.5}
      fields:                           # per time step, any rank, float32 or float64
        - {name: u, shape: [256], dtype: float64, range: [-2, 2]}   # range: optional
      steps: 100                        # the client sends t = 0..100
      client:
        command: [python3, my_solver.py, --flag]
        ranks: 1
        env: {OMP_NUM_THREADS: "1"}
      settings: {}                      # anything the client should receive in ASSIGN

:func:`problem_of` is the only place that reads these keys; every other module asks the
:class:`Problem` it returns.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from breed.config import ConfigError
from breed.problems.problem import (
    DTYPES,
    SCALES,
    ClientCommand,
    FieldSpec,
    Parameter,
    Problem,
)

PRESETS = ("heat2d", "burgers1d")
STATISTICS = ("unit_std", "std", "mean", "norm")  # of lambda, Fig. 4 (breed.study.deviation)
MAX_SAMPLE = 1 << 28  # values per sample (1 GiB of float32): beyond is a mistake, not a problem


def problem_of(cfg: dict[str, Any]) -> Problem:
    """The problem of a validated run config (a preset or a user's description)."""
    spec = cfg.get("problem", "heat2d")
    if isinstance(spec, str):
        if spec == "heat2d":
            from breed.problems.heat2d import heat2d

            return heat2d(cfg["solver"])
        if spec == "burgers1d":
            from breed.problems.burgers1d import burgers1d

            return burgers1d()
        raise ConfigError(
            f"problem: {spec!r} is not a preset ({', '.join(PRESETS)}) nor a description"
        )
    return parse_problem(spec)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return float(value)


def _mapping(value: Any, key: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    for k in value:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}: unknown key (one of {', '.join(sorted(allowed))})")
    for k in sorted(required):
        if k not in value:
            raise ConfigError(f"{key}.{k}: required")
    return value


def _name(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise ConfigError(f"{key}: {value!r} must be a name (letters, digits, _)")
    return value


def parse_parameter(raw: Any, key: str) -> Parameter:
    d = _mapping(raw, key, {"name", "low", "high", "scale"}, {"name", "low", "high"})
    low, high = _number(d["low"], f"{key}.low"), _number(d["high"], f"{key}.high")
    scale = d.get("scale", "linear")
    if scale not in SCALES:
        raise ConfigError(f"{key}.scale: {scale!r} is not one of {list(SCALES)}")
    if not low < high:
        raise ConfigError(f"{key}.low: {low:g} must be below high {high:g}")
    if scale == "log" and low <= 0:
        raise ConfigError(f"{key}.low: a log-scale parameter needs low > 0, got {low:g}")
    return Parameter(_name(d["name"], f"{key}.name"), low, high, scale)


def parse_field(raw: Any, key: str) -> FieldSpec:
    d = _mapping(raw, key, {"name", "shape", "dtype", "range"}, {"name", "shape"})
    shape = d["shape"]
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape)
    ):
        raise ConfigError(f"{key}.shape: {shape!r} must be a list of integers, e.g. [64, 64]")
    if any(n < 1 for n in shape):
        raise ConfigError(f"{key}.shape: {shape} has an extent below 1")
    dtype = d.get("dtype", "float64")
    if dtype not in DTYPES:
        raise ConfigError(f"{key}.dtype: {dtype!r} is not one of {list(DTYPES)}")
    rng = d.get("range")
    if rng is not None:
        if not isinstance(rng, list) or len(rng) != 2:
            raise ConfigError(f"{key}.range: expected [low, high], got {rng!r}")
        lo, hi = _number(rng[0], f"{key}.range.0"), _number(rng[1], f"{key}.range.1")
        if not lo < hi:
            raise ConfigError(f"{key}.range: low {lo:g} must be below high {hi:g}")
        rng = (lo, hi)
    return FieldSpec(_name(d["name"], f"{key}.name"), tuple(shape), dtype, rng)


def parse_client(raw: Any, key: str) -> ClientCommand:
    d = _mapping(raw, key, {"command", "ranks", "env"}, {"command"})
    cmd = d["command"]
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) and c for c in cmd):
        raise ConfigError(f"{key}.command: expected a program and its arguments, got {cmd!r}")
    ranks = d.get("ranks", 1)
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ConfigError(f"{key}.ranks: {ranks!r} must be an integer >= 1")
    env = d.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k.isidentifier() and isinstance(v, str | int | float)
        for k, v in env.items()
    ):
        raise ConfigError(f"{key}.env: expected a mapping of variable names to strings")
    if any(k.startswith("BREED_") for k in env):
        raise ConfigError(f"{key}.env: BREED_* variables are set by the launcher")
    return ClientCommand(tuple(cmd), ranks, {k: str(v) for k, v in env.items()})


def parse_problem(raw: Any) -> Problem:
    d = _mapping(
        raw,
        "problem",
        {"name", "parameters", "fields", "steps", "client", "settings", "statistic"},
        {"name", "parameters", "fields", "steps", "client"},
    )
    params, fields = d["parameters"], d["fields"]
    if not isinstance(params, list) or not params:
        raise ConfigError("problem.parameters: at least one parameter is needed")
    if not isinstance(fields, list) or not fields:
        raise ConfigError("problem.fields: at least one field is needed")
    parameters = tuple(parse_parameter(p, f"problem.parameters.{k}") for k, p in enumerate(params))
    specs = tuple(parse_field(f, f"problem.fields.{k}") for k, f in enumerate(fields))
    for what, items in (("parameters", parameters), ("fields", specs)):
        names = [x.name for x in items]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ConfigError(f"problem.{what}: the name {dup!r} appears twice")
    steps = d["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"problem.steps: {steps!r} must be an integer >= 1")
    settings = d.get("settings") or {}
    if not isinstance(settings, dict):
        raise ConfigError("problem.settings: expected a mapping")
    statistic = d.get("statistic", "unit_std")
    if statistic not in STATISTICS:
        raise ConfigError(f"problem.statistic: {statistic!r} is not one of {list(STATISTICS)}")
    name = d["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"problem.name: {name!r} must be letters, digits, '_', '.', '-'")
    problem = Problem(
        name,
        parameters,
        specs,
        steps,
        parse_client(d["client"], "problem.client"),
        settings,
        statistic,
    )
    if problem.sample_size > MAX_SAMPLE:
        raise ConfigError(
            f"problem.fields: {problem.sample_size} values per time step, more than {MAX_SAMPLE}"
        )
    return problem


def check_command(problem: Problem, workdir: Path | None = None) -> None:
    """The client command's program exists (on PATH, or as a path) — before anything starts."""
    prog = problem.client.command[0]
    if prog == "{python}" or prog == sys.executable:
        return
    path = Path(prog)
    if path.is_absolute() or "/" in prog:
        here = path if path.is_absolute() or workdir is None else workdir / path
        if not (path.is_file() or here.is_file()):
            raise ConfigError(f"problem.client.command: no such program {prog!r}")
        return
    if shutil.which(prog) is None:
        raise ConfigError(f"problem.client.command: {prog!r} is not on PATH")


__all__ = [
    "PRESETS",
    "ClientCommand",
    "FieldSpec",
    "Parameter",
    "Problem",
    "check_command",
    "parse_problem",
    "problem_of",
]
