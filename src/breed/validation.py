"""The fixed validation set: full trajectories at scrambled-Halton parameters (paper, Section 4).

``breed make-validation`` computes ``size`` trajectories (paper: 200) once per study; every run of
the study then reads the same file, so validation losses of different runs are comparable.
lambda comes from a scrambled Halton sequence over ``[lo, hi]^5`` (``scipy.stats.qmc``, seeded),
and each trajectory from :func:`breed.heatpde.solve`, the very solver the clients run.

File format (``.npz``, no pickled objects): ``params`` float64 ``(n, 5)`` in K, ``fields``
float32 ``(n, T+1, M, M)`` in K (``[:, 0]`` is the initial field), the solver settings ``grid``,
``steps``, ``dt``, ``alpha``, ``length``, ``bounds`` and the Halton ``seed``. :func:`load_validation`
refuses a file whose solver settings differ from the run's, since its losses would be
meaningless. Compressed by default (about 0.6x the size of the raw floats; paper size: ~200 MB).

The solves run serially: one 64x64 trajectory of 100 steps takes a few milliseconds, so a pool
of processes would cost more to start than it saves on two cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import qmc

FORMAT = "breed-validation-v1"
SOLVER_KEYS = ("grid", "steps", "dt", "alpha", "length", "bounds")
DIM = 5


class ValidationFileError(ValueError):
    """A missing, unreadable or mismatched validation file (one-line message)."""


@dataclass(frozen=True)
class ValidationSet:
    """Trajectories of the validation set; ``solver`` holds the settings that made them."""

    params: np.ndarray  # (n, 5) float64, K
    fields: np.ndarray  # (n, T+1, M, M) float32, K
    solver: dict[str, Any]  # grid, steps, dt, alpha, length, bounds [lo, hi]
    seed: int

    @property
    def size(self) -> int:
        return int(self.params.shape[0])

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.solver, self.size, self.seed)


def halton_params(size: int, seed: int, bounds: tuple[float, float]) -> np.ndarray:
    """``size`` points of a scrambled Halton sequence over ``[lo, hi]^5`` (float64, K)."""
    lo, hi = float(bounds[0]), float(bounds[1])
    if size < 1:
        raise ValueError(f"validation.size must be >= 1, got {size}")
    if not lo < hi:
        raise ValueError(f"solver.bounds: lower bound {lo} must be below upper bound {hi}")
    unit = qmc.Halton(d=DIM, scramble=True, seed=seed).random(size)
    return qmc.scale(unit, [lo] * DIM, [hi] * DIM)


def compute_validation(size: int, seed: int, grid: int, steps: int, dt: float, alpha: float,
                       length: float, bounds: tuple[float, float]) -> ValidationSet:
    """Solve every trajectory of the set (eqs. 13-16) at its Halton parameters."""
    from breed.heatpde import solve

    params = halton_params(size, seed, bounds)
    fields = np.empty((size, steps + 1, grid, grid), dtype=np.float32)
    for k in range(size):
        fields[k] = solve(params[k], grid=grid, steps=steps, dt=dt, alpha=alpha, length=length)
    solver = {"grid": int(grid), "steps": int(steps), "dt": float(dt), "alpha": float(alpha),
              "length": float(length), "bounds": [float(bounds[0]), float(bounds[1])]}
    return ValidationSet(params, fields, solver, int(seed))


def save_validation(vset: ValidationSet, path: str | Path, compress: bool = True) -> None:
    """Write the set to ``path`` (exactly that name), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"format": np.array(FORMAT), "params": vset.params,
                              "fields": vset.fields, "seed": np.int64(vset.seed)}
    for key in SOLVER_KEYS:
        arrays[key] = np.asarray(vset.solver[key])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:  # a file object: numpy must not append ".npz"
            (np.savez_compressed if compress else np.savez)(fh, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_validation(path: str | Path, *, size: int = 200, seed: int = 12345, grid: int = 64,
                    steps: int = 100, dt: float = 0.01, alpha: float = 1.0,
                    length: float = 10.0, bounds: tuple[float, float] = (100.0, 500.0),
                    compress: bool = True) -> ValidationSet:
    """Compute the set and write it to ``path``; returns it."""
    vset = compute_validation(size, seed, grid, steps, dt, alpha, length, bounds)
    save_validation(vset, path, compress)
    return vset


def fingerprint(solver: dict[str, Any], size: int, seed: int) -> str:
    """What made a validation set, hashed: its solver settings and its Halton design. Two sets
    with the same fingerprint hold the same trajectories; a run records the one it used."""
    canon = {"format": FORMAT, "size": int(size), "seed": int(seed),
             **{k: solver[k] for k in SOLVER_KEYS}}
    canon["bounds"] = [float(x) for x in canon["bounds"]]
    for key in ("dt", "alpha", "length"):
        canon[key] = float(canon[key])
    for key in ("grid", "steps"):
        canon[key] = int(canon[key])
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _open(path: Path) -> Any:
    if not path.is_file():
        raise ValidationFileError(f"validation file: no such file {str(path)!r}")
    return np.load(path, allow_pickle=False)


def _header(data: Any, path: Path) -> tuple[dict[str, Any], int, int]:
    """(solver settings, seed, size) of an open set, without reading its fields."""
    if str(data["format"]) != FORMAT:
        raise ValidationFileError(f"validation file {path}: format "
                                  f"{str(data['format'])!r}, expected {FORMAT!r}")
    solver = {key: data[key].tolist() for key in SOLVER_KEYS}
    return solver, int(data["seed"]), int(data["params"].shape[0])


def _unreadable(path: Path, exc: BaseException) -> ValidationFileError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ValidationFileError(f"validation file {path}: not a breed validation set ({reason})")


def check_validation_file(path: str | Path, cfg: dict[str, Any]) -> str:
    """Refuse a set that was not made for this run config (solver settings, validation size and
    seed), reading only its header; returns its fingerprint."""
    path = Path(path)
    try:
        with _open(path) as data:
            solver, seed, size = _header(data, path)
    except ValidationFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise _unreadable(path, exc) from None
    check_solver(solver, cfg["solver"], path)
    check_design((size, seed), (cfg["validation"]["size"], cfg["validation"]["seed"]), path)
    return fingerprint(solver, size, seed)


def check_design(stored: tuple[int, int], expected: tuple[int, int], path: str | Path) -> None:
    for key, have, want in zip(("size", "seed"), stored, expected, strict=True):
        if int(have) != int(want):
            raise ValidationFileError(
                f"validation file {path}: made with validation.{key} {have} but the run has "
                f"{want}; remake it with `breed make-validation --config RUN.yaml`")


def load_validation(path: str | Path, expect_solver: dict[str, Any] | None = None,
                    expect_design: tuple[int, int] | None = None) -> ValidationSet:
    """Read a set; with ``expect_solver`` (e.g. the run's ``solver`` section) check that it was
    made with the same grid, steps, dt, alpha, length and bounds (keys absent there are not
    checked; ``ranks``/``dtype`` do not change the trajectories and are ignored), with
    ``expect_design`` that it has this (size, seed)."""
    path = Path(path)
    try:
        with _open(path) as data:
            solver, seed, size = _header(data, path)
            if expect_solver is not None:
                check_solver(solver, expect_solver, path)
            if expect_design is not None:
                check_design((size, seed), expect_design, path)
            vset = ValidationSet(data["params"], data["fields"], solver, seed)
    except ValidationFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise _unreadable(path, exc) from None
    n, grid, steps = vset.size, solver["grid"], solver["steps"]
    if vset.params.shape != (n, DIM) or vset.fields.shape != (n, steps + 1, grid, grid):
        raise ValidationFileError(f"validation file {path}: params {vset.params.shape} and "
                                  f"fields {vset.fields.shape} do not match grid {grid}, "
                                  f"steps {steps}")
    return vset


def check_solver(stored: dict[str, Any], expected: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`ValidationFileError` naming the first solver setting that differs."""
    for key in SOLVER_KEYS:
        if key not in expected:
            continue
        have, want = stored[key], expected[key]
        if key == "bounds":
            same = len(want) == 2 and all(math.isclose(float(a), float(b), rel_tol=1e-12)
                                          for a, b in zip(have, want, strict=True))
        elif key in ("grid", "steps"):
            same = int(have) == int(want)
        else:
            same = math.isclose(float(have), float(want), rel_tol=1e-12)
        if not same:
            raise ValidationFileError(
                f"validation file {path}: solver.{key} is {have} but the run has {want}; "
                "remake it with `breed make-validation --config RUN.yaml`")


# -- command line -------------------------------------------------------------------------
class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


SOLVER_FLAGS = ("grid", "steps", "dt", "alpha", "length", "bounds")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="breed make-validation", description=__doc__.splitlines()[0])
    p.add_argument("--output", "-o", required=True, type=Path, help="file to write (.npz)")
    p.add_argument("--config", type=Path, help="take the solver settings (and validation.size "
                   "and .seed unless given) from this run config")
    p.add_argument("--size", type=int, help="trajectories (default 200)")
    p.add_argument("--seed", type=int, help="seed of the scrambled Halton sequence (12345)")
    p.add_argument("--grid", type=int, help="M, nodes per side (64)")
    p.add_argument("--steps", type=int, help="T, steps after the initial field (100)")
    p.add_argument("--dt", type=float, help="time step in s (0.01)")
    p.add_argument("--alpha", type=float, help="thermal diffusivity (1.0)")
    p.add_argument("--length", type=float, help="side of the domain in m (10.0)")
    p.add_argument("--bounds", type=float, nargs=2, metavar=("LO", "HI"),
                   help="bounds of T0..T4 in K (100 500)")
    p.add_argument("--no-compress", action="store_true", help="write an uncompressed .npz")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """A validated run config carrying the requested solver and validation settings."""
    from breed.config import load_config, validate

    given = [f for f in SOLVER_FLAGS if getattr(args, f) is not None]
    if args.config is not None:
        if given:
            raise _UsageError(f"--{given[0]} cannot be combined with --config (the solver "
                              "settings come from the config)")
        cfg = load_config(args.config)
    else:
        solver = {f: getattr(args, f) for f in given}
        if "bounds" in solver:
            solver["bounds"] = list(solver["bounds"])
        cfg = validate({"solver": solver})
    overrides = {k: getattr(args, k) for k in ("size", "seed") if getattr(args, k) is not None}
    if overrides:
        cfg = validate({**cfg, "validation": {**cfg["validation"], **overrides}})
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``breed make-validation``: 0 on success, 2 with a one-line error on bad arguments."""
    from breed.config import ConfigError

    try:
        args = _parser().parse_args(argv)
        cfg = _settings(args)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, ConfigError) as exc:
        print(f"breed make-validation: error: {exc}", file=sys.stderr)
        return 2
    sc, vc = cfg["solver"], cfg["validation"]
    t0 = time.perf_counter()
    try:
        vset = make_validation(args.output, size=vc["size"], seed=vc["seed"], grid=sc["grid"],
                               steps=sc["steps"], dt=sc["dt"], alpha=sc["alpha"],
                               length=sc["length"], bounds=tuple(sc["bounds"]),
                               compress=not args.no_compress)
    except ValueError as exc:
        print(f"breed make-validation: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"breed make-validation: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    print(f"wrote {vset.size} trajectories (grid {sc['grid']}, steps {sc['steps']}, "
          f"seed {vc['seed']}) to {args.output} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
