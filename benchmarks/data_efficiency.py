"""Data efficiency, the paper's title claim: Breed at S simulations against Random at the same S
and against Random at the largest S, at equal training iterations, paired seeds (issue 13).

    python benchmarks/data_efficiency.py --out results/data_efficiency.md          # full sweep
    python benchmarks/data_efficiency.py --budgets 20 40 --seeds 2 --grid 16 --steps 10 \\
        --iterations 200 --max-jobs 2 --out smoke.md                                 # minutes
    python benchmarks/data_efficiency.py --problem burgers1d --out results/data_efficiency_burgers1d.md

Every run is a real ``breed run`` (local backend, ``--max-jobs`` clients, the paper's m = 10
by default) of :mod:`breed_vs_random`'s paper configuration (``--problem heat2d``) or of
``config/examples/burgers.yaml`` (``--problem burgers1d``: S in {60, 120, 240}, 2400
iterations by default), with one total iteration budget
``--iterations`` for EVERY run whatever its S: the only thing that differs between two runs of
a seed is the data. By default the runs are deterministic (``training.deterministic``, the
iterations paced per ingested simulation, ``sampler.lag`` = m), so the same command gives the
same table on any machine; ``--timing`` runs the default, timing-dependent mode instead.

Reported per S: mean and p99 of the per-trajectory validation error (recomputed from each
run's model.pt on one shared Halton set), Random(S)/Breed(S), and Random(S_max)/Breed(S) —
both as geometric means over seeds with a paired bootstrap 95 % CI (breed.study.tables, the
one ratio convention: > 1 means Breed is better) — and the smallest S at which Breed matches
Random at S_max (ratio >= 1), on the mean and on the p99 error.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from breed_vs_random import BASE, fair_training, read_run, run_all

from breed.learning.validation import load_validation
from breed.study.runview import read_run as read_view
from breed.study.tables import RATIO_MEANING, compare_paired

METHODS = ("uniform", "breed")  # uniform is the paper's Random
METRICS = (("mean", "traj_mean"), ("p99", "traj_p99"))
BURGERS = Path(__file__).resolve().parents[1] / "config" / "examples" / "burgers.yaml"
# per problem: budgets, iterations, validation trajectories
DEFAULTS = {"heat2d": ([200, 400, 800], 1600, 200), "burgers1d": ([60, 120, 240], 2400, 100)}


def configure_burgers(args: argparse.Namespace, val_path: Path) -> dict[str, Any]:
    """The Burgers example at the sweep's budget, clients and pacing (its model, buffer and
    Breed settings as they are)."""
    cfg = yaml.safe_load(BURGERS.read_text())
    cfg.pop("output", None)
    training = fair_training(args.iterations, max(args.budgets), args.timing)
    cfg["training"] = {**cfg["training"], **training, "checkpoint_interval": 1000}
    if not args.timing:
        cfg["sampler"]["lag"] = args.max_jobs
    cfg["launcher"] = {**cfg["launcher"], "max_jobs": args.max_jobs, "persistent": True}
    cfg["validation"] = {"file": str(val_path.resolve()), "size": args.validation_size}
    return cfg


def read_summary(run_dir: Path) -> dict[str, Any]:
    """A run's final errors as its server computed them on the shared validation file
    (mean = val_mse, the mean of per-trajectory MSEs; p99 over trajectories), read by
    ``breed show``'s reader."""
    view = read_view(run_dir)
    return {
        "iterations": view.iterations,
        "traj_mean": view.validation["val_mse"],
        "traj_p99": view.validation["traj_err_p99"],
        "n_proposal": view.proposal_total,
    }


def configure(args: argparse.Namespace, val_path: Path) -> dict[str, Any]:
    if args.problem == "burgers1d":
        return configure_burgers(args, val_path)
    # n per ingested simulation at S_max for every S, the rest after the stream
    training = fair_training(args.iterations, max(args.budgets), args.timing)
    return {
        **BASE,
        "solver": {"grid": args.grid, "steps": args.steps},
        "model": {**BASE["model"], "hidden": args.hidden, "layers": args.layers},
        "training": training,
        "buffer": {**BASE["buffer"], "watermark": min(300, (args.steps + 1) * 3)},
        "sampler": {
            **BASE["sampler"],
            "breed": {**BASE["sampler"]["breed"], "period": args.period, "window": args.window},
            **({} if args.timing else {"lag": args.max_jobs}),
        },
        "launcher": {**BASE["launcher"], "max_jobs": args.max_jobs},
        "validation": {"file": str(val_path.resolve()), "size": args.validation_size},
    }


def cell(c: Any) -> str:
    return f"{c.gmean:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}] ({c.breed_wins}/{c.pairs})"


