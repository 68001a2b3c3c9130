"""The paper's figures (3a, 3b, 4, 6) drawn from the tidy tables of :mod:`breed.study`, and
the registry (``FIGURES``) the workflow makes its figure rules from.

Pure functions of stored results: redrawing never re-trains. Every curve is a median over seeds
with a min-max band (seed noise is 25-50 % of the final error on this problem).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # figures are files; never need a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"random": "tab:blue", "breed": "tab:orange"}
LABELS = {"random": "Random", "breed": "Breed"}
SYMBOLS = {
    "sigma": "σ",
    "P": "P",
    "N": "N",
    "r_s": "$r_s$",
    "r_e": "$r_e$",
    "r_c": "$r_c$",
    "H": "H",
    "L": "L",
}
CORR_LABELS = {
    "iteration": "NN iteration",
    "sample_loss": "per-sample loss",
    "batch_loss": "batch loss",
    "Q": "loss deviation Q",
    "uniform": "uniform",
}
MA_ITERATIONS = 40  # paper Fig. 3: training curve averaged over a window of 40 iterations


class FigureError(ValueError):
    """The tables lack what a figure needs (e.g. no Breed run in the study)."""


def save(fig: plt.Figure, png: str | Path, pdf: str | Path) -> None:
    """PNG for the report, PDF for papers; no timestamps so reruns are byte-stable."""
    fig.savefig(png, dpi=150, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None})
    plt.close(fig)


def moving_average(curve: pd.DataFrame, iterations: int = MA_ITERATIONS) -> pd.DataFrame:
    """Average ``loss`` over a window of ``iterations`` NN iterations (rows are logged every
    ``log_interval`` iterations, so the window in rows is ``iterations / log_interval``)."""
    curve = curve.sort_values("iteration")
    step = float(np.median(np.diff(curve["iteration"]))) if len(curve) > 1 else 1.0
    window = max(1, int(round(iterations / max(step, 1.0))))
    return curve.assign(loss=curve["loss"].rolling(window, min_periods=1).mean())


def seed_band(curves: pd.DataFrame) -> pd.DataFrame:
    """Median, min and max over runs (seeds) of ``loss`` against ``iteration``.

    Each run is interpolated (in log loss) onto the union of iterations, within its own range
    only, so runs that stop at different iterations do not zig-zag the median.
    """
    grid = np.unique(curves["iteration"].to_numpy(dtype=float))
    stack = []
    for _, run in curves.groupby("run_id"):
        run = run.sort_values("iteration")
        x, y = run["iteration"].to_numpy(float), np.log(run["loss"].to_numpy(float))
        yi = np.interp(grid, x, y)
        yi[(grid < x[0]) | (grid > x[-1])] = np.nan
        stack.append(yi)
    logs = np.vstack(stack)
    valid = np.isfinite(logs).any(axis=0)
    with np.errstate(all="ignore"):
        out = pd.DataFrame(
            {
                "iteration": grid,
                "median": np.exp(np.nanmedian(logs, axis=0)),
                "lo": np.exp(np.nanmin(logs, axis=0)),
                "hi": np.exp(np.nanmax(logs, axis=0)),
            }
        )
    return out[valid]


def _plot_config(
    ax: plt.Axes,
    curves: pd.DataFrame,
    runs: pd.DataFrame,
    color: Any,
    label: str,
    dy: float = 0.0,
    annotate: bool = True,
) -> None:
    """Validation (solid, band over seeds) and moving-average training (dotted) of one
    configuration; dots: each seed's last validation loss, their median written next to them
    (``annotate``) or in the legend entry (where many curves end close together)."""
    final = float(np.nanmedian(runs["val_mse"])) if len(runs) else float("nan")
    if not annotate:
        label = f"{label}: {final:.2e}"
    mine = curves[curves["run_id"].isin(runs["run_id"])]
    train = mine[mine["kind"] == "train"]
    if len(train):
        smooth = pd.concat(moving_average(g) for _, g in train.groupby("run_id"))
        band = seed_band(smooth)
        ax.plot(band["iteration"], band["median"], ":", color=color, lw=1.2)
    val = mine[mine["kind"] == "validation"]
    if len(val):
        band = seed_band(val)
        ax.plot(band["iteration"], band["median"], "-", color=color, lw=1.5, label=label)
        if runs["run_id"].nunique() > 1:
            ax.fill_between(band["iteration"], band["lo"], band["hi"], color=color, alpha=0.2, lw=0)
        # Seeds stop at different iterations: mark each seed's last validation loss, and
        # write the median of those at the median stopping point.
        ax.plot(runs["iterations"], runs["val_mse"], "o", ms=2.5, color=color)
        if not annotate:
            return
        where = float(np.nanmedian(runs["iterations"]))
        ax.annotate(
            f"{final:.2e}",
            (where, final),
            xytext=(4, dy),
            textcoords="offset points",
            fontsize=7,
            color=color,
            va="center",
        )


def _finish(fig: plt.Figure, axes: np.ndarray, title: str, label_room: bool = True) -> None:
    for ax in axes.flat:
        if label_room:  # room for the end-of-curve final-loss labels
            lo, hi = ax.get_xlim()
            ax.set_xlim(lo, hi + 0.18 * (hi - lo))
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()


def fig_model_grid(runs: pd.DataFrame, curves: pd.DataFrame) -> plt.Figure:
    """Fig. 3a: rows H, columns L; Random vs Breed training and validation curves."""
    runs = runs[runs["centre"].astype(bool)]
    hs, ls = sorted(runs["H"].unique()), sorted(runs["L"].unique())
    fig, axes = plt.subplots(
        len(hs),
        len(ls),
        figsize=(max(3.4 * len(ls), 5.5), max(2.6 * len(hs), 3.6)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for i, h in enumerate(hs):
        for j, layers in enumerate(ls):
            ax = axes[i, j]
            cell = runs[(runs["H"] == h) & (runs["L"] == layers)]
            for method, group in cell.groupby("method", sort=True):
                _plot_config(
                    ax,
                    curves,
                    group,
                    COLORS.get(method, "k"),
                    LABELS.get(method, method),
                    dy=4 if method == "random" else -4,
                )
            ax.set_title(f"H={h}, L={layers}", fontsize=9)
            if i == len(hs) - 1:
                ax.set_xlabel("NN iteration")
            if j == 0:
                ax.set_ylabel("loss (normalised MSE)")
    axes[0, 0].legend(
        fontsize=7, title="validation (solid)\ntraining MA-40 (dotted)", title_fontsize=7
    )
    _finish(fig, axes, "Models: Random vs Breed (median over seeds, band: min-max)")
    return fig


CENTRE_COLOR = "black"  # Fig. 3b: the centre configuration, the same in every panel


def value_colors(values: Sequence[float], centre: float) -> dict[float, Any]:
    """Fig. 3b's colour of each value of one varied parameter: the centre black (it is the same
    configuration in every panel), the others viridis by rank (without its pale yellow end)."""
    ordered = sorted(values)
    shades = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(len(ordered), 2)))
    return {v: CENTRE_COLOR if v == centre else shades[k] for k, v in enumerate(ordered)}


def fig_hyperparameters(runs: pd.DataFrame, curves: pd.DataFrame, varied: list[str]) -> plt.Figure:
    """Fig. 3b: one panel per varied Breed hyperparameter, the others at the centre values.
    Final losses are in the legend (end-of-curve labels of close curves would collide)."""
    breed = runs[runs["method"] == "breed"]
    centre = breed[breed["centre"].astype(bool)]
    if centre.empty or not varied:
        raise FigureError("Fig. 3b needs the centre Breed configuration and varied parameters")
    c = centre.iloc[0]
    random = runs[(runs["method"] == "random") & (runs["pair_id"] == c["pair_id"])]
    fig, axes = plt.subplots(
        1, len(varied), figsize=(max(3.6 * len(varied), 5.5), 5.4), sharey=True, squeeze=False
    )
    for ax, param in zip(axes[0], varied, strict=True):
        others = [p for p in varied if p != param]
        panel = (
            breed[np.logical_and.reduce([breed[p] == c[p] for p in others])] if others else breed
        )
        colors = value_colors(list(panel[param].unique()), c[param])
        for value, color in colors.items():
            name = f"{SYMBOLS.get(param, param)}={value:g}" + (
                " (centre)" if value == c[param] else ""
            )
            _plot_config(ax, curves, panel[panel[param] == value], color, name, annotate=False)
        if len(random):
            _plot_config(ax, curves, random, "0.5", "Random", annotate=False)
        ax.set_title(f"varying {SYMBOLS.get(param, param)}", fontsize=9)
        ax.set_xlabel("NN iteration")
        ax.legend(  # under the panel: never over the curves
            fontsize=6,
            title="final validation MSE (median over seeds)",
            title_fontsize=6,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.24),
        )
    axes[0, 0].set_ylabel("loss (normalised MSE)")
    _finish(
        fig,
        axes,
        "Breed hyperparameters, one at a time (validation solid, training MA-40 dotted)",
        label_room=False,
    )
    return fig


def reference_pair(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs of the study's reference Breed configuration and of its paired Random one."""
    ref = runs[runs["reference"].astype(bool)]
    breed = ref[ref["method"] == "breed"]
    if breed.empty:
        raise FigureError("no reference Breed run in this study (see `reference` in config)")
    breed = breed[breed["config_id"] == breed["config_id"].iloc[0]]
    random = runs[(runs["method"] == "random") & (runs["pair_id"] == breed["pair_id"].iloc[0])]
    return breed, random


