# The study pipeline of the paper's Section 4 (Figures 3, 4, 6): see workflow/report/workflow.rst.
#   snakemake --cores 2                         quick study (default target)
#   snakemake --cores 2 --config study=paper    the three paper grids (or: snakemake paper)
#   snakemake --profile slurm | --profile oar   on a cluster (profiles/<name>, linked at the root)
from snakemake.utils import min_version, validate

min_version("9")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        study_targets(config["study"]),


rule paper:
    input:
        study_targets("paper"),
