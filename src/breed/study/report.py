"""The study's numbers as HTML for the Snakemake report: the paired Random/Breed table with its
CIs, the summary over seeds, and the headline sentence of the landing page.

Fragments, not documents: the report's captions and its landing page (workflow/report/*.rst)
embed them with docutils' ``raw`` directive, so every number is on a page, not only in a
download. Styles are inline because the report's stylesheet (Tailwind) resets table borders.
The convention (Random/Breed, > 1: Breed better) and the statistics are
:mod:`breed.study.tables`'; this module only formats them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import pandas as pd

from breed.study.tables import (
    CI_LEVEL,
    QUARTILES_MIN_SEEDS,
    RATIO,
    RATIO_LABEL,
    RATIO_MEANING,
    VALIDATION_METRICS,
    WILCOXON_MIN_PAIRS,
)

METRIC_LABELS = {
    "val_mse": "validation MSE",
    "traj_err_p99": "per-trajectory MSE, p99",
    "traj_err_max": "per-trajectory MSE, max",
}
TABLE_STYLE = "border-collapse:collapse;font-size:0.85em;margin:0.5em 0"
CELL_STYLE = "border:1px solid #bbb;padding:2px 6px"
# A ratio whose CI lies wholly on one side of 1 is shaded: green Breed better, red worse.
BETTER, WORSE = "#d9f2d9", "#f8dcdc"


def fmt(x: float, digits: int = 3) -> str:
    """``digits`` significant figures; a dash for a missing value (e.g. the CI of one pair)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def span(lo: float, hi: float) -> str:
    """``lo–hi``; one dash when either end is missing."""
    return "–" if math.isnan(lo) or math.isnan(hi) else f"{fmt(lo)}–{fmt(hi)}"


def _cell(text: str, tag: str = "td", shade: str = "") -> str:
    style = CELL_STYLE + (f";background:{shade}" if shade else "")
    return f'<{tag} style="{style}">{html.escape(text)}</{tag}>'


