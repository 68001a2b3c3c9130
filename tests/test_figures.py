"""breed.study.figures on SYNTHETIC run directories (tests/synthetic_rundir.py): the figures draw
what the tables say (annotations, means, correlations), in PNG and PDF."""

from __future__ import annotations

import copy
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_rundir import write_synthetic_study

from breed import study as S
from breed.study import figures as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["seeds"] = [0, 1]
    # a 2 x 2 models grid keeps the synthetic study small
    cfg["studies"]["models"]["grid"].update({"model.hidden": [16, 32], "model.layers": [1, 2]})
    return cfg


def tables(config: dict, name: str, root: Path) -> dict[str, pd.DataFrame]:
    specs = S.expand_study(config, name)
    write_synthetic_study(root, specs)
    out = {
        "runs": S.runs_table(specs, root),
        "curves": S.curves_table(specs, root),
        "inputs": S.inputs_table(specs, root),
        "correlations": S.correlations_table(specs, root),
    }
    # the workflow passes tables through CSV: test what the figure rules really read
    for key, frame in out.items():
        frame.to_csv(root / f"{key}.csv", index=False)
        out[key] = pd.read_csv(root / f"{key}.csv")
    return out


def texts(fig: plt.Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_moving_average_spans_40_iterations() -> None:
    curve = pd.DataFrame({"iteration": np.arange(10, 110, 10), "loss": np.arange(10.0)})
    ma = F.moving_average(curve)  # rows every 10 iterations -> window of 4 rows
    assert ma["loss"].iloc[-1] == pytest.approx(np.mean([6, 7, 8, 9]))
    assert ma["loss"].iloc[0] == 0.0


def test_seed_band_median_and_range_within_each_run() -> None:
    curves = pd.DataFrame(
        {
            "run_id": ["a"] * 3 + ["b"] * 3 + ["c"] * 2,
            "iteration": [10, 20, 30, 10, 20, 30, 10, 20],
            "loss": [1.0, 1.0, 1.0, 4.0, 4.0, 4.0, 2.0, 2.0],
        }
    )
    band = F.seed_band(curves).set_index("iteration")
    assert band.loc[10, "median"] == pytest.approx(2.0)
    assert (band.loc[10, "lo"], band.loc[10, "hi"]) == pytest.approx((1.0, 4.0))
    assert band.loc[30, "median"] == pytest.approx(2.0)  # c stopped at 20: median of a, b


def test_fig3a_grid_annotates_median_final_validation(config: dict, tmp_path: Path) -> None:
    t = tables(config, "models", tmp_path)
    fig = F.fig_model_grid(t["runs"], t["curves"])
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == [
        "H=16, L=1",
        "H=16, L=2",
        "H=32, L=1",
        "H=32, L=2",
    ]
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    cell = t["runs"].query("H == 32 and L == 2 and method == 'breed'")
    assert f"{cell['val_mse'].median():.2e}" in texts(fig)
    styles = {line.get_linestyle() for line in fig.axes[0].lines}
    assert styles == {"-", ":", "None"}  # validation solid, training MA dotted, final dots
    dots = [line for line in fig.axes[3].lines if line.get_linestyle() == "None"]
    finals = {(float(x), float(y)) for d in dots for x, y in zip(*d.get_data(), strict=True)}
    cell = t["runs"].query("H == 32 and L == 2")
    assert finals == set(zip(cell["iterations"].astype(float), cell["val_mse"], strict=True))
    F.save(fig, tmp_path / "fig3a.png", tmp_path / "fig3a.pdf")
    assert (tmp_path / "fig3a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig3a.pdf").read_bytes()[:5] == b"%PDF-"


def test_fig3b_one_panel_per_varied_parameter(config: dict, tmp_path: Path) -> None:
    cfg = copy.deepcopy(config)
    cfg["studies"]["sampling"]["vary"] = {
        "sampler.breed.sigma": [0.0025, 0.0625],
        "sampler.breed.period": [10],
    }
    t = tables(cfg, "sampling", tmp_path)
    fig = F.fig_hyperparameters(t["runs"], t["curves"], ["sigma", "P"])
    assert [ax.get_title() for ax in fig.axes] == ["varying σ", "varying P"]
    # σ is a fraction of each range (0.0125 = the paper's 5 K of 400 K); the centre sits in
    # every panel. Final losses are in the legend, not written at the curves' ends.
    runs = t["runs"].query("method == 'breed'")
    centre = runs[runs["centre"].astype(bool)]

    def entry(label: str, group: pd.DataFrame) -> str:
        return f"{label}: {group['val_mse'].median():.2e}"

    legend = [x.get_text() for x in fig.axes[0].get_legend().get_texts()]
    assert legend[1] == entry("σ=0.0125 (centre)", centre)
    assert legend[0] == entry("σ=0.0025", runs.query("sigma == 0.0025"))
    assert [x.split(":")[0] for x in legend] == [
        "σ=0.0025",
        "σ=0.0125 (centre)",
        "σ=0.0625",
        "Random",
    ]
    legend = [x.get_text() for x in fig.axes[1].get_legend().get_texts()]
    assert [x.split(":")[0] for x in legend] == ["P=10", "P=200 (centre)", "Random"]
    assert texts(fig) == []  # no end-of-curve labels to collide

    def colors(ax: plt.Axes) -> dict[str, tuple]:
        handles = ax.get_legend().legend_handles
        return {
            t.get_text().split(":")[0]: matplotlib.colors.to_rgba(h.get_color())
            for t, h in zip(ax.get_legend().get_texts(), handles, strict=True)
        }

    left, right = colors(fig.axes[0]), colors(fig.axes[1])
    # one colour per configuration across panels: the centre and Random look the same in both
    assert left["σ=0.0125 (centre)"] == right["P=200 (centre)"]
    assert left["Random"] == right["Random"]
    assert len(set(left.values())) == len(left)  # and differ within a panel
    with pytest.raises(F.FigureError):
        F.fig_hyperparameters(t["runs"].query("method == 'random'"), t["curves"], ["sigma"])


def test_fig4_marks_means_of_uniform_proposal_random_breed(config: dict, tmp_path: Path) -> None:
    t = tables(config, "quick", tmp_path)
    fig = F.fig_deviation(t["runs"], t["inputs"])
    a, b = fig.axes
    breed_ids = t["runs"].query("method == 'breed'")["run_id"]
    b_in = t["inputs"][t["inputs"]["run_id"].isin(breed_ids)]
    r_in = t["inputs"][~t["inputs"]["run_id"].isin(breed_ids)]
    means_a = sorted(line.get_xdata()[0] for line in a.lines)
    expected_a = sorted(
        [
            b_in.query("source != 'proposal'")["deviation"].mean(),
            b_in.query("source == 'proposal'")["deviation"].mean(),
        ]
    )
    assert means_a == pytest.approx(expected_a)
    means_b = sorted(line.get_xdata()[0] for line in b.lines)
    assert means_b == pytest.approx(sorted([r_in["deviation"].mean(), b_in["deviation"].mean()]))
    # synthetic proposal draws have a larger spread: the figure shows the shift
    assert (
        b_in.query("source == 'proposal'")["deviation"].mean()
        > b_in.query("source != 'proposal'")["deviation"].mean()
    )
    assert a.get_xlabel() == "deviation std(T0..T4) (K)"  # the heat problem's statistic


def test_fig4_names_the_statistic_of_the_problem() -> None:
    from breed.config import validate
    from breed.problems import problem_of

    burgers = problem_of(validate({"problem": "burgers1d"}))
    assert S.statistic_label(burgers.statistic, burgers) == "std(nu..b in the unit box)"
    heat = problem_of(validate({}))
    assert S.statistic_label(heat.statistic, heat) == "std(T0..T4) (K)"


def test_fig6_lower_triangle_of_median_correlations(config: dict, tmp_path: Path) -> None:
    t = tables(config, "quick", tmp_path)
    fig = F.fig_correlation(t["runs"], t["correlations"])
    values = texts(fig)
    assert len(values) == 2 * 10  # 5 variables: strictly lower triangle; median and range
    c = t["correlations"].query("a == 'sample_loss' and b == 'Q'")
    assert len(c) == len(config["studies"]["quick"]["seeds"]) == 3
    assert f"{c['r'].median():.2f}" in values
    assert f"[{c['r'].min():.2f}, {c['r'].max():.2f}]" in values  # the seeds' spread
    rows = t["correlations"].groupby("run_id")["n"].first()
    title = fig.axes[0].get_title()
    assert f"{len(rows)} seeds, {rows.sum()} rows, {rows.min()}–{rows.max()} per seed" in title


def test_figures_need_a_reference_breed_run(config: dict, tmp_path: Path) -> None:
    t = tables(config, "quick", tmp_path)
    with pytest.raises(F.FigureError, match="no reference Breed run"):
        F.fig_deviation(t["runs"].query("method == 'random'"), t["inputs"])


def test_the_registry_draws_each_figure_from_its_tables(config: dict, tmp_path: Path) -> None:
    """FIGURES is what the workflow's figure rules call: each entry draws from the tables it
    names (and Fig. 3b from the varied parameters too), as its function does when called."""
    t = tables(config, "quick", tmp_path)
    for name in ("fig3a", "fig4", "fig6"):
        given = {table: t[table] for table in F.figure_tables(name)}
        direct = F.FIGURES[name].draw(*given.values())
        assert texts(F.draw(name, given)) == texts(direct), name
    cfg = copy.deepcopy(config)
    cfg["studies"]["sampling"]["vary"] = {"sampler.breed.sigma": [0.0025]}
    t = tables(cfg, "sampling", tmp_path / "sampling")
    fig = F.draw("fig3b", {"runs": t["runs"], "curves": t["curves"]}, varied=["sigma"])
    assert [ax.get_title() for ax in fig.axes] == ["varying σ"]
    with pytest.raises(F.FigureError, match="unknown figure 'fig9' \\(known: fig3a, fig3b"):
        F.draw("fig9", t)
    plt.close("all")
