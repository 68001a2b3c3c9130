"""``breed show`` and ``breed plot`` on SYNTHETIC run directories (tests/synthetic_rundir.py,
plus the resolved config a real run holds): the numbers shown are the files' numbers, a failed
and a resumed run say so, bad paths are one line and exit 2, and every figure is drawn.
Real run directories made by ``breed run``: tests/test_show_e2e.py (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import yaml
from synthetic_rundir import write_synthetic_run

from breed import rundir
from breed import study as S
from breed.study import figures as F
from breed.study import plot, runview, show

ROOT = Path(__file__).resolve().parents[1]


def make_run(folder: Path, method: str, seed: int = 0) -> Path:
    """A synthetic run of the quick study (Random or Breed) with its resolved config."""
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    name = {"random": "uniform", "breed": "breed"}[method]
    spec = next(
        s
        for s in S.expand_study(cfg, "quick")
        if s.params["method"] == method and s.seed == seed and s.config["sampler"]["name"] == name
    )
    run = folder / spec.run_id
    write_synthetic_run(run, spec, simulations=30)
    (run / rundir.CONFIG).write_text(yaml.safe_dump(spec.config))
    (run / rundir.LOGS).mkdir(exist_ok=True)
    return run


def shown(capsys, *args: str | Path) -> str:
    assert show.main([str(a) for a in args]) == 0
    return capsys.readouterr().out


@pytest.mark.timeout(30)
def test_show_a_finished_run_gives_the_files_numbers(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "breed")
    summary = json.loads((run / rundir.SUMMARY).read_text())
    summary["messages"] = {"assigned": 30, "samples": 330}
    summary["rejected"] = {"rejected_token": 3, "bad_shape": 0}
    (run / rundir.SUMMARY).write_text(json.dumps(summary))
    samples = pd.read_csv(run / rundir.SAMPLES)
    samples.loc[[2, 5], "attempts"] = [2, 3]
    samples.to_csv(run / rundir.SAMPLES, index=False)
    out = shown(capsys, run)
    val = summary["final_validation"]
    assert out.splitlines()[0] == f"{run}  [finished]"
    assert "problem     heat2d (λ: T0, T1, T2, T3, T4)" in out
    assert "breed (σ 0.025, P 300, N 200, r 0.5 -> 0.7 over 3 generations)" in out
    assert f"{summary['iterations']} iterations in {summary['wall_time']:.1f} s" in out
    assert (
        f"at iteration {val['iteration']}: mean (MSE) {val['val_mse']:.3g}, "
        f"p99 {val['traj_err_p99']:.3g}, max {val['traj_err_max']:.3g}"
    ) in out
    assert "29 done of 100; 2 retried (3 extra attempts); 1 given up (new λ drawn" in out
    # generations from samples.csv: 15 uniform (generation 0), 15 proposal (generation 1)
    assert "1 resampling; 15 of 30 simulations from the proposal (50 %)" in out
    assert "      0          -     -     -                -     15 (0)" in out
    assert "      1          -     -  0.50                -     15 (15)" in out  # r: schedule
    assert "messages    assigned 30, samples 330" in out
    assert "rejected    rejected_token 3\n" in out  # zero counts left out
    assert "status" not in out and "resumed" not in out


@pytest.mark.timeout(30)
def test_show_takes_resamplings_from_metrics_when_logged(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "breed")
    record = {"kind": "resample", "iteration": 40, "generation": 1, "K": 12, "r": 0.55}
    record["proposal_share"] = 0.75
    with open(run / rundir.METRICS, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    out = shown(capsys, run)
    assert "      1         40    12  0.55             75 %     15 (15)" in out


@pytest.mark.timeout(30)
def test_a_long_breed_history_shows_its_first_and_last_generations(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "breed")
    with open(run / rundir.METRICS, "a") as fh:
        for g in range(1, 12):  # generations 0..11: 12 rows, more than MAX_GENERATION_ROWS
            record = {"kind": "resample", "iteration": 10 * g, "generation": g, "K": 30 - g}
            fh.write(json.dumps({**record, "r": 0.5}) + "\n")
    out = shown(capsys, run)
    rows = [x.split()[0] for x in out.splitlines() if x[:7].strip().isdigit()]
    half = show.MAX_GENERATION_ROWS // 2
    assert rows == [str(g) for g in [*range(half), *range(12 - half, 12)]]
    assert f"    ... {12 - 2 * half} more" in out
    assert "11 resamplings;" in out
    assert "     11        110    19  0.50                -      0 (0)" in out


@pytest.mark.timeout(30)
def test_show_a_failed_run_says_why_and_what_it_holds(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "random")
    for name in (rundir.SUMMARY, rundir.SAMPLES):
        (run / name).unlink()
    (run / rundir.CHECKPOINTS).mkdir()
    (run / rundir.CHECKPOINTS / rundir.CHECKPOINT).write_bytes(b"x")
    (run / rundir.JOBS).write_text("name,job_id,state\nclient-1,local-1,done\nc-2,local-2,failed\n")
    (run / rundir.LOGS / rundir.SERVER_LOG).write_text(
        "2026-01-01 INFO breed.server iteration 5\nbreed server: no space left on device\n"
    )
    metrics = runview.read_metrics(run / rundir.METRICS, runview.RunView(run, "?"))
    last = max(m["iteration"] for m in metrics)
    out = shown(capsys, run)
    assert out.splitlines()[0] == f"{run}  [failed / incomplete]"
    assert "why         server: no space left on device" in out
    assert f"holds       metrics.jsonl up to iteration {last}" in out
    assert "holds       checkpoints/checkpoint.pt" in out
    assert "holds       jobs.csv: 2 jobs (1 done, 1 failed)" in out
    assert "missing: summary.json, samples.csv (written when a run ends)" in out
    assert f"next        breed run --resume {run}" in out
    assert f"{last} iterations in" in out and "(so far)" in out


@pytest.mark.timeout(30)
def test_show_a_resumed_run(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "random")
    (run / rundir.LOGS / rundir.LAUNCHER_LOG).write_text(
        "2026-01-01 10:00:00,000 breed.run INFO resume: re-attached to the running server\n"
    )
    (run / rundir.LOGS / rundir.SERVER_LOG).write_text(
        "2026-01-01 INFO resumed from checkpoints/checkpoint.pt at iteration 25 (...)\n"
    )
    out = shown(capsys, run)
    assert (
        "resumed     1 launcher resume(s) (re-attached to the running server); the server "
        "started 1 time(s) from a checkpoint"
    ) in out


@pytest.mark.timeout(30)
def test_show_several_runs_side_by_side(tmp_path: Path, capsys) -> None:
    runs = [make_run(tmp_path, "random"), make_run(tmp_path, "breed")]
    (runs[0] / rundir.SUMMARY).unlink()
    out = shown(capsys, *runs)
    lines = out.splitlines()
    assert lines[0] == f"runs in {tmp_path}"
    assert lines[1].split()[:3] == ["run", "state", "sampler"]
    rows = {line.split()[0]: line for line in lines[2:4]}
    summary = json.loads((runs[1] / rundir.SUMMARY).read_text())
    breed = rows[runs[1].name].split()
    assert breed[1:4] == ["finished", "breed", f"{summary['sims_done']}/100"]
    assert f"{summary['final_validation']['val_mse']:.3g}" in breed
    assert rows[runs[0].name].split()[1:3] == ["failed", "/"]
    assert lines[-1].startswith(f"{runs[0].name}: failed / incomplete: no error line")
    # a study's folder stands for its runs
    assert sorted(shown(capsys, tmp_path).splitlines()[2:4]) == sorted(lines[2:4])
    each = shown(capsys, "--each", *runs)  # every run's screen, then the table
    assert each.startswith(f"{runs[0]}  [failed / incomplete]")
    assert f"\n{runs[1]}  [finished]\n" in each and each.endswith(out)


@pytest.mark.timeout(30)
def test_show_refuses_what_is_not_a_run_directory(tmp_path: Path, capsys) -> None:
    empty, afile, binary = tmp_path / "empty", tmp_path / "file.txt", tmp_path / "bin"
    empty.mkdir()
    afile.write_text("x")
    binary.mkdir()
    (binary / rundir.CONFIG).write_bytes(b"\x00\xff\xfe garbage \x00")
    cases = [
        (tmp_path / "missing", "no such file or directory"),
        (afile, "not a directory"),
        (empty, "not a run directory (no config.resolved.yaml)"),
        (binary, "not a readable config"),
    ]
    for path, needle in cases:
        assert show.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("breed show: ") and needle in err, err


@pytest.mark.timeout(60)
def test_cli_show_is_a_subcommand_with_one_line_errors(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "breed", "show", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"breed show: {tmp_path / 'nope'}: no such file or directory\n"


# --------------------------------------------------------------------------- plot
@pytest.mark.timeout(120)
def test_plot_draws_every_figure_for_random_and_breed(tmp_path: Path, capsys) -> None:
    runs = [make_run(tmp_path / "study", "random"), make_run(tmp_path / "study", "breed")]
    out = tmp_path / "figs"
    assert plot.main([*map(str, runs), "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert said.out == f"{out}: curves, deviation, correlations, lambda_pairs (PNG and PDF)\n"
    for name in plot.PLOTS:
        for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
            data = (out / f"{name}.{ext}").read_bytes()
            assert data.startswith(magic) and len(data) > 10_000, (name, ext, len(data))
    # several runs need --out; a bad path is refused before anything is drawn
    assert plot.main([*map(str, runs)]) == 2
    assert "--out DIR" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "nope")]) == 2


@pytest.mark.timeout(60)
def test_plot_a_failed_random_run_draws_its_curves_and_says_what_it_skipped(
    tmp_path: Path, capsys
) -> None:
    run = make_run(tmp_path, "random")
    (run / rundir.SUMMARY).unlink()
    (run / rundir.SAMPLES).unlink()
    assert plot.main([str(run)]) == 0  # default: RUN_DIR/figures
    said = capsys.readouterr()
    assert said.out == f"{run / 'figures'}: curves (PNG and PDF)\n"
    assert "no samples.csv (unfinished): curves only" in said.err
    assert "deviation: skipped" in said.err and "lambda_pairs: skipped" in said.err
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["curves.pdf", "curves.png"]


@pytest.mark.timeout(60)
def test_lambda_pairs_draws_each_simulation_coloured_by_generation(tmp_path: Path) -> None:
    run = make_run(tmp_path, "breed")
    tables, _ = plot.tables_of([run])
    fig = F.fig_lambda_pairs(tables["runs"], tables["inputs"])
    done = tables["inputs"]
    panels = [
        ax
        for ax in fig.axes
        if ax.get_visible() and ax.collections and ax.get_label() != "<colorbar>"
    ]
    assert len(panels) == 10  # 5 parameters: every pair once
    first = panels[0]
    assert sum(len(c.get_offsets()) for c in first.collections) == len(done)
    colours = sorted(
        {float(v) for c in first.collections for v in c.get_array()}  # type: ignore[union-attr]
    )
    assert colours == sorted({float(g) for g in done["generation"]}) == [0.0, 1.0]
    assert first.get_xlabel() in ("", "T0") and panels[0].get_ylabel() == "T1"
    plt.close(fig)


@pytest.mark.timeout(60)
def test_plot_leaves_out_a_run_stopped_before_its_first_validation(tmp_path: Path, capsys) -> None:
    runs = [make_run(tmp_path, "random"), make_run(tmp_path, "breed")]
    metrics = runs[0] / rundir.METRICS
    train = [x for x in metrics.read_text().splitlines() if '"validation"' not in x]
    metrics.write_text("\n".join(train) + "\n")
    (runs[0] / rundir.SUMMARY).unlink()
    tables, notes = plot.tables_of(runs)
    assert set(tables["curves"]["run_id"]) == {runs[1].name}
    assert notes == [f"{runs[0].name}: no validation row in metrics.jsonl: no curves"]
    assert plot.main([str(runs[0])]) == 0  # its λ draws are still there
    said = capsys.readouterr()
    assert said.out == f"{runs[0] / 'figures'}: lambda_pairs (PNG and PDF)\n"
    assert "curves: skipped (validation and training curves (Fig. 3a): no run has a " in said.err
    (runs[0] / rundir.SAMPLES).unlink()
    assert plot.main([str(runs[0])]) == 1  # nothing left to draw: said, exit 1
    assert capsys.readouterr().err.rstrip().endswith("breed plot: no figure drawn")
