"""Draw one figure (the rule's name: fig3a, fig3b, fig4, fig6) with breed.study.figures."""

import logging
import sys

import pandas as pd

from breed.study import figures as F

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.stderr = open(snakemake.log[0], "w")  # noqa: SIM115  (tracebacks land in the rule's log)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
runs = pd.read_csv(snakemake.input.runs)
name = snakemake.rule
if name == "fig3a":
    fig = F.fig_model_grid(runs, pd.read_csv(snakemake.input.curves))
elif name == "fig3b":
    fig = F.fig_hyperparameters(runs, pd.read_csv(snakemake.input.curves),
                                list(snakemake.params.varied))
elif name == "fig4":
    fig = F.fig_deviation(runs, pd.read_csv(snakemake.input.inputs))
elif name == "fig6":
    fig = F.fig_correlation(runs, pd.read_csv(snakemake.input.correlations))
else:
    raise ValueError(f"unknown figure rule {name!r}")
F.save(fig, snakemake.output.png, snakemake.output.pdf)
logging.info("%s -> %s, %s", name, snakemake.output.png, snakemake.output.pdf)
