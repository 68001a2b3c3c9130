"""Deterministic mode end to end (issue 13): one Breed config run twice by `breed run` on the
local backend, once idle with 4 clients and once with every core kept busy and 2 clients, gives
the same λ (and source, generation, parent, σ, Q) in samples.csv and the same loss curves.

Real server, real clients, real ZeroMQ; the busy loops are real processes, stopped by the test.
Compared: samples.csv's parameter columns and source/generation/parent/sigma/Q as the bytes of
each field; metrics.jsonl's train rows (iteration, batch_loss, batch_loss_std, samples_received,
buffer_fill) and validation rows (iteration and every val_* / traj_* value). Not compared:
times, job ids, attempts, and the timing counters of metrics.jsonl.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

S = 24
CONFIG = {
    "seed": 5,
    "study": {"simulations": S},
    "solver": {"grid": 16, "steps": 20},
    "model": {"hidden": 8, "layers": 1, "batch_size": 32},
    "training": {
        "validation_interval": 20,
        "log_interval": 1,
        "progress": False,
        "deterministic": True,
        "iterations_per_simulation": 6,
        "iterations": 200,  # 144 paced, then 56 on the reservoir after the last simulation
    },
    "buffer": {"capacity": 120, "watermark": 42},
    "launcher": {"ping_interval": 0.2, "poll_interval": 0.2},
    "validation": {"size": 4},
    "sampler": {"name": "breed", "lag": 3, "breed": {"sigma": 0.05, "period": 10, "window": 8}},
}
SAMPLE_COLUMNS = [
    "sim_id",
    "T0",
    "T1",
    "T2",
    "T3",
    "T4",
    "source",
    "generation",
    "parent",
    "sigma",
    "Q",
]
TRAIN_KEYS = ("iteration", "batch_loss", "batch_loss_std", "samples_received", "buffer_fill")


@pytest.fixture
def busy_cpu() -> Iterator[list[subprocess.Popen]]:
    """One busy-loop process per core, for as long as the test wants them."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the config run with the machine to itself and 4 clients (both tests
    compare against it; module scope, so it runs before any busy loop starts)."""
    return breed_run(tmp_path_factory.mktemp("reference"), "idle", max_jobs=4)


def breed_run(tmp_path: Path, name: str, max_jobs: int) -> Path:
    cfg = {**CONFIG, "launcher": {**CONFIG["launcher"], "max_jobs": max_jobs}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / name
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "breed", "run", str(path), "--output", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        stop_leftover_server(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def stop_leftover_server(run: Path) -> None:
    """A failed or timed-out run may leave its server alive: stop it."""
    try:
        pid = int(json.loads((run / "server.json").read_text())["pid"])
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError, TypeError):
        pass


def samples(run: Path) -> list[list[str]]:
    with open(run / "samples.csv", newline="") as fh:
        return [[row[c] for c in SAMPLE_COLUMNS] for row in csv.DictReader(fh)]


def curves(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            out.append({k: row[k] for k in TRAIN_KEYS})
        elif row["kind"] == "validation":
            keep = [k for k in row if k == "iteration" or k.startswith(("val_", "traj_"))]
            out.append({"kind": "validation", **{k: row[k] for k in keep}})
    return out


@pytest.mark.timeout(700)
def test_same_config_same_results_busy_or_not_whatever_the_clients(
    idle: Path, tmp_path: Path, busy_cpu: list[subprocess.Popen]
) -> None:
    busy = breed_run(tmp_path, "busy", max_jobs=2)
    a, b = samples(busy), samples(idle)
    assert len(a) == S and all(row[0] == str(k) for k, row in enumerate(a))
    assert a == b
    assert sum(row[6] == "proposal" for row in a) >= 1, "Breed's proposal was never used"
    ca, cb = curves(busy), curves(idle)
    assert sum(row.get("kind") == "validation" for row in ca) >= 5
    assert len([r for r in ca if "batch_loss" in r]) == 200  # log_interval 1: every iteration
    assert ca == cb
    for run in (busy, idle):
        summary = json.loads((run / "summary.json").read_text())
        assert summary["iterations"] == 200 and summary["sims_done"] == S


@pytest.mark.faults
@pytest.mark.timeout(600)
def test_a_server_killed_mid_run_resumes_to_the_same_results(idle: Path, tmp_path: Path) -> None:
    """The checkpoint holds the staged simulations, the bound draws and the ingest order:
    the restarted server continues the same sequence (the launcher restarts it)."""
    whole = idle  # an uninterrupted run of the same config (4 clients there, 2 here)
    cfg = {**CONFIG, "launcher": {**CONFIG["launcher"], "max_jobs": 2}}
    cfg["training"] = {**CONFIG["training"], "checkpoint_interval": 20}
    path, out = tmp_path / "killed.yaml", tmp_path / "killed"
    path.write_text(yaml.safe_dump(cfg))
    launcher = subprocess.Popen(
        [sys.executable, "-m", "breed", "run", str(path), "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(train_rows(out)) < 70:  # past the checkpoints of iterations 20..60
            assert launcher.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.05)
        os.killpg(int(json.loads((out / "server.json").read_text())["pid"]), signal.SIGKILL)
        _, err = launcher.communicate(timeout=300)
        assert launcher.returncode == 0, err[-3000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait(timeout=10)
        stop_leftover_server(out)
    assert "resumed from" in (out / "logs" / "server.log").read_text()
    assert samples(out) == samples(whole)
    assert curves(out) == curves(whole)


def train_rows(run: Path) -> list[str]:
    try:
        return [x for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    except OSError:
        return []
