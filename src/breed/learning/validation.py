"""The fixed validation set: full trajectories at scrambled-Halton parameters (paper, Section 4).

``breed make-validation`` computes ``size`` trajectories (paper: 200) once per study; every run of
the study then reads the same file, so validation losses of different runs are comparable.
λ comes from a scrambled Halton sequence over the problem's box in sampling space
(``scipy.stats.qmc``, seeded). The heat preset solves its trajectories in-process
(:func:`breed.problems.heat2d_solver.solve`, the very solver its clients run); any other problem's set is
made by running the problem's own client through the launcher on that design
(:mod:`breed.launcher.collection`).

File format (``.npz``, no pickled objects): ``params`` float64 ``(n, d)`` physical, ``fields``
float32 ``(n, T+1, *shape)`` for a one-field problem, else ``(n, T+1, S)`` with the fields
concatenated (``[:, 0]`` is the initial state), ``problem`` (JSON: what decides a trajectory,
:meth:`~breed.problems.problem.Problem.identity`), ``fingerprint``, the Halton ``seed``.
:func:`load_validation` refuses a file made for another problem, size or seed with one line
naming the first difference, since its losses would be meaningless.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import qmc

from breed.fsio import atomic_write
from breed.problems.problem import Problem

FORMAT = "breed-validation-v2"
HEAT_KEYS = ("grid", "steps", "dt", "alpha", "length", "bounds")


class ValidationFileError(ValueError):
    """A missing, unreadable or mismatched validation file (one-line message)."""


@dataclass(frozen=True)
class ValidationSet:
    """Trajectories of the validation set and the problem identity that made them."""

    params: np.ndarray  # (n, d) float64, physical
    fields: np.ndarray  # (n, T+1, *sample shape) float32, physical
    problem: dict[str, Any]  # Problem.identity()
    seed: int

    @property
    def size(self) -> int:
        return int(self.params.shape[0])

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.problem, self.size, self.seed)

    @property
    def solver(self) -> dict[str, Any]:
        """The heat preset's settings and bounds (what ``solver:`` holds)."""
        return heat_view(self.problem)


