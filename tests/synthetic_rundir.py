"""SYNTHETIC TEST DATA: run directories in the contract's format (docs/ARCHITECTURE.md), made
without training anything, for testing the study tables and figures fast.

The numbers are invented (exponentially decaying losses with seeded noise; Breed draws proposal
points with a larger spread of T0..T4); only the file formats follow the run-directory
contract. Never use these files as results.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from breed.server.simtable import RECORD_COLUMNS
from breed.study import RunSpec

SAMPLE_COLUMNS = ["sim_id", "T0", "T1", "T2", "T3", "T4", *RECORD_COLUMNS]  # the table's own


def write_synthetic_run(
    run_dir: Path,
    spec: RunSpec,
    iterations: int = 200,
    simulations: int = 40,
    log_interval: int = 10,
    validation_interval: int = 50,
) -> None:
    """Fill ``run_dir`` with synthetic metrics.jsonl, samples.csv, per_sample_loss.csv and
    summary.json for ``spec`` (method, seed and model taken from it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = spec.seed
    breed = spec.params["method"] == "breed"
    rng = np.random.default_rng(1000 * seed + (7 if breed else 3) + spec.params["H"])
    scale = 1.0 / (1 + spec.params["H"] / 64) * (0.9 if breed else 1.0)
    iterations += 10 * seed  # runs of different seeds stop at different iterations
    rows = []
    for it in range(log_interval, iterations + 1, log_interval):
        rows.append(
            {
                "kind": "train",
                "iteration": it,
                "time": it * 0.01,
                "batch_loss": scale * np.exp(-it / 80) * rng.lognormal(0, 0.2),
                "batch_loss_std": 0.01,
                "samples_received": it * 5,
                "samples_per_s": 100.0,
                "buffer_fill": 0.5,
                "waited": 0,
            }
        )
    val_iters = list(range(validation_interval, iterations + 1, validation_interval))
    if val_iters[-1] != iterations:
        val_iters.append(iterations)
    for it in val_iters:
        v = scale * 1.2 * np.exp(-it / 90) * rng.lognormal(0, 0.05)
        rows.append(
            {
                "kind": "validation",
                "iteration": it,
                "time": it * 0.01,
                "val_mse": v,
                "traj_err_p99": 3 * np.sqrt(v),
                "traj_err_max": 5 * np.sqrt(v),
                "val_mse_no_t0": v,
                "val_mse_t0": v / 10,
                "val_mse_t1_10": v * 2,
                "val_mse_t11_50": v,
                "val_mse_t51_100": v / 2,
            }
        )
    rows.sort(key=lambda r: (r["iteration"], r["kind"] == "validation"))
    with open(run_dir / "metrics.jsonl", "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")

    centre = rng.uniform(100, 500, size=(simulations, 1))
    proposal = breed & (np.arange(simulations) >= simulations // 2)
    spread = np.where(proposal[:, None], 120.0, 60.0)
    temps = np.clip(centre + rng.normal(0, 1, (simulations, 5)) * spread, 100, 500)
    samples = pd.DataFrame(temps, columns=["T0", "T1", "T2", "T3", "T4"])
    samples.insert(0, "sim_id", np.arange(simulations))
    samples["source"] = np.where(proposal, "proposal", "uniform")
    samples["generation"] = np.where(proposal, 1, 0)
    samples["parent"] = np.where(proposal, 0, -1)
    samples["sigma"] = np.where(proposal, 10.0, np.nan)
    samples["Q"] = rng.uniform(0, 1, simulations) if breed else np.nan
    samples["status"] = "done"
    samples.loc[simulations - 1, "status"] = "lost"  # not run to completion: left out of Fig. 4
    samples["attempts"] = 1
    samples["job_id"] = [f"local-{i}" for i in range(simulations)]
    samples["assign_time"] = samples["start_time"] = samples["end_time"] = 0.0
    samples[SAMPLE_COLUMNS].to_csv(run_dir / "samples.csv", index=False)

    n = 4 * len(rows)
    it = rng.integers(1, iterations + 1, n)
    batch = scale * np.exp(-it / 80)
    sample_loss = batch * rng.lognormal(0, 0.5, n)
    per_sample = pd.DataFrame(
        {
            "iteration": it,
            "sim_id": rng.integers(0, simulations, n),
            "step": rng.integers(0, 11, n),
            "sample_loss": sample_loss,
            "batch_loss": batch,
            "delta": np.maximum(sample_loss - batch, 0) / batch,
            "Q": rng.uniform(0, 1, n) + 0.3 * np.log(sample_loss / batch),
            "uniform": rng.integers(0, 2, n) if breed else 1,
        }
    )
    per_sample.to_csv(run_dir / "per_sample_loss.csv", index=False)
    last = [r for r in rows if r["kind"] == "validation"][-1]
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "iterations": iterations,
                "wall_time": iterations * 0.01,
                "sims_done": simulations - 1,
                "final_validation": {k: v for k, v in last.items() if k != "kind"},
            }
        )
    )


def write_synthetic_study(root: Path, specs: list[RunSpec], **kwargs: int) -> None:
    """Synthetic run directories for every spec under ``root`` (results/<study>)."""
    for spec in specs:
        write_synthetic_run(root / spec.run_id, spec, **kwargs)
