"""Tidy tables drawn from the run directories of a study: runs, curves, inputs, correlations,
per-configuration summaries and the paired Random/Breed ratios (> 1: Breed better), whose
convention this module owns (``RATIO``)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import wilcoxon

from breed.problems import problem_of
from breed.rundir import METRICS, PER_SAMPLE, SAMPLES, SUMMARY
from breed.study.grid import PARAMS, RunSpec

# The final validation metrics compared (breed.learning.trainer.validation_metrics): the MSE
# over trajectories x steps x nodes, and the 99th percentile and maximum of the per-trajectory
# MSE (the tail the mean hides; the per-trajectory mean is val_mse itself).
VALIDATION_METRICS = ["val_mse", "traj_err_p99", "traj_err_max"]
CORRELATION_COLUMNS = ["iteration", "sample_loss", "batch_loss", "Q", "uniform"]


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """``metrics.jsonl`` as one frame (train and validation rows, ``kind`` column)."""
    rows = [
        json.loads(line) for line in Path(run_dir, METRICS).read_text().splitlines() if line.strip()
    ]
    return pd.DataFrame(rows)


def final_metrics(run_dir: Path) -> dict[str, Any]:
    """Last validation row, iterations, wall time and simulations done of one run."""
    metrics = read_metrics(run_dir)
    val = metrics[metrics["kind"] == "validation"].sort_values("iteration")
    out: dict[str, Any] = {m: float("nan") for m in VALIDATION_METRICS}
    if len(val):
        last = val.iloc[-1]
        out.update({m: float(last[m]) for m in VALIDATION_METRICS if m in last})
    summary_path = Path(run_dir, SUMMARY)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    out["iterations"] = summary.get("iterations", int(metrics["iteration"].max()))
    out["wall_time"] = summary.get("wall_time", float("nan"))
    out["sims_done"] = summary.get("sims_done", float("nan"))
    return out


def parameter_columns(frame: pd.DataFrame) -> list[str]:
    """The parameter columns of a ``samples.csv`` (between ``sim_id`` and the record's)."""
    from breed.server.simtable import RECORD_COLUMNS

    cols = list(frame.columns)
    end = cols.index(RECORD_COLUMNS[0]) if RECORD_COLUMNS[0] in cols else len(cols)
    return cols[1:end]


def deviation(frame: pd.DataFrame, statistic: str = "std", problem: Any = None) -> pd.Series:
    """The problem's statistic of each λ (Fig. 4): for the heat preset std(T0..T4), how
    different the five temperatures are; ``unit_std`` takes λ in the unit box first (for
    parameters of different units), ``mean`` and ``norm`` are the others offered."""
    lam = frame[parameter_columns(frame)].to_numpy(dtype=float)
    if statistic == "unit_std":
        if problem is None:
            raise ValueError("deviation: unit_std needs the problem (its bounds)")
        z = problem.to_sampling(lam)
        lam = (z - problem.lower) / (problem.upper - problem.lower)
        statistic = "std"
    values = {
        "std": lambda x: x.std(axis=1),
        "mean": lambda x: x.mean(axis=1),
        "norm": lambda x: np.linalg.norm(x, axis=1),
    }[statistic](lam)
    return pd.Series(values, index=frame.index)


def statistic_label(statistic: str, problem: Any) -> str:
    """Axis label of Fig. 4 for the problem's statistic (heat: "std(T0..T4) (K)")."""
    names = problem.names
    span = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
    label = {
        "std": f"std({span})",
        "unit_std": f"std({span} in the unit box)",
        "mean": f"mean({span})",
        "norm": f"|({span})|",
    }[statistic]
    return f"{label} (K)" if problem.name == "heat2d" and statistic != "unit_std" else label


def runs_table(specs: list[RunSpec], root: Path) -> pd.DataFrame:
    """One row per run: parameters and final validation metrics."""
    rows = [{**s.params, "reference": s.reference, **final_metrics(root / s.run_id)} for s in specs]
    return pd.DataFrame(rows)


def curves_table(specs: list[RunSpec], root: Path) -> pd.DataFrame:
    """Tidy learning curves: ``run_id, kind, iteration, loss`` (batch loss or val_mse)."""
    frames = []
    for s in specs:
        m = read_metrics(root / s.run_id)
        train = (
            m.loc[m["kind"] == "train", ["iteration", "batch_loss"]]
            .rename(columns={"batch_loss": "loss"})
            .assign(kind="train")
        )
        val = (
            m.loc[m["kind"] == "validation", ["iteration", "val_mse"]]
            .rename(columns={"val_mse": "loss"})
            .assign(kind="validation")
        )
        frames.append(pd.concat([train, val]).assign(run_id=s.run_id))
    return pd.concat(frames, ignore_index=True)[["run_id", "kind", "iteration", "loss"]]


def inputs_table(specs: list[RunSpec], root: Path) -> pd.DataFrame:
    """Parameters of the simulations run to completion, with their deviation (Fig. 4)."""
    frames = []
    for s in specs:
        sm = pd.read_csv(root / s.run_id / SAMPLES)
        if "status" in sm and (sm["status"] == "done").any():
            sm = sm[sm["status"] == "done"]
        problem = problem_of(s.config)
        frames.append(
            sm[["sim_id", *parameter_columns(sm), "source", "generation"]].assign(
                run_id=s.run_id,
                deviation=deviation(sm, problem.statistic, problem),
                statistic=statistic_label(problem.statistic, problem),
            )
        )
    return pd.concat(frames, ignore_index=True)


def correlations_table(specs: list[RunSpec], root: Path) -> pd.DataFrame:
    """Pearson correlations of the per-sample log (Fig. 6), long form, Breed runs only."""
    rows = []
    for s in specs:
        path = root / s.run_id / PER_SAMPLE
        if s.params["method"] != "breed" or not path.exists():
            continue
        frame = pd.read_csv(path, usecols=CORRELATION_COLUMNS).astype(float)
        corr = frame.corr()
        for a, b in itertools.combinations(CORRELATION_COLUMNS, 2):
            rows.append({"run_id": s.run_id, "a": a, "b": b, "r": corr.loc[a, b], "n": len(frame)})
    return pd.DataFrame(rows, columns=["run_id", "a", "b", "r", "n"])


# The tables of a study the workflow writes (results/<study>/tables/<name>.csv), by name.
TABLES: dict[str, Callable[[list[RunSpec], Path], pd.DataFrame]] = {
    "runs": runs_table,
    "curves": curves_table,
    "inputs": inputs_table,
    "correlations": correlations_table,
}


# --------------------------------------------------------------------------- summaries
# Seeds per configuration below which quartiles are not reported (the quartiles of 2 or 3
# values are the values themselves, dressed up as a distribution): mean and min-max only.
QUARTILES_MIN_SEEDS = 5


def summary_by_config(runs: pd.DataFrame) -> pd.DataFrame:
    """Final metrics of each configuration over its seeds: ``seeds`` (n), mean, min and max,
    and median and quartiles only where n >= ``QUARTILES_MIN_SEEDS`` (blank otherwise)."""
    keys = ["study", "config_id", "method", *[c for c in PARAMS.values() if c in runs]]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    out = grouped.size().rename("seeds").to_frame()
    few = out["seeds"] < QUARTILES_MIN_SEEDS
    for m in VALIDATION_METRICS:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_min"] = grouped[m].min()
        out[f"{m}_max"] = grouped[m].max()
        for name, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
            out[f"{m}_{name}"] = grouped[m].quantile(q).mask(few)
    return out.reset_index()


def geometric_mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.mean(np.log(values)))) if len(values) else float("nan")


