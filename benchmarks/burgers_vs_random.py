"""Breed vs Random on 1D viscous Burgers (``problem: burgers1d``), paired seeds, equal budget.

    python benchmarks/burgers_vs_random.py --out results/burgers_vs_random.md

For every seed one `breed run` of ``config/examples/burgers.yaml`` with ``sampler.name:
uniform`` (the paper's Random) and one with ``breed``; the seed fixes the model initialisation
and the initial uniform design of both. Every run validates on ONE set of scrambled-Halton
trajectories made once by the Burgers client (`breed make-validation`). Reported: the final
validation error (per-trajectory MSE in normalised units: mean, p99, max), the paired ratios
Random/Breed (> 1: Breed better; geometric mean, min-max, wins, two-sided Wilcoxon signed-rank
p), the training iterations of each run (equal: ``training.iterations`` is a budget spent on
the reservoir after the last simulation; a run whose data outlasted it is flagged) and where
the simulations went (the share with ν < 0.05, the steep corner). A run directory with a
summary.json is reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from breed.study.tables import CI_LEVEL, RATIO_LABEL, RATIO_MEANING, compare_paired

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "examples" / "burgers.yaml"
METHODS = {"uniform": "Random", "breed": "Breed"}
METRICS = ("val_mse", "traj_err_p99", "traj_err_max")


def breed(*args: str, timeout: float) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "breed", *args], capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise SystemExit(f"breed {' '.join(args)} failed: {proc.stderr.strip()[-400:]}")


def run_one(
    work: Path, seed: int, method: str, opts: argparse.Namespace, val: Path
) -> dict[str, Any]:
    out = work / f"{method}-s{seed}"
    if not (out / "summary.json").exists():
        cfg = yaml.safe_load(CONFIG.read_text())
        cfg.update(seed=seed, output=str(out))
        cfg["study"]["simulations"] = opts.simulations
        cfg["sampler"]["name"] = method
        for item in opts.breed:  # Breed's settings (ignored by Random)
            key, _, value = item.partition("=")
            cfg["sampler"]["breed"][key] = yaml.safe_load(value)
        cfg["validation"] = {"file": str(val), "size": opts.validation}
        cfg["launcher"]["max_jobs"] = opts.max_jobs
        cfg["training"].update(progress=False, per_sample_log=False, iterations=opts.iterations)
        path = work / "configs" / f"{method}-s{seed}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg))
        breed("run", str(path), "--output", str(out), "--overwrite", timeout=opts.timeout)
    summary = json.loads((out / "summary.json").read_text())
    rows = (out / "samples.csv").read_text().splitlines()
    nu = [float(r.split(",")[1]) for r in rows[1:] if ",done," in r]
    return {
        **{m: summary["final_validation"][m] for m in METRICS},
        "iterations": summary["iterations"],
        "exceeded": summary["budget_exceeded"],
        "steep": sum(v < 0.05 for v in nu) / len(nu),
    }


def paired(rand: list[float], bred: list[float]) -> list[str]:
    """Random/Breed cells (breed.study.tables owns the convention and the statistics)."""
    c = compare_paired(rand, bred)
    return [
        f"{c.gmean:.3f}",
        f"{c.ci_low:.3f}–{c.ci_high:.3f}",
        f"{c.min:.3f}–{c.max:.3f}",
        f"{c.breed_wins}/{c.pairs}",
        f"{c.wilcoxon_p:.3g}",
    ]


def report(
    res: dict[str, list[dict[str, Any]]], opts: argparse.Namespace, load: str, wall: float
) -> str:
    def ms(xs: list[float]) -> str:
        return f"{statistics.fmean(xs):.3e} ± {statistics.stdev(xs):.1e}"

    lines = [
        f"# Breed vs Random on burgers1d ({opts.seeds} paired seeds, S = "
        f"{opts.simulations}, {opts.iterations} iterations, validation "
        f"{opts.validation} trajectories)",
        "",
        "Breed: " + (", ".join(opts.breed) or "config/examples/burgers.yaml's settings") + ".",
        "",
        f"Machine load (1, 5, 15 min) at the start: {load}; wall {wall:.0f} s.",
        "",
        f"{RATIO_MEANING}.",
        "",
        f"| metric | Random (mean ± sd) | Breed (mean ± sd) | {RATIO_LABEL} (geo. mean) "
        f"| {CI_LEVEL:.0%} CI (bootstrap) | min–max | Breed wins | Wilcoxon p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in METRICS:
        r, b = [x[m] for x in res["uniform"]], [x[m] for x in res["breed"]]
        lines.append(f"| {m} | {ms(r)} | {ms(b)} | " + " | ".join(paired(r, b)) + " |")
    lines += ["", "| | Random | Breed |", "| --- | --- | --- |"]
    for key, label in (
        ("iterations", "training iterations (mean, min–max)"),
        ("steep", "share of simulations with ν < 0.05"),
    ):
        cells = []
        for method in METHODS:
            xs = [x[key] for x in res[method]]
            cells.append(f"{statistics.fmean(xs):.4g} ({min(xs):.4g}–{max(xs):.4g})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    over = [f"{m}-s{k}" for m in METHODS for k, x in enumerate(res[m]) if x["exceeded"]]
    lines += [
        "",
        f"Runs whose data outlasted the budget of {opts.iterations} iterations: "
        f"{', '.join(over) or 'none'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="markdown file for the tables")
    ap.add_argument("--workdir", type=Path, default=Path("results/burgers_vs_random"))
    ap.add_argument("--seeds", type=int, default=8, help="paired seeds 0..n-1 (8)")
    ap.add_argument("--simulations", type=int, default=120, help="budget S (120)")
    ap.add_argument("--validation", type=int, default=100, help="validation trajectories")
    ap.add_argument("--iterations", type=int, default=2000, help="training iterations (2000)")
    ap.add_argument("--max-jobs", type=int, default=2, help="client jobs per run (2)")
    ap.add_argument(
        "--breed",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a sampler.breed setting, e.g. --breed r_end=0.5 (repeatable)",
    )
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    opts = ap.parse_args(argv)
    work = opts.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    t0 = time.monotonic()
    val = work / f"validation-{opts.validation}.npz"
    if not val.exists():
        cfg = yaml.safe_load(CONFIG.read_text())
        cfg["validation"] = {"size": opts.validation}
        path = work / "validation.yaml"
        path.write_text(yaml.safe_dump(cfg))
        breed("make-validation", "--config", str(path), "--output", str(val), timeout=opts.timeout)
    res: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in range(opts.seeds):  # pairs side by side: load drift hits both methods alike
        for method in METHODS:
            res[method].append(run_one(work, seed, method, opts, val))
    text = report(res, opts, load, time.monotonic() - t0)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