def _histograms(ax: plt.Axes, groups: list[tuple[str, pd.Series, str]], xlabel: str) -> None:
    data = pd.concat([g for _, g, _ in groups])
    bins = np.histogram_bin_edges(data, bins=30).tolist() if len(data) else 10
    unit = " K" if xlabel.endswith("(K)") else ""
    for label, values, color in groups:
        if len(values) == 0:
            continue
        ax.hist(
            values,
            bins=bins,
            density=True,
            alpha=0.45,
            color=color,
            label=f"{label} (n={len(values)}, mean {values.mean():.3g}{unit})",
        )
        ax.axvline(values.mean(), color=color, ls="--", lw=1.5)
    ax.set_xlabel(f"deviation {xlabel}")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)


def fig_deviation(runs: pd.DataFrame, inputs: pd.DataFrame) -> plt.Figure:
    """Fig. 4: (a) uniform vs proposal draws of the reference Breed runs, (b) Random vs Breed;
    dashed lines mark the means. Pooled over seeds."""
    breed, random = reference_pair(runs)
    b = inputs[inputs["run_id"].isin(breed["run_id"])]
    r = inputs[inputs["run_id"].isin(random["run_id"])]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), squeeze=False)
    proposal = b["source"] == "proposal"
    # the problem's statistic (inputs table; tables of older studies: the heat one)
    xlabel = (
        str(inputs["statistic"].iloc[0])
        if "statistic" in inputs and len(inputs)
        else "std(T0..T4) (K)"
    )
    _histograms(
        axes[0, 0],
        [
            ("uniform", b.loc[~proposal, "deviation"], COLORS["random"]),
            ("proposal", b.loc[proposal, "deviation"], COLORS["breed"]),
        ],
        xlabel,
    )
    axes[0, 0].set_title(f"(a) one Breed configuration: {breed['config_id'].iloc[0]}", fontsize=8)
    _histograms(
        axes[0, 1],
        [("Random", r["deviation"], COLORS["random"]), ("Breed", b["deviation"], COLORS["breed"])],
        xlabel,
    )
    axes[0, 1].set_title("(b) Random vs Breed runs", fontsize=8)
    fig.tight_layout()
    return fig


