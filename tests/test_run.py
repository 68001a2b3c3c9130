"""`breed run` end to end with the local backend: real server, real client processes, real
ZeroMQ. Tiny budget so it stays in the fast tier."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = {
    "seed": 3,
    "study": {"simulations": 6},
    "solver": {"grid": 16, "steps": 10},
    "model": {"hidden": 8, "layers": 1, "batch_size": 16},
    "training": {"validation_interval": 20, "log_interval": 5, "progress": False},
    "buffer": {"capacity": 40, "watermark": 20},
    "launcher": {"max_jobs": 2, "ping_interval": 0.2, "poll_interval": 0.2},
    "validation": {"size": 4},
}


def breed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "breed", *args], capture_output=True, text=True, timeout=timeout
    )


def write_config(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for key, value in changes.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_samples(run: Path) -> list[dict[str, str]]:
    with open(run / "samples.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("persistent", "ingest"), [(True, "thread"), (False, "thread"), (True, "process")]
)
def test_tiny_run_completes_with_outputs(tmp_path: Path, persistent: bool, ingest: str) -> None:
    cfg = write_config(
        tmp_path, launcher={**TINY["launcher"], "persistent": persistent, "ingest": ingest}
    )
    run = tmp_path / "run"
    proc = breed("run", str(cfg), "--output", str(run))
    assert proc.returncode == 0, proc.stderr + (run / "logs" / "server.log").read_text()
    rows = read_samples(run)
    assert len(rows) == 6 and {r["status"] for r in rows} == {"done"}
    assert {"sim_id", "T0", "T1", "T2", "T3", "T4", "source", "status"} <= set(rows[0])
    assert all(100 <= float(r[f"T{k}"]) <= 500 for r in rows for k in range(5))
    jobs = {r["job_id"] for r in rows}
    assert all(j.startswith("local-") for j in jobs)
    if not persistent:  # one process per simulation
        assert len(jobs) == 6
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m for m in metrics if m["kind"] == "validation"]
    assert val and all(m["val_mse"] > 0 for m in val)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sims_done"] == 6 and summary["buffer"]["received"] == 6 * 11
    assert summary["messages"]["samples"] == 6 * 11  # each step stored once, either mode
    assert summary["final_validation"]["iteration"] == summary["iterations"]
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert resolved["model"]["lr"] == 1e-3  # defaults filled in
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["versions"]["torch"]
    assert prov["command"][:3] == ["breed", "run", str(cfg)]  # the sub-command recorded
    assert os.stat(run / "token").st_mode & 0o777 == 0o600
    assert (run / "model.pt").exists() and (run / "checkpoints" / "checkpoint.pt").exists()


@pytest.mark.timeout(240)
def test_same_seed_same_parameters(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    params = []
    for name in ("a", "b"):
        proc = breed("run", str(cfg), "--output", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        params.append(
            sorted(tuple(r[f"T{k}"] for k in range(5)) for r in read_samples(tmp_path / name))
        )
    assert params[0] == params[1]


@pytest.mark.timeout(60)
def test_invalid_config_exit_2_before_anything_starts(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, model={"hidden": -4})
    proc = breed("run", str(cfg), "--output", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.hidden" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(180)
def test_tensorboard_scalars_mirror_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = write_config(tmp_path, training={**TINY["training"], "tensorboard": True})
    run = tmp_path / "run"
    proc = breed("run", str(cfg), "--output", str(run))
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/samples_per_s", "validation/val_mse"} <= tags
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r["kind"] == "validation"]
    scalars = events.Scalars("validation/val_mse")
    assert [s.step for s in scalars] == [r["iteration"] for r in val]
    assert [s.value for s in scalars] == pytest.approx([r["val_mse"] for r in val], rel=1e-6)


@pytest.mark.timeout(180)
def test_an_iteration_budget_is_spent_after_the_stream_whatever_the_timing(tmp_path: Path) -> None:
    """training.iterations: the data (6 simulations) is all in and seen long before 400
    iterations; training goes on with batches from the reservoir until exactly 400, so two
    runs compare at equal iterations however fast their clients were."""
    cfg = write_config(
        tmp_path, training={**TINY["training"], "iterations": 400, "validation_interval": 100}
    )
    run = tmp_path / "run"
    proc = breed("run", str(cfg), "--output", str(run))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 400 and summary["iteration_budget"] == 400
    assert not summary["budget_exceeded"] and summary["sims_done"] == 6
    assert summary["buffer"]["received"] == 6 * 11  # every step once (T = 10)
    assert summary["buffer"]["unseen"] == 0
    validations = [
        json.loads(x)["iteration"]
        for x in (run / "metrics.jsonl").read_text().splitlines()
        if '"validation"' in x
    ]
    assert validations[-1] == 400
    bad = write_config(tmp_path, training={"iterations": 10}, buffer={"kind": "fifo"})
    proc = breed("run", str(bad), "--output", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "training.iterations" in proc.stderr
