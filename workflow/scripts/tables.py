"""Tidy tables of one study's runs (breed.study): runs, curves, inputs, correlations."""

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
tables = {
    "runs": S.runs_table(specs, root),
    "curves": S.curves_table(specs, root),
    "inputs": S.inputs_table(specs, root),
    "correlations": S.correlations_table(specs, root),
}
for path in snakemake.output:
    name = Path(path).stem
    tables[name].to_csv(path, index=False)
    logging.info("%s: %d rows -> %s", name, len(tables[name]), path)
