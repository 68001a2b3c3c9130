"""Breed vs Random at equal budget (issue 4): paired seeds, one shared validation set.

    python benchmarks/breed_vs_random.py --out results/breed_vs_random.md
    python benchmarks/breed_vs_random.py --seeds 4 --simulations 400 --out reduced.md

Paper setup (Section 4, Table 1 study (2)): S = 800 simulations, M = 64, T = 100, B = 128,
Breed with sigma = 5 K, P = 200, N = 200, r = (0.5, 0.9, 3); models H = 16 with L = 1 (the
paper's small model) and L = 3 (where the paper saw Random overfit). For every model and seed,
one `breed run` with ``sampler.name: uniform`` (the paper's Random) and one with ``breed``; the
seed fixes the model initialisation and the initial uniform design of both (paired). Every run
validates on ONE set of 200 scrambled-Halton trajectories made once (`breed make-validation`).

Reported per model: final validation error (per-trajectory MSE in normalised units: mean, p99,
max, also without the t = 0 frame, recomputed here from each run's model.pt), the paired ratios
Random/Breed (> 1: Breed better; geometric mean, min-max, wins, two-sided Wilcoxon signed-rank
p-value), the error by time range, the mean input deviation std(T0..T4) (population std over
the five temperatures, paper Figure 4), the training iterations of each run, and the cost of
one resampling next to one training iteration (from the runs and a micro-benchmark). Every
run trains ``--iterations`` iterations (equal simulations AND equal iterations), in
deterministic mode by default (:func:`fair_training`: paced per ingested simulation,
``sampler.lag`` = m), with the paper's m = 10 clients; ``--timing`` runs the default mode,
whose iterations may exceed the budget when the data outlasts it.
Runs go sequentially by default (``--parallel 2`` at most); a run directory with a summary.json
is reused, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from breed.config import load_config
from breed.learning.buffer import Batch
from breed.learning.trainer import Trainer, load_model
from breed.learning.validation import load_validation
from breed.sampling.breed import BreedSampler
from breed.server.checkpoint import load as load_checkpoint
from breed.study.tables import CI_LEVEL, RATIO_LABEL, RATIO_MEANING, compare_paired

METHODS = ("uniform", "breed")  # uniform is the paper's Random
LABEL = {"uniform": "Random", "breed": "Breed"}
BASE: dict[str, Any] = {
    "seed": 0,
    "study": {"simulations": 800},
    "solver": {"grid": 64, "steps": 100},
    "model": {"hidden": 16, "layers": 1, "batch_size": 128},
    "training": {
        "validation_interval": 100,
        "checkpoint_interval": 1000,
        "threads": 1,
        "progress": False,
        "per_sample_log": False,
    },
    "buffer": {"kind": "reservoir", "capacity": 6000, "watermark": 300},
    "sampler": {
        "name": "uniform",
        "breed": {
            "sigma": 0.0125,
            "period": 200,
            "window": 200,
            "r_start": 0.5,
            "r_end": 0.9,
            "r_ramp": 3,
        },
    },
    "launcher": {"backend": "local", "max_jobs": 10, "persistent": True},
}


def fair_training(iterations: int, simulations: int, timing: bool) -> dict[str, Any]:
    """``training`` keys that give every run the same iteration budget: deterministic mode
    with n = iterations // S per ingested simulation (the rest after the stream), or with
    ``timing`` the budget alone (a timing-dependent run)."""
    training: dict[str, Any] = {**BASE["training"], "iterations": iterations}
    if not timing:
        training.update(
            deterministic=True, iterations_per_simulation=max(1, iterations // simulations)
        )
    return training


ERRORS = [
    ("mean", "traj_mean"),
    ("p99", "traj_p99"),
    ("max", "traj_max"),
    ("mean, no t=0", "traj_mean_no_t0"),
    ("p99, no t=0", "traj_p99_no_t0"),
    ("max, no t=0", "traj_max_no_t0"),
]
RANGES = [
    ("t=0", "val_mse_t0"),
    ("t=1-10", "val_mse_t1_10"),
    ("t=11-50", "val_mse_t11_50"),
    ("t=51-100", "val_mse_t51_100"),
]


# -- running --------------------------------------------------------------------------------
def run_all(
    jobs: list[tuple[Path, list[str]]], base: Path, parallel: int, timeout: float
) -> dict[Path, float]:
    """`breed run` for every (run dir, --set list) not done yet, ``parallel`` at a time."""
    walls: dict[Path, float] = {}
    todo = [(d, s) for d, s in jobs if not (d / "summary.json").exists()]
    running: list[tuple[Path, subprocess.Popen, float]] = []
    while todo or running:
        while todo and len(running) < parallel:
            run_dir, sets = todo.pop(0)
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "breed", "run", str(base), "--output", str(run_dir)]
            for item in sets:
                cmd += ["--set", item]
            log = open(run_dir.parent / f"{run_dir.name}.log", "w")  # noqa: SIM115
            running.append(
                (run_dir, subprocess.Popen(cmd, stdout=log, stderr=log), time.monotonic())
            )
        time.sleep(0.2)
        for item in list(running):
            run_dir, proc, t0 = item
            if proc.poll() is None and time.monotonic() - t0 < timeout:
                continue
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            running.remove(item)
            walls[run_dir] = time.monotonic() - t0
            if proc.returncode != 0:
                raise SystemExit(
                    f"breed run failed ({proc.returncode}) for {run_dir}; see "
                    f"{run_dir.parent / (run_dir.name + '.log')}"
                )
            print(f"  {run_dir} done in {walls[run_dir]:.0f} s", file=sys.stderr, flush=True)
    return walls


# -- reading a run --------------------------------------------------------------------------
def trajectory_errors(model_path: Path, val: Any) -> np.ndarray:
    """Per-(trajectory, step) MSE in normalised units ((u_hat - u) / h, h = (hi - lo)/2), the
    quantity of the runs' validation metrics, from the final model."""
    model = load_model(model_path)
    lo, hi = val.solver["bounds"]
    h = (hi - lo) / 2.0
    n, t1 = val.fields.shape[:2]
    steps = np.arange(t1)
    err = np.empty((n, t1))
    for i in range(n):
        pred = model.predict(np.repeat(val.params[i : i + 1], t1, axis=0), steps)
        diff = (pred - val.fields[i].astype(np.float64)) / h
        err[i] = np.square(diff).reshape(t1, -1).mean(axis=1)
    return err