# ------------------------------------------------------------- the Random/Breed convention
# The one owner of the comparison's direction, for the tables, the figures, the report and the
# benchmarks: a ratio is Random's error over Breed's error of the same model and seed, so a
# ratio > 1 means Breed is better (lower error). Column names carry the direction.
RATIO = "random_over_breed"
RATIO_LABEL = "Random/Breed"
RATIO_MEANING = "Random/Breed of the error, paired by seed: > 1 means Breed is better"
WILCOXON_MIN_PAIRS = 6  # fewer pairs: the exact two-sided p cannot go below 0.0625
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 4000
RATIO_COLUMNS = [
    "pairs",
    "random_mean",
    "breed_mean",
    f"{RATIO}_gmean",
    f"{RATIO}_ci_low",
    f"{RATIO}_ci_high",
    f"{RATIO}_min",
    f"{RATIO}_max",
    "breed_wins",
    "wilcoxon_p",
]


def random_over_breed(random: ArrayLike, breed: ArrayLike) -> np.ndarray:
    """Pairwise Random/Breed of the errors (> 1: Breed better); both in the same pair order."""
    return np.asarray(random, dtype=float) / np.asarray(breed, dtype=float)


@dataclass(frozen=True)
class PairedComparison:
    """Random vs Breed over paired seeds: the geometric mean of Random/Breed with a paired
    bootstrap CI (resampling pairs), its range, Breed's wins and a Wilcoxon signed-rank p."""

    pairs: int
    random_mean: float
    breed_mean: float
    gmean: float
    ci_low: float
    ci_high: float
    min: float
    max: float
    breed_wins: int
    wilcoxon_p: float  # NaN under WILCOXON_MIN_PAIRS pairs

    def row(self) -> dict[str, float]:
        """The comparison as ``RATIO_COLUMNS``."""
        values = [getattr(self, f.name) for f in fields(self)]
        return dict(zip(RATIO_COLUMNS, values, strict=True))


