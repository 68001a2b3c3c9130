"""The tiny study end to end through Snakemake (slow tier: one run of its DAG, shared by the
tests of this module), then its report: the Random/Breed table and the headline on the landing
page and in the captions, and what a browser shows of it (headless chromium)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_study_report import cells
from test_workflow import copy_workflow, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the workflow in which the tiny study has run (Random and Breed, seed 0)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny"))
    proc = snakemake(workdir, "--cores", "2", "--config", "study=tiny", timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def report(tiny: Path) -> Path:
    proc = snakemake(tiny, "--config", "study=tiny", "--report", "report-ratios.html")
    assert proc.returncode == 0, proc.stderr
    return tiny / "report-ratios.html"


def report_variable(text: str, script: str, name: str) -> object:
    """A JSON variable of the report's page, from its own script element
    (``<script id=SCRIPT> var NAME = ...;``): its results, its landing page."""
    match = re.search(rf'<script id="{script}">\s*var {name} = (.*?);\s*</script>', text, re.DOTALL)
    assert match, name
    return json.loads(match.group(1))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_tiny_dag_end_to_end_then_figures_alone(tiny: Path) -> None:
    workdir = tiny
    res = workdir / "results" / "tiny"
    for fig in ("fig3a", "fig4", "fig6"):
        assert (res / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
        assert (res / "figures" / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"
    runs = (res / "tables" / "runs.csv").read_text().splitlines()
    assert len(runs) == 3  # header + Random + Breed of seed 0
    ratios = (res / "tables" / "ratios.csv").read_text().splitlines()
    assert ratios[0].startswith("study,config_id,pair_id,reference,metric,pairs,")
    assert "random_over_breed_gmean,random_over_breed_ci_low" in ratios[0]
    assert ratios[1].startswith("tiny,breed-H16-L1-s0.0625-P5-N4-r0.5-0.9-3,H16-L1,True,val_mse,1,")
    inputs = (res / "tables" / "inputs.csv").read_text().splitlines()
    assert inputs[0] == "sim_id,T0,T1,T2,T3,T4,source,generation,run_id,deviation,statistic"
    assert len(inputs) == 1 + 2 * 30  # every simulation of both runs
    draws = pd.read_csv(res / "tables" / "inputs.csv")
    sources = draws.groupby(draws["run_id"].str.split("-").str[0])["source"].agg(set)
    # deterministic mode binds parameters after Breed's resamplings: it steers on every run
    assert sources["random"] == {"uniform"} and sources["breed"] == {"uniform", "proposal"}
    run_cfg = yaml.safe_load((res / "configs" / "random-H16-L1-seed0.yaml").read_text())
    assert run_cfg["validation"]["file"] == "results/tiny/validation.npz"
    assert (res / "random-H16-L1-seed0" / "config.resolved.yaml").exists()
    assert "breed run" in (res / "logs" / "breed_run" / "random-H16-L1-seed0.log").read_text()

    proc = snakemake(workdir, "--dry-run", "--config", "study=tiny")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout

    # redraw: only the figure and table rules run, no training
    (res / "figures" / "fig4.png").unlink()
    proc = snakemake(
        workdir,
        "--cores",
        "2",
        "--config",
        "study=tiny",
        "--forcerun",
        "fig3a",
        "summary",
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    ran = set(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out))
    assert ran == {"fig3a", "fig4", "summary", "all"}


@pytest.mark.timeout(600)
def test_report_shows_the_ratio_table_and_the_headline(tiny: Path, report: Path) -> None:
    text = report.read_text()
    assert "fig3a.png" in text and "Fig. 6: Pearson correlations" in text
    ratios = pd.read_csv(tiny / "results" / "tiny" / "tables" / "ratios.csv")
    val = ratios.set_index("metric").loc["val_mse"]
    # the landing page: the headline filled in from the table, then the table itself
    landing = str(report_variable(text, "workflow-desc", "workflow_desc"))
    assert "<h3>Study tiny</h3>" in landing
    headline = re.search(
        r"Random/Breed of the final validation MSE: ([0-9.e+-]+) for (\S+) ", landing
    )
    assert headline, landing
    assert float(headline.group(1)) == pytest.approx(val["random_over_breed_gmean"], rel=5e-3)
    assert headline.group(2) == val["config_id"]
    rows = cells(landing)
    assert "Random/Breed (geo. mean)" in rows[0] and "95% CI" in rows[0]
    assert [r[1] for r in rows[1:]] == [
        "validation MSE",
        "per-trajectory MSE, p99",
        "per-trajectory MSE, max",
    ]
    column = rows[0].index("Random/Breed (geo. mean)")
    assert float(rows[1][column]) == pytest.approx(val["random_over_breed_gmean"], rel=5e-3)
    # the captions of the two tables embed them too: no number only in a download
    results = report_variable(text, "results", "results")
    assert isinstance(results, dict)
    caption = results["results/tiny/tables/ratios.csv"]["caption"]
    assert "above 1 Breed is better" in caption and "Random/Breed (geo. mean)" in caption
    summary = cells(results["results/tiny/tables/summary.csv"]["caption"])
    assert summary[0][:3] == ["configuration", "seeds", "validation MSE: mean"]
    assert [r[1] for r in summary[1:]] == ["1", "1"]
    assert results["results/tiny/tables/ratios.csv"]["labels"] == {
        "table": "paired Random/Breed ratios"
    }


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip(
        "no headless browser: apt-get install -y chromium (Debian) to screenshot the report"
    )


def browse(report: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on the report, its scripts given 10 s of virtual time to render."""
    sandbox = ["--no-sandbox"] if os.geteuid() == 0 else []  # root: chromium refuses otherwise
    return subprocess.run(
        [
            chromium(),
            "--headless",
            *sandbox,
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,1100",
            "--virtual-time-budget=10000",
            *args,
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(600)
def test_a_browser_renders_the_ratio_table_on_the_landing_page(
    report: Path, tmp_path: Path
) -> None:
    """What a reader sees: the page's scripts draw the landing page with the table (the DOM
    after rendering), and a screenshot of it that is not blank."""
    dom = browse(report, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    app = dom.stdout[dom.stdout.index('<div id="app">') :]
    assert "Study tiny" in app and ">Random/Breed (geo. mean)</th>" in app
    shot = tmp_path / "report.png"
    proc = browse(report, f"--screenshot={shot}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1100, 1400)
    assert np.std(pixels[..., :3]) > 0.05  # text and a table, not an empty page
