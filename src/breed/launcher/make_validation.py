"""``breed make-validation``: compute the fixed validation set of a study once.

The heat preset is solved in-process; any other problem's set is collected by running its own
client through the launcher (:mod:`breed.launcher.collection`). One line and exit 2 on bad
arguments, exit 1 when the collection or the write fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from breed.cli import describe
from breed.launcher.collection import collect_validation
from breed.learning.validation import compute_validation, save_validation


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


SOLVER_FLAGS = ("grid", "steps", "dt", "alpha", "length", "bounds")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="breed make-validation", description=describe("make-validation"))
    p.add_argument("--output", "-o", required=True, type=Path, help="file to write (.npz)")
    p.add_argument(
        "--config",
        type=Path,
        help="take the solver settings (and validation.size "
        "and .seed unless given) from this run config",
    )
    p.add_argument("--size", type=int, help="trajectories (default 200)")
    p.add_argument("--seed", type=int, help="seed of the scrambled Halton sequence (12345)")
    p.add_argument("--grid", type=int, help="M, nodes per side (64)")
    p.add_argument("--steps", type=int, help="T, steps after the initial field (100)")
    p.add_argument("--dt", type=float, help="time step in s (0.01)")
    p.add_argument("--alpha", type=float, help="thermal diffusivity (1.0)")
    p.add_argument("--length", type=float, help="side of the domain in m (10.0)")
    p.add_argument(
        "--bounds",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="bounds of T0..T4 in K (100 500)",
    )
    p.add_argument("--no-compress", action="store_true", help="write an uncompressed .npz")
    return p


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """A validated run config carrying the requested solver and validation settings."""
    from breed.config import load_config, validate

    given = [f for f in SOLVER_FLAGS if getattr(args, f) is not None]
    if args.config is not None:
        if given:
            raise _UsageError(
                f"--{given[0]} cannot be combined with --config (the solver "
                "settings come from the config)"
            )
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
    from breed.problems import problem_of

    vc, problem = cfg["validation"], problem_of(cfg)
    t0 = time.perf_counter()
    try:
        if problem.name == "heat2d":
            vset = compute_validation(problem, vc["size"], vc["seed"])
        else:  # its own client, through the launcher
            vset = collect_validation(cfg, args.output)
        save_validation(vset, args.output, compress=not args.no_compress)
    except ValueError as exc:
        print(f"breed make-validation: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"breed make-validation: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"breed make-validation: cannot write {args.output}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    print(
        f"wrote {vset.size} trajectories of {problem.name} ({problem.steps} steps, seed "
        f"{vc['seed']}, fingerprint {vset.fingerprint}) to {args.output} in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