def find_history(obj: Any) -> list[dict[str, Any]] | None:
    """The Breed sampler's resampling history inside a checkpoint, wherever it is nested."""
    if isinstance(obj, dict):
        if obj.get("name") == "breed" and isinstance(obj.get("history"), list):
            return obj["history"]
        for value in obj.values():
            found = find_history(value)
            if found is not None:
                return found
    return None


def read_run(run_dir: Path, val: Any) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final_validation"]
    err = trajectory_errors(run_dir / "model.pt", val)
    traj, traj1 = err.mean(axis=1), err[:, 1:].mean(axis=1)
    out: dict[str, Any] = {
        "iterations": summary["iterations"],
        "train_s": summary["train_s"],
        "wall_s": summary["wall_time"],
        "traj_mean": float(traj.mean()),
        "traj_p99": float(np.quantile(traj, 0.99)),
        "traj_max": float(traj.max()),
        "traj_mean_no_t0": float(traj1.mean()),
        "traj_p99_no_t0": float(np.quantile(traj1, 0.99)),
        "traj_max_no_t0": float(traj1.max()),
        "check": abs(float(err.mean()) - final["val_mse"]) / final["val_mse"],
    }
    out.update({key: final[key] for _, key in RANGES})
    with open(run_dir / "samples.csv") as fh:
        rows = list(csv.DictReader(fh))
    lam = np.array([[float(r[f"T{k}"]) for k in range(5)] for r in rows])
    dev = lam.std(axis=1)  # per input vector deviation (paper Figure 4), population std
    src = np.array([r["source"] for r in rows])
    out["dev"] = float(dev.mean())
    for name in ("uniform", "proposal"):
        out[f"dev_{name}"] = float(dev[src == name].mean()) if (src == name).any() else math.nan
        out[f"n_{name}"] = int((src == name).sum())
    out["generations"] = max(int(r["generation"]) for r in rows)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m["batch_loss"] for m in metrics if m["kind"] == "train"][-10:]
    out["train_loss"] = float(np.mean(train)) if train else math.nan
    ckpt = run_dir / "checkpoints" / "checkpoint.pt"
    hist = find_history(load_checkpoint(ckpt)) if ckpt.exists() else None
    out["resample_s"] = [h["seconds"] for h in hist] if hist else []
    out["resamplings"] = len(hist) if hist is not None else 0
    return out