def fingerprint(identity: dict[str, Any], size: int, seed: int) -> str:
    """The problem's identity and the Halton design, hashed: two sets with the same fingerprint
    hold the same trajectories; a run records the one it used."""
    import hashlib

    text = json.dumps(
        {"format": FORMAT, "problem": identity, "size": int(size), "seed": int(seed)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def heat_view(identity: dict[str, Any]) -> dict[str, Any]:
    out = dict(identity.get("settings", {}))
    par = identity.get("parameters") or [{}]
    out["bounds"] = [par[0].get("low"), par[0].get("high")]
    return out


def halton_design(size: int, seed: int, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``size`` points of a scrambled Halton sequence over a box (sampling space)."""
    if size < 1:
        raise ValueError(f"validation.size must be >= 1, got {size}")
    unit = qmc.Halton(d=len(lower), scramble=True, seed=seed).random(size)
    return np.clip(qmc.scale(unit, lower, upper), lower, upper)


def halton_params(size: int, seed: int, problem: Problem) -> np.ndarray:
    """The validation design: ``size`` scrambled-Halton points over the problem's box, as
    physical λ (the ``validation`` sampler hands out the same points)."""
    return problem.from_sampling(halton_design(size, seed, problem.lower, problem.upper))


def heat_problem(
    grid: int = 64,
    steps: int = 100,
    dt: float = 0.01,
    alpha: float = 1.0,
    length: float = 10.0,
    bounds: tuple[float, float] = (100.0, 500.0),
) -> Problem:
    from breed.problems.heat2d import heat2d

    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise ValueError(f"solver.bounds: lower bound {lo} must be below upper bound {hi}")
    return heat2d(
        {
            "grid": grid,
            "steps": steps,
            "dt": dt,
            "alpha": alpha,
            "length": length,
            "bounds": [lo, hi],
            "ranks": 1,
            "dtype": "float64",
        }
    )


def compute_validation(problem: Problem, size: int, seed: int) -> ValidationSet:
    """Solve every trajectory of the set in-process (the heat preset, eqs. 13-16)."""
    from breed.problems.heat2d_solver import solve

    if problem.name != "heat2d":
        raise ValueError(
            f"problem {problem.name}: its validation set is made by its own "
            "client (breed make-validation --config RUN.yaml)"
        )
    s = problem.settings
    params = halton_params(size, seed, problem)
    fields = np.empty((size, problem.steps + 1, *problem.fields[0].shape), dtype=np.float32)
    for k in range(size):
        fields[k] = solve(
            params[k],
            grid=s["grid"],
            steps=s["steps"],
            dt=s["dt"],
            alpha=s["alpha"],
            length=s["length"],
        )
    return ValidationSet(params, fields, problem.identity(), int(seed))


def save_validation(vset: ValidationSet, path: str | Path, compress: bool = True) -> None:
    """Write the set to ``path`` (exactly that name), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT),
        "params": vset.params,
        "fields": vset.fields,
        "seed": np.int64(vset.seed),
        "problem": np.array(json.dumps(vset.problem)),
        "fingerprint": np.array(vset.fingerprint),
    }
    # a file object: numpy must not append ".npz"
    atomic_write(path, lambda fh: (np.savez_compressed if compress else np.savez)(fh, **arrays))


def make_validation(
    path: str | Path,
    *,
    size: int = 200,
    seed: int = 12345,
    grid: int = 64,
    steps: int = 100,
    dt: float = 0.01,
    alpha: float = 1.0,
    length: float = 10.0,
    bounds: tuple[float, float] = (100.0, 500.0),
    compress: bool = True,
) -> ValidationSet:
    """Compute the heat preset's set and write it to ``path``; returns it."""
    vset = compute_validation(heat_problem(grid, steps, dt, alpha, length, bounds), size, seed)
    save_validation(vset, path, compress)
    return vset


def _open(path: Path) -> Any:
    if not path.is_file():
        raise ValidationFileError(f"validation file: no such file {str(path)!r}")
    return np.load(path, allow_pickle=False)


def _header(data: Any, path: Path) -> tuple[dict[str, Any], int, int]:
    """(problem identity, seed, size) of an open set, without reading its fields."""
    if str(data["format"]) != FORMAT:
        raise ValidationFileError(
            f"validation file {path}: format {str(data['format'])!r}, expected {FORMAT!r}"
        )
    return json.loads(str(data["problem"])), int(data["seed"]), int(data["params"].shape[0])


def _unreadable(path: Path, exc: BaseException) -> ValidationFileError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ValidationFileError(f"validation file {path}: not a breed validation set ({reason})")


def check_validation_file(path: str | Path, cfg: dict[str, Any]) -> str:
    """Refuse a set that was not made for this run config (its problem, validation size and
    seed), reading only its header; returns its fingerprint."""
    from breed.problems import problem_of

    path = Path(path)
    try:
        with _open(path) as data:
            identity, seed, size = _header(data, path)
    except ValidationFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise _unreadable(path, exc) from None
    check_problem(identity, problem_of(cfg).identity(), path)
    check_design((size, seed), (cfg["validation"]["size"], cfg["validation"]["seed"]), path)
    return fingerprint(identity, size, seed)


def check_design(stored: tuple[int, int], expected: tuple[int, int], path: str | Path) -> None:
    for key, have, want in zip(("size", "seed"), stored, expected, strict=True):
        if int(have) != int(want):
            raise ValidationFileError(
                f"validation file {path}: made with validation.{key} {have} but the run has "
                f"{want}; remake it with `breed make-validation --config RUN.yaml`"
            )


def load_validation(
    path: str | Path,
    expect_problem: dict[str, Any] | None = None,
    expect_design: tuple[int, int] | None = None,
    *,
    expect_solver: dict[str, Any] | None = None,
) -> ValidationSet:
    """Read a set; with ``expect_problem`` (a :meth:`Problem.identity`) check it was made for
    that problem, with ``expect_design`` that it has this (size, seed), with ``expect_solver``
    (the heat preset's ``solver`` section) the heat settings present there."""
    path = Path(path)
    try:
        with _open(path) as data:
            identity, seed, size = _header(data, path)
            if expect_problem is not None:
                check_problem(identity, expect_problem, path)
            if expect_solver is not None:
                check_solver(heat_view(identity), expect_solver, path)
            if expect_design is not None:
                check_design((size, seed), expect_design, path)
            vset = ValidationSet(data["params"], data["fields"], identity, seed)
    except ValidationFileError:
        raise
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise _unreadable(path, exc) from None
    n, steps = vset.size, int(identity["steps"])
    d = len(identity["parameters"])
    size_per_step = sum(math.prod(f["shape"]) for f in identity["fields"])
    if (
        vset.params.shape != (n, d)
        or vset.fields.shape[:2] != (n, steps + 1)
        or math.prod(vset.fields.shape[2:]) != size_per_step
    ):
        raise ValidationFileError(
            f"validation file {path}: params {vset.params.shape} and "
            f"fields {vset.fields.shape} do not match its problem"
        )
    return vset


def check_problem(stored: dict[str, Any], expected: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`ValidationFileError` naming the first difference between two problems
    (as ``solver.KEY`` for the heat preset)."""
    if stored == expected:
        return
    if stored.get("name") == expected.get("name") == "heat2d":
        check_solver(heat_view(stored), heat_view(expected), path)
    where = _first_difference(stored, expected, "problem")
    raise ValidationFileError(
        f"validation file {path}: made for another problem ({where} "
        "differs); remake it with `breed make-validation --config "
        "RUN.yaml`"
    )


def _first_difference(a: Any, b: Any, path: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{path}.{key}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}.{k}")
    return path


def check_solver(stored: dict[str, Any], expected: dict[str, Any], path: str | Path) -> None:
    """Raise :class:`ValidationFileError` naming the first heat setting that differs."""
    for key in HEAT_KEYS:
        if key not in expected:
            continue
        have, want = stored.get(key), expected[key]
        if have is None:
            raise ValidationFileError(
                f"{path}: made without the heat setting {key!r}; "
                "make it again with breed make-validation"
            )
        if key == "bounds":
            same = len(want) == 2 and all(
                math.isclose(float(a), float(b), rel_tol=1e-12)
                for a, b in zip(have, want, strict=True)
            )
        elif key in ("grid", "steps"):
            same = int(have) == int(want)
        else:
            same = math.isclose(float(have), float(want), rel_tol=1e-12)
        if not same:
            raise ValidationFileError(
                f"validation file {path}: solver.{key} is {have} but the run has {want}; "
                "remake it with `breed make-validation --config RUN.yaml`"
            )
