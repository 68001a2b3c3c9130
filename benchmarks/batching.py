"""A paper-size run with one time step per data message against the default step batch.

    python benchmarks/batching.py                 # S=800, 64x64, T=100, m=10; ~5 min
    python benchmarks/batching.py --simulations 40 --grid 16 --repeats 1   # smoke, seconds

Each round runs the same deterministic Breed configuration (``training.deterministic``, 2
iterations per simulation, ``sampler.lag`` 10, persistent clients, the paper's H=16, L=1) twice,
``launcher.batch_steps: 1`` then ``null`` (auto, docs/PROTOCOL.md 6.1), so the two runs do
exactly the same work: the same lambda, the same iterations, the same validation error (checked,
the script fails otherwise). Printed per setting, min-max over the rounds: the wall time of
``breed run``, the CPU seconds of its whole process tree (launcher, server, clients), the data
messages the server received, and the ratio batch-1 / auto of wall and CPU time (> 1: batching
is faster), with the machine's load before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from minmax import span


def config(args: argparse.Namespace, batch: int | None, validation: Path) -> dict:
    """The run of one setting; everything but launcher.batch_steps is the same."""
    return {
        "seed": args.seed,
        "study": {"simulations": args.simulations},
        "solver": {"grid": args.grid, "steps": args.steps},
        "model": {"hidden": 16, "layers": 1, "batch_size": 128},
        "training": {
            "deterministic": True,
            "iterations_per_simulation": 2,
            "threads": 1,
            "validation_interval": 100,
            "checkpoint_interval": 10**6,
            "per_sample_log": False,
            "progress": False,
        },
        "buffer": {"capacity": 6000, "watermark": 300},
        "sampler": {
            "name": "breed",
            "lag": args.max_jobs,
            "breed": {"sigma": 0.0125, "period": 200, "window": 200},
        },
        "launcher": {"max_jobs": args.max_jobs, "persistent": True, "batch_steps": batch},
        "validation": {"file": str(validation), "size": args.validation_size},
    }


def breed(*argv: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "breed", *argv], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        sys.exit(f"breed {argv[0]} failed: {proc.stderr.strip()[-2000:]}")


def timed_run(cfg: dict, workdir: Path) -> dict:
    path = workdir / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    breed("run", str(path), "--output", str(workdir / "run"))
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # every reaped descendant's time
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    return {
        "load": load,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "messages": summary["messages"].get("step_batches", 0),
        "iterations": summary["iterations"],
        "val_mse": summary["final_validation"]["val_mse"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulations", type=int, default=800)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--max-jobs", type=int, default=10)
    ap.add_argument("--validation-size", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    settings = {"1": 1, "auto": None}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        validation = Path(tmp) / "validation.npz"
        breed(
            "make-validation", "--output", str(validation), "--size", str(args.validation_size),
            "--grid", str(args.grid), "--steps", str(args.steps),
        )  # fmt: skip
        for rep in range(args.repeats):  # interleaved: drift hits both settings
            for name, batch in settings.items():
                workdir = Path(tmp) / f"{rep}-{name}"
                workdir.mkdir()
                runs[name].append(timed_run(config(args, batch, validation), workdir))
    results = {run["val_mse"] for rows in runs.values() for run in rows}
    if len(results) != 1:
        sys.exit(f"the runs differ (validation MSE {sorted(results)}): not the same work")
    print(
        f"S={args.simulations}, M={args.grid}, T={args.steps}, m={args.max_jobs}, deterministic "
        f"Breed, {runs['1'][0]['iterations']} iterations, validation MSE {results.pop():.6f} "
        f"in every run; {args.repeats} round(s), min-max"
    )
    for name, rows in runs.items():
        col = {key: [row[key] for row in rows] for key in rows[0]}
        print(
            f"  batch_steps {name:4s}: wall {span(col['wall_s'], '.1f')} s, "
            f"CPU {span(col['cpu_s'], '.1f')} s, {span(col['messages'], 'd')} data messages, "
            f"load before {span(col['load'], '.2f')}"
        )
    for key in ("wall_s", "cpu_s"):
        ratios = [one[key] / auto[key] for one, auto in zip(runs["1"], runs["auto"], strict=True)]
        print(f"  {key[:-2]} ratio batch 1 / auto (paired by round): {span(ratios, '.2f')}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
