"""Write a configuration computed by breed.study (rule params) as YAML."""

import logging
import sys

from breed.config import dump_config

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
sys.stderr = open(snakemake.log[0], "w")  # noqa: SIM115  (tracebacks land in the rule's log)
logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True)
dump_config(snakemake.params.config, snakemake.output[0])
logging.info("wrote %s", snakemake.output[0])
