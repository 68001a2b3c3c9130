"""Final metrics over seeds per configuration, and paired Breed/Random ratios."""

import logging
import sys

import pandas as pd

from breed import study as S

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.stderr = open(snakemake.log[0], "w")  # noqa: SIM115  (tracebacks land in the rule's log)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
runs = pd.read_csv(snakemake.input[0])
summary = S.summary_by_config(runs)
ratios = S.paired_ratios(runs)
summary.to_csv(snakemake.output.summary, index=False, float_format="%.6g")
ratios.to_csv(snakemake.output.ratios, index=False, float_format="%.4g")
logging.info("%d configurations, %d Breed configurations paired", len(summary), len(ratios))
if len(ratios):
    logging.info(
        "val_mse Breed/Random (geometric mean over seeds):\n%s",
        ratios[["config_id", "pairs", "val_mse_ratio_gmean"]].to_string(index=False),
    )