def correlation_matrix(
    correlations: pd.DataFrame, run_ids: list[str], how: str = "median"
) -> pd.DataFrame:
    """``how`` (median, min, max) over the given runs of each pairwise correlation, as a
    square matrix."""
    sub = correlations[correlations["run_id"].isin(run_ids)]
    if sub.empty:
        raise FigureError("no per-sample loss correlations for the reference Breed runs")
    med = sub.groupby(["a", "b"])["r"].agg(how)
    names = list(CORR_LABELS)
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for (a, b), value in med.items():
        mat.loc[a, b] = mat.loc[b, a] = value
    return mat


def correlation_rows(correlations: pd.DataFrame, run_ids: list[str]) -> pd.Series:
    """Rows of ``per_sample_loss.csv`` each run's correlations were computed from."""
    sub = correlations[correlations["run_id"].isin(run_ids)]
    return sub.groupby("run_id")["n"].first().astype(int)


def fig_correlation(runs: pd.DataFrame, correlations: pd.DataFrame) -> plt.Figure:
    """Fig. 6: lower triangle of the correlation matrix of the per-sample training log: the
    median over seeds, under it the seeds' min-max; the title gives the rows it used."""
    breed, _ = reference_pair(runs)
    ids = list(breed["run_id"])
    mats = {how: correlation_matrix(correlations, ids, how) for how in ("median", "min", "max")}
    rows = correlation_rows(correlations, ids)
    n = len(mats["median"])
    # strictly lower triangle: rows 1..n-1 against columns 0..n-2 (diagonal and upper omitted)
    keep = np.tril(np.ones((n, n), bool), k=-1)
    low = {k: np.where(keep, m.to_numpy(), np.nan)[1:, :-1] for k, m in mats.items()}
    lower = low["median"]
    spread = len(rows) > 1
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(lower, cmap="RdBu_r", vmin=-1, vmax=1)
    for i in range(n - 1):
        for j in range(i + 1):
            if np.isfinite(lower[i, j]):
                color = "white" if abs(lower[i, j]) > 0.6 else "black"
                ax.text(
                    j,
                    i - (0.12 if spread else 0.0),
                    f"{lower[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=color,
                )
                if spread:
                    ax.text(
                        j,
                        i + 0.22,
                        f"[{low['min'][i, j]:.2f}, {low['max'][i, j]:.2f}]",
                        ha="center",
                        va="center",
                        fontsize=5.5,
                        color=color,
                    )
    labels = [CORR_LABELS[c] for c in mats["median"].index]
    ax.set_xticks(range(n - 1), labels[:-1], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n - 1), labels[1:], fontsize=8)
    fig.colorbar(im, ax=ax, label="Pearson r (median over seeds)")
    seeds = f"{len(rows)} seed{'s' if len(rows) != 1 else ''}"
    used = (
        f"{rows.sum()} rows, {rows.min()}–{rows.max()} per seed; [min, max] over seeds"
        if spread
        else f"{rows.sum()} rows"
    )
    ax.set_title(f"{breed['config_id'].iloc[0]}\n{seeds}, {used}", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class Figure:
    """One figure of the workflow: what draws it, from which tables, and its report label.

    The workflow makes one rule per entry (workflow/rules/figures.smk); its report caption is
    ``workflow/report/<name>.rst``. Adding a figure is one entry here and its caption file.
    """

    draw: Callable[..., plt.Figure]
    tables: tuple[str, ...]  # after ``runs``, in the order ``draw`` takes them
    label: str  # the report's "figure" label
    varied: bool = False  # ``draw`` also takes the study's varied parameters (Fig. 3b)


FIGURES: dict[str, Figure] = {
    "fig3a": Figure(fig_model_grid, ("curves",), "3a models"),
    "fig3b": Figure(fig_hyperparameters, ("curves",), "3b Breed hyperparameters", varied=True),
    "fig4": Figure(fig_deviation, ("inputs",), "4 input deviation"),
    "fig6": Figure(fig_correlation, ("correlations",), "6 correlations"),
}


def figure_tables(name: str) -> tuple[str, ...]:
    """Every table figure ``name`` reads, ``runs`` first."""
    return ("runs", *FIGURES[name].tables)


def draw(name: str, tables: dict[str, pd.DataFrame], varied: Sequence[str] = ()) -> plt.Figure:
    """Draw figure ``name`` from its tables (keyed by table name) and the study's varied
    parameter columns (used by the figures that vary a parameter)."""
    if name not in FIGURES:
        raise FigureError(f"unknown figure {name!r} (known: {', '.join(FIGURES)})")
    entry = FIGURES[name]
    args = [tables[t] for t in figure_tables(name)]
    if entry.varied:
        args.append(list(varied))
    return entry.draw(*args)


# --------------------------------------------------------------------------- λ draws
MAX_PAIR_PARAMETERS = 6  # 15 panels at most: beyond, the first six parameters


def fig_lambda_pairs(runs: pd.DataFrame, inputs: pd.DataFrame) -> plt.Figure:
    """The λ of the simulations run to completion, projected on every pair of parameters and
    coloured by Breed generation (0: the initial uniform design; triangles: proposal draws),
    pooled over the seeds of the reference Breed configuration (or every run if none is
    Breed). Where Breed steers shows as later generations gathering in regions of the box."""
    try:
        chosen, _ = reference_pair(runs)
    except FigureError:
        chosen = runs
    draws = inputs[inputs["run_id"].isin(chosen["run_id"])]
    if draws.empty:
        raise FigureError("no simulation run to completion to draw")
    cols = list(draws.columns)
    names = cols[cols.index("sim_id") + 1 : cols.index("source")][:MAX_PAIR_PARAMETERS]
    pairs = [(i, j) for i in range(1, len(names)) for j in range(i)] or [(0, 0)]
    n = max(len(names) - 1, 1)
    fig, axes = plt.subplots(n, n, figsize=(2.3 * n + 1.4, 2.3 * n), squeeze=False)
    generation = draws["generation"].fillna(0).astype(int)
    norm = matplotlib.colors.Normalize(0, max(int(generation.max()), 1))
    proposal = (draws["source"] == "proposal").to_numpy()
    scatter = None
    for ax in axes.flat:
        ax.set_visible(False)
    for i, j in pairs:
        ax = axes[i - 1, j] if len(names) > 1 else axes[0, 0]
        ax.set_visible(True)
        x = draws[names[j]].to_numpy(float)
        y = draws[names[i]].to_numpy(float) if len(names) > 1 else draws["sim_id"].to_numpy(float)
        for mask, marker in ((~proposal, "o"), (proposal, "^")):
            if mask.any():
                scatter = ax.scatter(
                    x[mask],
                    y[mask],
                    c=generation[mask],
                    cmap="viridis",
                    norm=norm,
                    marker=marker,
                    s=12,
                    alpha=0.8,
                    linewidths=0,
                )
        for axis, values in ((ax.xaxis, x), (ax.yaxis, y)):
            if values.min() > 0 and values.max() / values.min() > 100:  # a log-scale parameter
                (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
        if i == len(names) - 1 or len(names) == 1:
            ax.set_xlabel(names[j], fontsize=8)
        if j == 0:
            ax.set_ylabel(names[i] if len(names) > 1 else "simulation id", fontsize=8)
        ax.tick_params(labelsize=6)
    if scatter is not None:
        fig.colorbar(scatter, ax=axes, label="Breed generation (0: initial design)", shrink=0.8)
    k = chosen["run_id"].nunique()
    title = (
        f"{chosen['config_id'].iloc[0]} ({k} run{'s' * (k != 1)})"
        if "config_id" in chosen and len(chosen)
        else ""
    )
    fig.suptitle(f"λ of the simulations run (o uniform, ^ proposal) {title}", fontsize=9)
    return fig
