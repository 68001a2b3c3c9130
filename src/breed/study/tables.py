"""Tidy tables drawn from the run directories of a study: runs, curves, inputs, correlations,
per-configuration summaries and the paired Random/Breed ratios."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from breed.problems import problem_of
from breed.rundir import METRICS, PER_SAMPLE, SAMPLES, SUMMARY
from breed.study.grid import PARAMS, RunSpec

VALIDATION_METRICS = ["val_mse", "traj_err_mean", "traj_err_p99", "traj_err_max"]
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
def summary_by_config(runs: pd.DataFrame) -> pd.DataFrame:
    """Median and spread over seeds of the final metrics of each configuration."""
    keys = ["study", "config_id", "method", *[c for c in PARAMS.values() if c in runs]]
    grouped = runs.groupby(keys, dropna=False, sort=False)
    out = grouped.size().rename("seeds").to_frame()
    for m in VALIDATION_METRICS:
        out[f"{m}_median"] = grouped[m].median()
        out[f"{m}_q25"] = grouped[m].quantile(0.25)
        out[f"{m}_q75"] = grouped[m].quantile(0.75)
        out[f"{m}_min"] = grouped[m].min()
        out[f"{m}_max"] = grouped[m].max()
    return out.reset_index()


def geometric_mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.mean(np.log(values)))) if len(values) else float("nan")


def paired_ratios(runs: pd.DataFrame) -> pd.DataFrame:
    """Breed / Random ratios of final metrics, paired by model and seed (< 1: Breed better)."""
    random = runs[runs["method"] == "random"].set_index(["pair_id", "seed"])
    rows = []
    for config_id, group in runs[runs["method"] == "breed"].groupby("config_id", sort=False):
        row: dict[str, Any] = {
            "study": group["study"].iloc[0],
            "config_id": config_id,
            "pair_id": group["pair_id"].iloc[0],
        }
        for m in VALIDATION_METRICS:
            ratios = [
                r[m] / random.loc[(r["pair_id"], r["seed"]), m]
                for _, r in group.iterrows()
                if (r["pair_id"], r["seed"]) in random.index
            ]
            row["pairs"] = len(ratios)
            row[f"{m}_ratio_gmean"] = geometric_mean(np.array(ratios))
            row[f"{m}_ratio_min"] = min(ratios) if ratios else math.nan
            row[f"{m}_ratio_max"] = max(ratios) if ratios else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


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
    "summary_by_config",
    "geometric_mean",
    "paired_ratios",
]
