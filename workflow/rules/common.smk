# Helpers shared by the rules. Study expansion, run-directory names, tables and figures come
# from the breed package, installed in the environment that runs Snakemake (the README's venv,
# `pip install -e ".[dev]"`, or `nix develop`); jobs run by the same interpreter, or under
# --sdm conda in workflow/envs/breed.yaml, which installs this checkout too.
import os
import sys
from functools import cache

try:
    from breed import study as S
    from breed.rundir import RESULTS
    from breed.study import figures as F
except ImportError as exc:  # one line, no traceback: the fix is a set-up command
    sys.exit(
        f"cannot import breed ({exc}): run Snakemake where breed is installed: "
        'python3 -m venv .venv && .venv/bin/pip install -e ".[dev]" && . .venv/bin/activate '
        "(or: nix develop; see README.md)"
    )


wildcard_constraints:
    study=r"[A-Za-z0-9_]+",
    run=r"[a-z]+-H[0-9]+-L[0-9]+[A-Za-z0-9._\-]*",


@cache
def study_specs(study):
    return {spec.run_id: spec for spec in S.expand_study(config, study)}


def run_ids(study):
    return list(study_specs(study))


def run_files(wildcards):
    return expand(
        "results/{study}/{run}/{file}",
        study=wildcards.study,
        run=run_ids(wildcards.study),
        file=RESULTS,
    )


def study_targets(name):
    targets = []
    for study in S.selected_studies(config, name):
        targets += expand("results/{study}/tables/{table}.csv", study=study,
                          table=["summary", "ratios"])
        targets += expand("results/{study}/figures/{figure}.{ext}", study=study,
                          figure=S.study_figures(config, study), ext=["png", "pdf"])
    return targets
