"""Tidy tables of one study's runs (breed.study.TABLES): runs, curves, inputs, correlations."""

import logging
import sys
from pathlib import Path

from breed import study as S

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.stderr = open(snakemake.log[0], "w")  # noqa: SIM115  (tracebacks land in the rule's log)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
study = snakemake.wildcards.study
specs = S.expand_study(snakemake.config, study)
root = Path("results", study)
for path in snakemake.output:
    name = Path(path).stem
    table = S.TABLES[name](specs, root)
    table.to_csv(path, index=False)
    logging.info("%s: %d rows -> %s", name, len(table), path)