def report(args: argparse.Namespace, res: dict[tuple[int, str], list[dict[str, Any]]]) -> str:
    top = max(args.budgets)
    lines = [
        f"## Data efficiency: S in {args.budgets}, {args.seeds} paired seeds, "
        f"{args.iterations} iterations for every run, m = {args.max_jobs}, "
        f"{'timing-dependent' if args.timing else 'deterministic'} mode\n",
        (
            f"Grid {args.grid}², T = {args.steps}, H = {args.hidden}, L = {args.layers}. "
            if args.problem == "heat2d"
            else f"Problem {args.problem} ({BURGERS.name}'s model, buffer and Breed settings). "
        )
        + f"{RATIO_MEANING}; cells: geometric mean [95 % bootstrap CI] (Breed better/pairs).\n",
        "| S | error | Random(S) | Breed(S) | Random(S)/Breed(S) | "
        f"Random({top})/Breed(S) | iterations R / B | Breed's proposal draws |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    matches: dict[str, int | None] = {name: None for name, _ in METRICS}
    ref = {key: [x[key] for x in res[(top, "uniform")]] for _, key in METRICS}
    for s in sorted(args.budgets):
        rnd, brd = res[(s, "uniform")], res[(s, "breed")]
        its = "/".join(f"{np.mean([x['iterations'] for x in runs]):.0f}" for runs in (rnd, brd))
        drawn = f"{np.mean([x['n_proposal'] for x in brd]):.0f} of {s}"
        for name, key in METRICS:
            same = compare_paired([x[key] for x in rnd], [x[key] for x in brd])
            vs_top = compare_paired(ref[key], [x[key] for x in brd])
            if matches[name] is None and vs_top.gmean >= 1.0:
                matches[name] = s
            lines.append(
                f"| {s} | {name} | {same.random_mean:.4g} | {same.breed_mean:.4g} | "
                f"{cell(same)} | {cell(vs_top)} | {its} | {drawn} |"
            )
    lines.append("")
    for name, _ in METRICS:
        s = matches[name]
        lines.append(
            f"- {name} error: Breed matches Random at S = {top} "
            + (f"from S = {s}" if s is not None else "at no budget of the sweep")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown file for the table")
    ap.add_argument("--workdir", type=Path, help="runs (results/data_efficiency[_burgers1d])")
    ap.add_argument("--problem", choices=sorted(DEFAULTS), default="heat2d")
    ap.add_argument(
        "--budgets", type=int, nargs="+", help="S values (200 400 800; Burgers 60 120 240)"
    )
    ap.add_argument("--seeds", type=int, default=8, help="paired seeds 0..n-1 (8)")
    ap.add_argument("--iterations", type=int, help="budget of every run (1600; Burgers 2400)")
    ap.add_argument("--max-jobs", type=int, default=10, help="clients per run, m (10)")
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--validation-size", type=int, help="trajectories (200; Burgers 100)")
    ap.add_argument("--period", type=int, default=200, help="Breed's P in iterations (200)")
    ap.add_argument("--window", type=int, default=200, help="Breed's N (200)")
    ap.add_argument("--timing", action="store_true", help="the default, non-deterministic mode")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    args = ap.parse_args(argv)
    budgets, iterations, val_size = DEFAULTS[args.problem]
    args.budgets = args.budgets or budgets
    args.iterations = args.iterations or iterations
    args.validation_size = args.validation_size or val_size
    suffix = "" if args.problem == "heat2d" else f"_{args.problem}"
    args.workdir = args.workdir or Path(f"results/data_efficiency{suffix}")
    if args.iterations < max(args.budgets) and not args.timing:
        ap.error("--iterations: deterministic mode needs at least one iteration per simulation")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    val_path = work / "validation.npz"
    base_path = work / "base.yaml"
    if not val_path.exists():
        probe: dict[str, Any] = (
            {"solver": {"grid": args.grid, "steps": args.steps}}
            if args.problem == "heat2d"
            else {"problem": args.problem}
        )
        (work / "validation.yaml").write_text(yaml.safe_dump(probe))
        subprocess.run(
            [
                *(sys.executable, "-m", "breed", "make-validation"),
                *("--config", str(work / "validation.yaml"), "--output", str(val_path)),
                *("--size", str(args.validation_size)),
            ],
            check=True,
        )
    base_path.write_text(yaml.safe_dump(configure(args, val_path), sort_keys=False))
    jobs, index = [], []
    for seed in range(args.seeds):
        for s in sorted(args.budgets):
            for method in METHODS:  # pairs back to back: machine load hits both alike
                run_dir = work / f"S{s}" / method / f"seed{seed}"
                sets = [f"seed={seed}", f"sampler.name={method}", f"study.simulations={s}"]
                jobs.append((run_dir, sets))
                index.append((s, method, run_dir))
    t0 = time.monotonic()
    run_all(jobs, base_path, 1, args.timeout)
    print(f"runs: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    val = load_validation(val_path) if args.problem == "heat2d" else None
    res: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for s, method, run_dir in index:
        row = read_run(run_dir, val) if val is not None else read_summary(run_dir)
        res.setdefault((s, method), []).append(row)
    text = report(args, res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
