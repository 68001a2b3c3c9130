# Helpers shared by the rules: study expansion comes from the breed package (breed.study).
import os
import sys
from functools import cache

# Workflow and package come from the same checkout: its src/ goes first on the path of this
# process and of every job (venv, Nix shell or a conda env of workflow/envs/).
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])))

from breed import study as S  # noqa: E402


wildcard_constraints:
    study=r"[A-Za-z0-9_]+",
    run=r"[a-z]+-H[0-9]+-L[0-9]+[A-Za-z0-9._\-]*",


RUN_FILES = ["summary.json", "metrics.jsonl", "samples.csv", "per_sample_loss.csv"]
TABLES = ["runs", "curves", "inputs", "correlations"]


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
        file=RUN_FILES,
    )


def study_targets(name):
    targets = []
    for study in S.selected_studies(config, name):
        targets += expand("results/{study}/tables/{table}.csv", study=study,
                          table=["summary", "ratios"])
        targets += expand("results/{study}/figures/{figure}.{ext}", study=study,
                          figure=S.study_figures(config, study), ext=["png", "pdf"])
    return targets
