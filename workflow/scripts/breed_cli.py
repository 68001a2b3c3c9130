"""Run one breed command (``breed run``, ``breed make-validation``) for a rule, in-process.

Calling the CLI's entry point from the script directive uses the interpreter Snakemake picks
(its own, or the conda env's under --sdm conda) without putting an interpreter path into the
rule's provenance. Everything the command and its child processes (server, clients) print goes
to the rule's log: file descriptors 1 and 2 are redirected, not just sys.stderr.
"""

import os
import sys

from breed.cli import main

snakemake = globals()["snakemake"]  # injected by Snakemake's script directive
log = os.open(snakemake.log[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
sys.stdout.flush()
sys.stderr.flush()
os.dup2(log, 1)
os.dup2(log, 2)
args = [str(a) for a in snakemake.params.args]
print("breed " + " ".join(args), file=sys.stderr, flush=True)
sys.exit(main(args))
