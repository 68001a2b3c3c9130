"""breed.study.report: the HTML the Snakemake report embeds (ratio table, summary, headline),
from tables made of SYNTHETIC run directories (tests/synthetic_rundir.py) or small frames."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_rundir import write_synthetic_study

from breed import study as S
from breed.study import report as R

ROOT = Path(__file__).resolve().parents[1]


class Cells(HTMLParser):
    """The rows of the first table of an HTML fragment, as text cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def cells(fragment: str) -> list[list[str]]:
    parser = Cells()
    parser.feed(fragment)
    return parser.rows


def runs_of(random: list[float], breed: list[float]) -> pd.DataFrame:
    rows = []
    for seed, (r, b) in enumerate(zip(random, breed, strict=True)):
        rows.append({"config_id": "random-H16-L1", "seed": seed, "method": "random", "val_mse": r})
        rows.append({"config_id": "breed-x", "seed": seed, "method": "breed", "val_mse": b})
    runs = pd.DataFrame(rows).assign(study="s", pair_id="H16-L1", reference=True)
    for m in S.VALIDATION_METRICS[1:]:
        runs[m] = 3 * runs["val_mse"]
    return runs


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["studies"]["quick"]["seeds"] = [0, 1]  # two pairs: no median, no Wilcoxon
    specs = S.expand_study(config, "quick")
    root = tmp_path_factory.mktemp("quick")
    write_synthetic_study(root, specs)
    return S.runs_table(specs, root)


def test_ratio_table_shows_every_configuration_and_metric(quick: pd.DataFrame) -> None:
    ratios = S.paired_ratios(quick)
    rows = cells(R.ratio_table(ratios))
    head, body = rows[0], rows[1:]
    assert "Random/Breed (geo. mean)" in head and "95% CI" in head and "Wilcoxon p" in head
    assert len(body) == len(ratios) == len(S.VALIDATION_METRICS)
    got = {r[1]: r[head.index("Random/Breed (geo. mean)")] for r in body}
    val = ratios.set_index("metric").loc["val_mse"]
    assert got["validation MSE"] == f"{val[f'{S.RATIO}_gmean']:.3g}"
    assert body[0][head.index("Breed better")] == f"{int(val['breed_wins'])}/2"
    assert body[0][head.index("Wilcoxon p")] == "–"  # 2 pairs: no test
    assert "&gt; 1 means Breed is better" in R.ratio_table(ratios)


def test_a_resolved_improvement_is_shaded_and_headlined() -> None:
    random = [2.0, 2.2, 1.9, 2.5, 2.1, 2.4, 2.3]
    breed = [r / f for r, f in zip(random, [1.3, 1.2, 1.4, 1.25, 1.35, 1.3, 1.2], strict=True)]
    ratios = S.paired_ratios(runs_of(random, breed))
    table = R.ratio_table(ratios)
    assert R.BETTER in table and R.WORSE not in table
    text = R.headline(ratios)
    assert text.startswith("Random/Breed of the final validation MSE: 1.28 for breed-x (95% CI")
    assert "Breed better in 7 of 7 paired seeds" in text and "Breed is better" in text
    row = cells(table)[1]
    assert re.fullmatch(r"0\.0\d+", row[-1]), row  # Wilcoxon p of 7 pairs, all one way
    # the same numbers the other way round: worse, shaded red
    worse = S.paired_ratios(runs_of(breed, random))
    assert R.WORSE in R.ratio_table(worse) and "Breed is worse" in R.headline(worse)


def test_headline_of_one_pair_and_of_no_pair() -> None:
    one = S.paired_ratios(runs_of([2.0], [1.0]))
    text = R.headline(one)
    assert "2 for breed-x (Breed better in 1 of 1 paired seed)" in text
    assert "one pair: no interval" in text
    assert cells(R.ratio_table(one))[1][6] == "–"  # no CI from one pair
    for runs in (runs_of([2.0], [1.0]).query("method == 'random'"), runs_of([2.0], [1.0])):
        if (runs["method"] == "breed").any():
            runs = runs.assign(seed=runs["seed"] + 10 * (runs["method"] == "breed"))
        text = R.headline(S.paired_ratios(runs))  # no Breed run, or none of the same seed
        assert text.startswith("No Breed run has a paired Random run"), text


def test_headline_over_several_configurations() -> None:
    runs = runs_of([2.0, 2.0], [1.0, 1.0])
    other = runs.query("method == 'breed'").assign(config_id="breed-y", reference=False)
    other["val_mse"] = 4.0
    ratios = S.paired_ratios(pd.concat([runs, other], ignore_index=True))
    text = R.headline(ratios)
    assert "2 for breed-x" in text  # the reference configuration leads
    assert "Over its 2 Breed configurations the geometric means span 0.5–2" in text


def test_summary_table_gives_n_mean_range_and_no_median_of_two(quick: pd.DataFrame) -> None:
    summary = S.summary_by_config(quick)
    rows = cells(R.summary_table(summary))
    head, body = rows[0], rows[1:]
    assert head[:3] == ["configuration", "seeds", "validation MSE: mean"]
    assert [r[1] for r in body] == ["2", "2"]
    rnd = quick.query("method == 'random'")["val_mse"]
    assert body[0][2] == f"{rnd.mean():.3g}"
    assert body[0][3] == f"{rnd.min():.3g}–{rnd.max():.3g}"
    assert body[0][4] == "–"  # 2 seeds: no median


def test_fragment_escapes_names() -> None:
    runs = runs_of([2.0], [1.0]).replace({"breed-x": "breed-<x>"})
    fragment = R.ratios_fragment("s&t", S.paired_ratios(runs))
    assert "Study s&amp;t" in fragment and "breed-&lt;x&gt;" in fragment
    assert html.unescape(fragment).count("breed-<x>") == 1 + len(S.VALIDATION_METRICS)
    assert np.isfinite(float(cells(fragment)[1][5]))