def _table(head: Sequence[str], rows: Sequence[Sequence[tuple[str, str]]]) -> str:
    lines = [f'<table class="breed-table" style="{TABLE_STYLE}">']
    lines.append("<tr>" + "".join(_cell(h, "th") for h in head) + "</tr>")
    for row in rows:
        lines.append("<tr>" + "".join(_cell(text, shade=shade) for text, shade in row) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def verdict(row: pd.Series) -> str:
    """'better' / 'worse' where the CI excludes 1, else '' (not resolved by these seeds)."""
    lo, hi = row[f"{RATIO}_ci_low"], row[f"{RATIO}_ci_high"]
    if math.isnan(lo) or math.isnan(hi):
        return ""
    return "better" if lo > 1 else "worse" if hi < 1 else ""


def ratio_table(ratios: pd.DataFrame, metrics: Sequence[str] = VALIDATION_METRICS) -> str:
    """One row per Breed configuration and metric: the errors' means, Random/Breed with its
    bootstrap CI, range, Breed's wins and the Wilcoxon p."""
    head = [
        "Breed configuration",
        "metric",
        "pairs",
        "Random (mean)",
        "Breed (mean)",
        f"{RATIO_LABEL} (geo. mean)",
        f"{CI_LEVEL:.0%} CI",
        "min–max",
        "Breed better",
        "Wilcoxon p",
    ]
    rows = []
    for _, r in ratios[ratios["metric"].isin(metrics)].iterrows():
        shade = {"better": BETTER, "worse": WORSE}.get(verdict(r), "")
        rows.append(
            [
                (str(r["config_id"]), ""),
                (METRIC_LABELS.get(r["metric"], r["metric"]), ""),
                (str(int(r["pairs"])), ""),
                (fmt(r["random_mean"]), ""),
                (fmt(r["breed_mean"]), ""),
                (fmt(r[f"{RATIO}_gmean"]), shade),
                (span(r[f"{RATIO}_ci_low"], r[f"{RATIO}_ci_high"]), shade),
                (span(r[f"{RATIO}_min"], r[f"{RATIO}_max"]), ""),
                (f"{int(r['breed_wins'])}/{int(r['pairs'])}", ""),
                (fmt(r["wilcoxon_p"], 2), ""),
            ]
        )
    note = (
        f"<p>{html.escape(RATIO_MEANING)}. CI: paired bootstrap over seeds (percentile, "
        f"{CI_LEVEL:.0%}); shaded where it excludes 1 (green: Breed better, red: worse). "
        f"Wilcoxon signed-rank from {WILCOXON_MIN_PAIRS} pairs on.</p>"
    )
    return note + "\n" + _table(head, rows)


def summary_table(summary: pd.DataFrame, metrics: Sequence[str] = VALIDATION_METRICS) -> str:
    """One row per configuration: seeds, and per metric its mean and min–max over seeds (the
    median too from ``QUARTILES_MIN_SEEDS`` seeds on)."""
    head = ["configuration", "seeds"]
    for m in metrics:
        head += [f"{METRIC_LABELS.get(m, m)}: mean", "min–max", "median"]
    rows = []
    for _, r in summary.iterrows():
        row = [(str(r["config_id"]), ""), (str(int(r["seeds"])), "")]
        for m in metrics:
            row += [
                (fmt(r[f"{m}_mean"]), ""),
                (span(r[f"{m}_min"], r[f"{m}_max"]), ""),
                (fmt(r[f"{m}_median"]), ""),
            ]
        rows.append(row)
    note = (
        "<p>Over seeds: mean and min–max; the median only from "
        f"{QUARTILES_MIN_SEEDS} seeds on (quartiles of fewer seeds are the seeds).</p>"
    )
    return note + "\n" + _table(head, rows)


def headline(ratios: pd.DataFrame, metric: str = "val_mse") -> str:
    """The study's result in one or two sentences, from its ratios table (the landing page)."""
    rows = ratios[(ratios["metric"] == metric) & (ratios["pairs"] > 0)]
    label = METRIC_LABELS.get(metric, metric)
    if rows.empty:
        return f"No Breed run has a paired Random run: no {RATIO_LABEL} ratio of the {label}."
    ref = rows[rows["reference"].astype(bool)] if "reference" in rows else rows.iloc[:0]
    lead = (ref if len(ref) else rows).iloc[0]
    pairs = int(lead["pairs"])
    ci = f"{CI_LEVEL:.0%} CI {span(lead[f'{RATIO}_ci_low'], lead[f'{RATIO}_ci_high'])}, "
    text = (
        f"{RATIO_LABEL} of the final {label}: {fmt(lead[f'{RATIO}_gmean'])} for "
        f"{lead['config_id']} ({ci if pairs > 1 else ''}Breed better in "
        f"{int(lead['breed_wins'])} of {pairs} paired seed{'s' if pairs != 1 else ''}); "
        + {
            "better": "Breed is better at this confidence.",
            "worse": "Breed is worse at this confidence.",
            "": "not resolved by these seeds"
            + (" (the CI includes 1)." if pairs > 1 else " (one pair: no interval)."),
        }[verdict(lead)]
    )
    finite = rows[rows[f"{RATIO}_gmean"].notna()]
    if len(rows) > 1 and len(finite):
        verdicts = [verdict(r) for _, r in rows.iterrows()]
        best = finite.loc[finite[f"{RATIO}_gmean"].idxmax()]
        text += (
            f" Over its {len(rows)} Breed configurations the geometric means span "
            f"{fmt(rows[f'{RATIO}_gmean'].min())}–{fmt(rows[f'{RATIO}_gmean'].max())} "
            f"(highest: {best['config_id']}); the CI excludes 1 for "
            f"{verdicts.count('better')} better and {verdicts.count('worse')} worse."
        )
    return text


def ratios_fragment(study: str, ratios: pd.DataFrame) -> str:
    """The study's headline and its ratio table: the landing page's section of the study."""
    return (
        f'<div class="breed-study"><h3>Study {html.escape(study)}</h3>\n'
        f"<p><b>{html.escape(headline(ratios))}</b></p>\n{ratio_table(ratios)}\n</div>\n"
    )


__all__ = ["fmt", "verdict", "ratio_table", "summary_table", "headline", "ratios_fragment"]
