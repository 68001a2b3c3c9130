"""``breed show`` and ``breed plot`` on run directories made by real ``breed run``s (local
backend, real server and clients): a finished Breed and a finished Random run of a tiny config
(made tiny with several ``--set`` pairs), and a run whose server is killed under
``launcher.on_server_death: fail`` (failed), then continued with ``breed run --resume``
(resumed). What ``breed show`` prints is checked against summary.json, samples.csv and
metrics.jsonl; ``breed plot`` must write every figure as non-trivial PNG and PDF files."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from breed import rundir
from breed.study.show import MAX_GENERATION_ROWS

pytestmark = pytest.mark.slow

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


def breed(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "breed", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A Breed and a Random run, both finished; the Breed one set by several --set pairs."""
    root = tmp_path_factory.mktemp("show")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    runs = {"breed": root / "breed", "random": root / "random"}
    made = breed(
        "run",
        cfg,
        "--output",
        runs["breed"],
        "--set",
        "sampler.name=breed",
        "sampler.breed.period=2",
        "--set",
        "study.simulations=10",
    )
    assert made.returncode == 0, made.stderr
    made = breed("run", cfg, "--output", runs["random"])
    assert made.returncode == 0, made.stderr
    return runs


@pytest.mark.timeout(600)
def test_show_and_plot_finished_runs(finished: dict[str, Path]) -> None:
    run = finished["breed"]
    resolved = yaml.safe_load((run / rundir.CONFIG).read_text())
    assert resolved["sampler"]["name"] == "breed" and resolved["sampler"]["breed"]["period"] == 2
    assert resolved["study"]["simulations"] == 10  # every --set pair applied
    prov = json.loads((run / rundir.PROVENANCE).read_text())
    assert prov["command"][:2] == ["breed", "run"] and "study.simulations=10" in prov["command"]

    shown = breed("show", run)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    summary = json.loads((run / rundir.SUMMARY).read_text())
    val = summary["final_validation"]
    assert out.splitlines()[0] == f"{run}  [finished]"
    assert f"training    {summary['iterations']} iterations in {summary['wall_time']:.1f} s" in out
    assert f"mean (MSE) {val['val_mse']:.3g}, p99 {val['traj_err_p99']:.3g}" in out
    rows = read_csv(run / rundir.SAMPLES)
    done = sum(r["status"] == "done" for r in rows)
    assert f"simulations {summary['sims_done']} done of 10; " in out and done == 10
    proposal = sum(r["source"] == "proposal" for r in rows)
    assert f"{proposal} of {len(rows)} simulations from the proposal" in out
    # The generation table: every generation of samples.csv or of a resample record, the
    # first and last MAX_GENERATION_ROWS // 2 when there are more (how many resamplings a
    # free-running Breed run makes depends on timing).
    metrics = [json.loads(x) for x in (run / rundir.METRICS).read_text().splitlines()]
    resamples = [m for m in metrics if m.get("kind") == "resample"]
    counts = Counter(int(r["generation"]) for r in rows)
    gens = sorted(set(counts) | {int(m["generation"]) for m in resamples})
    half = MAX_GENERATION_ROWS // 2
    listed = gens if len(gens) <= MAX_GENERATION_ROWS else gens[:half] + gens[-half:]
    table_rows = {int(x.split()[0]): x for x in out.splitlines() if re.match(r"\s+\d+\s", x)}
    assert sorted(table_rows) == listed, out
    if len(gens) > MAX_GENERATION_ROWS:
        assert f"... {len(gens) - 2 * half} more" in out
    for gen in listed:
        mine = sum(r["source"] == "proposal" for r in rows if int(r["generation"]) == gen)
        assert table_rows[gen].endswith(f"{counts[gen]} ({mine})"), table_rows[gen]
    for rec in [m for m in resamples if int(m["generation"]) in table_rows]:
        line = table_rows[int(rec["generation"])]
        assert line.split()[1:4] == [str(rec["iteration"]), str(rec["K"]), f"{rec['r']:.2f}"]
    messages = ", ".join(f"{k} {v}" for k, v in sorted(summary["messages"].items()))
    assert f"messages    {messages}" in out and "rejected    none" in out

    both = breed("show", finished["random"], run)
    assert both.returncode == 0, both.stderr
    table = both.stdout.splitlines()
    assert [line.split()[0] for line in table[2:]] == ["random", "breed"]
    assert table[2].split()[1:4] == ["finished", "uniform", "6/6"]

    figs = run.parent / "figures-both"
    drawn = breed("plot", finished["random"], run, "--out", figs)
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout == f"{figs}: curves, deviation, correlations, lambda_pairs (PNG and PDF)\n"
    for name in ("curves", "deviation", "correlations", "lambda_pairs"):
        assert (figs / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (figs / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
        assert (figs / f"{name}.png").stat().st_size > 10_000


@pytest.mark.timeout(600)
def test_show_a_failed_then_resumed_run(make_run) -> None:
    """The server is killed after a checkpoint with on_server_death: fail (the run fails),
    then ``breed run --resume`` restarts it from that checkpoint and finishes."""
    from faultkit import PACED

    run = make_run(
        {
            **PACED,
            "launcher": {**PACED["launcher"], "on_server_death": "fail"},
            "training": {"validation_interval": 20},  # a validation row before the kill
        }
    )
    proc = run.start()
    interval = run.cfg["training"]["checkpoint_interval"]
    checkpoint = run.dir / rundir.CHECKPOINTS / rundir.CHECKPOINT
    run.wait_until("a checkpoint", lambda p: p["iteration"] > interval and checkpoint.exists())
    os.kill(run.server_info()["pid"], signal.SIGKILL)
    assert run.finish(proc) == 1, run.stderr()

    failed = breed("show", run.dir)
    assert failed.returncode == 0, failed.stderr
    out = failed.stdout
    assert out.splitlines()[0] == f"{run.dir}  [failed / incomplete]"
    # the launcher's own reason, from launcher.log (the killed server left no line)
    assert "why         launcher: the server process exited" in out
    assert "holds       checkpoints/checkpoint.pt" in out
    assert "missing: summary.json, samples.csv, per_sample_loss.csv" not in out  # it has some
    assert "missing: summary.json, samples.csv" in out
    assert f"next        breed run --resume {run.dir}" in out
    metrics = [json.loads(x) for x in (run.dir / rundir.METRICS).read_text().splitlines() if x]
    assert f"metrics.jsonl up to iteration {max(m['iteration'] for m in metrics)}" in out
    curves = breed("plot", run.dir)  # a failed run still has its curves
    assert curves.returncode == 0, curves.stderr
    assert (run.dir / "figures" / "curves.png").stat().st_size > 10_000
    assert "no samples.csv (unfinished): curves only" in curves.stderr

    again = run.start(resume=True)
    assert run.finish(again) == 0, run.stderr()
    resumed = breed("show", run.dir)
    assert resumed.returncode == 0, resumed.stderr
    out = resumed.stdout
    summary = json.loads((run.dir / rundir.SUMMARY).read_text())
    assert out.splitlines()[0] == f"{run.dir}  [finished]"
    assert (
        "resumed     1 launcher resume(s) (restarting the server from its checkpoint); "
        "the server started 1 time(s) from a checkpoint"
    ) in out
    assert f"simulations {summary['sims_done']} done of {run.cfg['study']['simulations']}" in out
    assert f"training    {summary['iterations']} iterations" in out
    figures = breed("plot", run.dir, "--out", run.dir / "figs")
    assert figures.returncode == 0, figures.stderr
    assert (run.dir / "figs" / "lambda_pairs.pdf").stat().st_size > 10_000
