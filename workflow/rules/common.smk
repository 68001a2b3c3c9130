# Helpers shared by the rules. Study expansion, run-directory names, tables and figures come
# from the breed package, installed in the environment that runs Snakemake (the README's venv,
# `pip install -e ".[dev]"`, or `nix develop`); jobs run by the same interpreter, or under
# --sdm conda in workflow/envs/breed.yaml, which installs this checkout too.
import os
import sys
from functools import cache

try:
    from breed import study as S
    from breed.launcher.cluster import missing_submit_command
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


def schedulers_needed():
    """The schedulers this invocation will submit to: the executor's (jobs that are not local
    rules) and the launcher backend's (every breed_run submits its clients with it)."""
    jobs = list(workflow.dag.needrun_jobs())
    submits = workflow.non_local_exec and any(not job.is_local for job in jobs)
    needed = ["slurm"] if submits and workflow.executor_plugin.name == "slurm" else []
    if submits or any(job.rule.name == "breed_run" for job in jobs):
        needed.append(config["launcher_backend"])
    return needed


# Before any job (never in a dry run): a cluster profile on a machine without its scheduler
# fails here in a second with one line, not at the first submission (~40 s, or a traceback).
onstart:
    for problem in filter(None, map(missing_submit_command, schedulers_needed())):
        sys.exit(problem)