# -- micro-benchmark of the costs -----------------------------------------------------------
def measure_costs(cfg_path: Path, layers: list[int], repeat: int = 30) -> dict[str, float]:
    """Median seconds of one resampling (S = 800, N = 200, K = 600, T = 100) and of one training
    iteration (B = 128, 64^2 outputs, Adam, one thread) per number of layers."""
    torch.set_num_threads(1)
    cfg = load_config(cfg_path)
    s, steps, bc = cfg["study"]["simulations"], cfg["solver"]["steps"], cfg["sampler"]["breed"]
    rng = np.random.default_rng(0)
    out: dict[str, float] = {}
    sampler = BreedSampler(s, (100.0, 500.0), 0, 5, steps=steps, **bc)
    done = max(1, s // 4)
    for j in range(done):
        sampler.next()
        sampler.on_simulation_done(j, steps + 1)
    ids, ts = np.divmod(rng.permutation(done * (steps + 1)), steps + 1)
    b = cfg["model"]["batch_size"]
    times = []
    for it, a in enumerate(range(0, len(ids), b), start=1):
        t0 = time.perf_counter()
        sampler.on_losses(
            it, ids[a : a + b], ts[a : a + b], rng.gamma(2.0, 0.01, len(ids[a : a + b]))
        )
        times.append(time.perf_counter() - t0)
    out["on_losses"] = statistics.median(times)
    times = []
    for k in range(repeat):
        t0 = time.perf_counter()
        sampler.resample(10_000 + k)
        times.append(time.perf_counter() - t0)
    out["resample"] = statistics.median(times)
    out["K"] = s - done
    m2 = cfg["solver"]["grid"] ** 2
    batch = Batch(
        inputs=rng.uniform(-1, 1, (b, 6)).astype(np.float32),
        targets=rng.uniform(-1, 1, (b, m2)).astype(np.float32),
        sim_ids=np.zeros(b, dtype=np.int64),
        steps=np.zeros(b, dtype=np.int64),
    )
    for n_layers in layers:
        trainer = Trainer({**cfg, "model": {**cfg["model"], "layers": n_layers}}, device="cpu")
        for _ in range(5):
            trainer.step(batch)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            trainer.step(batch)
            times.append(time.perf_counter() - t0)
        out[f"iteration_L{n_layers}"] = statistics.median(times)
    return out


# -- tables ---------------------------------------------------------------------------------
def fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def mean_sd(xs: list[float]) -> str:
    """Mean ± sample sd over seeds, NaN (e.g. no proposal draw in a run) left out."""
    a = np.array(xs, dtype=np.float64)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return "nan"
    return fmt(float(a.mean())) + (f" ± {fmt(float(a.std(ddof=1)))}" if len(a) > 1 else "")


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def paired(rand: list[float], breed: list[float]) -> list[str]:
    """Random/Breed cells (breed.study.tables owns the convention and the statistics)."""
    c = compare_paired(rand, breed)
    return [
        fmt(c.gmean),
        f"{fmt(c.ci_low)}–{fmt(c.ci_high)}",
        f"{fmt(c.min)}–{fmt(c.max)}",
        f"{c.breed_wins}/{c.pairs}",
        fmt(c.wilcoxon_p),
    ]


PAIRED_HEAD = [
    f"{RATIO_LABEL} geo-mean",
    f"{CI_LEVEL:.0%} CI (bootstrap)",
    "min–max",
    "Breed wins",
    "Wilcoxon p",
]


def model_report(name: str, res: dict[str, list[dict[str, Any]]]) -> str:
    r, b = res["uniform"], res["breed"]
    out = [
        f"### {name}: {len(r)} paired seeds\n",
        "Final validation error (per-trajectory MSE, normalised units; mean ± sd over seeds):\n",
    ]
    rows = [
        [
            label,
            mean_sd([x[k] for x in r]),
            mean_sd([x[k] for x in b]),
            *paired([x[k] for x in r], [x[k] for x in b]),
        ]
        for label, k in ERRORS
    ]
    out.append(
        table(
            [
                "error",
                "Random",
                "Breed",
                *PAIRED_HEAD,
            ],
            rows,
        )
    )
    out.append("\nError by time range (MSE over the range, mean ± sd over seeds):\n")
    rows = [
        [
            label,
            mean_sd([x[k] for x in r]),
            mean_sd([x[k] for x in b]),
            *paired([x[k] for x in r], [x[k] for x in b]),
        ]
        for label, k in RANGES
    ]
    out.append(
        table(
            [
                "steps",
                "Random",
                "Breed",
                *PAIRED_HEAD,
            ],
            rows,
        )
    )
    out.append(
        "\nInput deviation std(T0..T4) in K (mean over simulations, mean ± sd over seeds):\n"
    )
    rows = [
        [
            "Random, all",
            mean_sd([x["dev"] for x in r]),
            fmt(statistics.mean([x["n_uniform"] for x in r])),
        ],
        [
            "Breed, all",
            mean_sd([x["dev"] for x in b]),
            fmt(statistics.mean([x["n_uniform"] + x["n_proposal"] for x in b])),
        ],
        [
            "Breed, uniform draws",
            mean_sd([x["dev_uniform"] for x in b]),
            fmt(statistics.mean([x["n_uniform"] for x in b])),
        ],
        [
            "Breed, proposal draws",
            mean_sd([x["dev_proposal"] for x in b]),
            fmt(statistics.mean([x["n_proposal"] for x in b])),
        ],
    ]
    out.append(table(["simulations", "std(T0..T4)", "count per run"], rows))
    out.append(
        "\nPer seed (iterations: the budget, unless the data outlasted it; "
        "train loss = mean of the last 10 logged batch losses):\n"
    )
    rows = []
    for x, y in zip(r, b, strict=True):
        rows.append(
            [
                str(x["seed"]),
                str(x["iterations"]),
                str(y["iterations"]),
                fmt(x["iterations"] / y["iterations"]),
                fmt(x["traj_mean"]),
                fmt(y["traj_mean"]),
                fmt(x["train_loss"]),
                fmt(y["train_loss"]),
                str(y["resamplings"]),
                str(y["generations"]),
                str(y["n_proposal"]),
            ]
        )
    out.append(
        table(
            [
                "seed",
                "it Random",
                "it Breed",
                "it R/B",
                "val Random",
                "val Breed",
                "train Random",
                "train Breed",
                "resamplings",
                "last gen handed",
                "proposal sims",
            ],
            rows,
        )
    )
    return "\n".join(out)


def cost_report(costs: dict[str, float], res: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    rows = [
        [f"one resampling (micro, K = {costs['K']:.0f})", f"{costs['resample'] * 1e3:.3g}"],
        ["on_losses per batch (micro)", f"{costs['on_losses'] * 1e3:.3g}"],
    ]
    for key in sorted(k for k in costs if k.startswith("iteration_L")):
        rows.append([f"one training iteration, L = {key[11:]} (micro)", f"{costs[key] * 1e3:.3g}"])
    for name, per in res.items():
        rs = [s for x in per["breed"] for s in x["resample_s"]]
        it = [x["train_s"] / x["iterations"] for m in METHODS for x in per[m]]
        if rs:
            rows.append(
                [
                    f"{name}: one resampling (in the runs, median of {len(rs)})",
                    f"{statistics.median(rs) * 1e3:.3g}",
                ]
            )
        rows.append(
            [
                f"{name}: one training iteration (in the runs, median)",
                f"{statistics.median(it) * 1e3:.3g}",
            ]
        )
    return "### Cost\n\n" + table(["operation", "ms"], rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown file for the tables")
    ap.add_argument("--workdir", type=Path, default=Path("results/breed_vs_random"))
    ap.add_argument("--seeds", type=int, default=8, help="paired seeds 0..n-1 (8)")
    ap.add_argument("--simulations", type=int, default=800, help="budget S (800)")
    ap.add_argument("--models", default="16x1,16x3", help="HxL list (16x1,16x3)")
    ap.add_argument("--parallel", type=int, choices=(1, 2), default=1)
    ap.add_argument("--max-jobs", type=int, default=10, help="client jobs per run, m (10)")
    ap.add_argument("--iterations", type=int, default=1600, help="budget of every run (1600)")
    ap.add_argument("--timing", action="store_true", help="the default, non-deterministic mode")
    ap.add_argument("--validation", type=Path, help="validation set (default: made once)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    args = ap.parse_args(argv)
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    val_path = args.validation or work / "validation.npz"
    if not val_path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "breed",
                "make-validation",
                "--output",
                str(val_path),
                "--size",
                "200",
            ],
            check=True,
        )
    base = {
        **BASE,
        "study": {"simulations": args.simulations},
        "launcher": {**BASE["launcher"], "max_jobs": args.max_jobs},
        "training": fair_training(args.iterations, args.simulations, args.timing),
        "sampler": {**BASE["sampler"], "lag": args.max_jobs},
        "validation": {"file": str(val_path.resolve())},
    }
    base_path = work / "base.yaml"
    base_path.write_text(yaml.safe_dump(base, sort_keys=False))
    models = [tuple(int(v) for v in m.split("x")) for m in args.models.split(",")]
    jobs, index = [], []
    for hidden, layers in models:
        for seed in range(args.seeds):
            for method in METHODS:  # pairs back to back: machine load hits both alike
                run_dir = work / f"H{hidden}_L{layers}" / method / f"seed{seed}"
                jobs.append(
                    (
                        run_dir,
                        [
                            f"seed={seed}",
                            f"sampler.name={method}",
                            f"model.hidden={hidden}",
                            f"model.layers={layers}",
                        ],
                    )
                )
                index.append(((hidden, layers), method, seed, run_dir))
    t0 = time.monotonic()
    run_all(jobs, base_path, args.parallel, args.timeout)
    print(f"runs: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    val = load_validation(val_path)
    res: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for (hidden, layers), method, seed, run_dir in index:
        per = res.setdefault(f"H={hidden}, L={layers}", {m: [] for m in METHODS})
        per[method].append({"seed": seed, **read_run(run_dir, val)})
    costs = measure_costs(base_path, sorted({layers for _, layers in models}))
    checks = [x["check"] for per in res.values() for m in METHODS for x in per[m]]
    parts = [
        f"## Breed vs Random: S = {args.simulations}, {args.seeds} paired seeds, "
        f"validation {val.size} Halton trajectories ({val_path})\n",
        f"Config: {base_path} (sigma 0.0125 = 5 K, P 200, N 200, r (0.5, 0.9, 3), M 64, "
        f"T 100, B 128, reservoir 6000/300, {args.max_jobs} clients, {args.iterations} iterations per run, "
        f"{'timing-dependent' if args.timing else 'deterministic'} mode). {RATIO_MEANING}. "
        f"Recomputed val MSE vs the run's own: max rel. diff {max(checks):.1e}.\n",
    ]
    parts += [model_report(name, per) + "\n" for name, per in res.items()]
    parts.append(cost_report(costs, res))
    text = "\n".join(parts) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