def compare_paired(
    random: ArrayLike,
    breed: ArrayLike,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """Random/Breed of paired errors (pairs with a missing or non-positive error dropped).

    The CI is the percentile interval of the geometric mean over ``resamples`` bootstrap
    draws of whole pairs (seeded: the tables are byte-stable); with 2-5 pairs it is little more
    than the range, with one pair it is undefined. The Wilcoxon signed-rank test is on the
    paired differences of the errors, two-sided, from ``WILCOXON_MIN_PAIRS`` pairs on.
    """
    r, b = np.asarray(random, dtype=float), np.asarray(breed, dtype=float)
    keep = np.isfinite(r) & np.isfinite(b) & (r > 0) & (b > 0)
    r, b = r[keep], b[keep]
    n = len(r)
    if n == 0:
        nan = math.nan
        return PairedComparison(0, nan, nan, nan, nan, nan, nan, nan, 0, nan)
    logs = np.log(random_over_breed(r, b))
    lo = hi = math.nan
    if n > 1:
        idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
        boot = np.exp(logs[idx].mean(axis=1))
        tail = 100 * (1 - CI_LEVEL) / 2
        lo, hi = (float(x) for x in np.percentile(boot, [tail, 100 - tail]))
    p = math.nan
    if n >= WILCOXON_MIN_PAIRS and np.any(r != b):
        p = float(wilcoxon(r, b).pvalue)
    return PairedComparison(
        pairs=n,
        random_mean=float(r.mean()),
        breed_mean=float(b.mean()),
        gmean=float(np.exp(logs.mean())),
        ci_low=lo,
        ci_high=hi,
        min=float(np.exp(logs.min())),
        max=float(np.exp(logs.max())),
        breed_wins=int((logs > 0).sum()),
        wilcoxon_p=p,
    )


def paired_ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """Random/Breed of each final metric, every Breed configuration against the Random run of
    the same model and seed (long form: one row per configuration and metric; > 1: Breed
    better)."""
    random = runs[runs["method"] == "random"].set_index(["pair_id", "seed"])
    rows = []
    for config_id, group in runs[runs["method"] == "breed"].groupby("config_id", sort=False):
        keys = list(zip(group["pair_id"], group["seed"], strict=True))
        paired = [k in random.index for k in keys]
        mine = group[paired]
        theirs = random.loc[[k for k, p in zip(keys, paired, strict=True) if p]]
        head = {
            "study": group["study"].iloc[0],
            "config_id": config_id,
            "pair_id": group["pair_id"].iloc[0],
            "reference": bool(group["reference"].iloc[0]) if "reference" in group else False,
        }
        for m in VALIDATION_METRICS:
            result = compare_paired(theirs[m].to_numpy(), mine[m].to_numpy())
            rows.append({**head, "metric": m, **result.row()})
    columns = ["study", "config_id", "pair_id", "reference", "metric", *RATIO_COLUMNS]
    return pd.DataFrame(rows, columns=columns)


__all__ = [
    "VALIDATION_METRICS",
    "CORRELATION_COLUMNS",
    "read_metrics",
    "final_metrics",
    "parameter_columns",
    "deviation",
    "statistic_label",
    "runs_table",
    "curves_table",
    "inputs_table",
    "correlations_table",
    "TABLES",
    "QUARTILES_MIN_SEEDS",
    "summary_by_config",
    "geometric_mean",
    "RATIO",
    "RATIO_LABEL",
    "RATIO_MEANING",
    "RATIO_COLUMNS",
    "WILCOXON_MIN_PAIRS",
    "CI_LEVEL",
    "random_over_breed",
    "PairedComparison",
    "compare_paired",
    "paired_ratios",
]
