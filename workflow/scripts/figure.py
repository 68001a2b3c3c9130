"""Draw one figure (params.figure, a key of breed.study.figures.FIGURES) from its tables."""

import logging
import sys

import pandas as pd

from breed.study import figures as F

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.stderr = open(snakemake.log[0], "w")  # noqa: SIM115  (tracebacks land in the rule's log)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
name = snakemake.params.figure
tables = {table: pd.read_csv(path) for table, path in snakemake.input.items()}
fig = F.draw(name, tables, varied=snakemake.params.get("varied", []))
F.save(fig, snakemake.output.png, snakemake.output.pdf)
logging.info("%s -> %s, %s", name, snakemake.output.png, snakemake.output.pdf)
