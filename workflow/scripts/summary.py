"""Final metrics over seeds per configuration and the paired Random/Breed ratios (> 1: Breed
better; breed.study.tables owns the convention), as CSV and as the HTML the report embeds."""

import logging
import sys

import pandas as pd

from breed import study as S
from breed.study import report as R

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.stderr = open(snakemake.log[0], "w")  # noqa: SIM115  (tracebacks land in the rule's log)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
study = snakemake.wildcards.study
runs = pd.read_csv(snakemake.input[0])
summary = S.summary_by_config(runs)
ratios = S.paired_ratios(runs)
summary.to_csv(snakemake.output.summary, index=False, float_format="%.6g")
ratios.to_csv(snakemake.output.ratios, index=False, float_format="%.4g")
with open(snakemake.output.summary_html, "w") as fh:
    fh.write(R.summary_table(summary) + "\n")
with open(snakemake.output.ratios_html, "w") as fh:
    fh.write(R.ratios_fragment(study, ratios))
logging.info(
    "%d configurations, %d Breed configurations paired", len(summary), ratios["config_id"].nunique()
)
logging.info("%s", R.headline(ratios))
