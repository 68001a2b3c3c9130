# Tidy tables of a study's runs (CSV), then the summary over seeds and the paired ratios.


rule tables:
    input:
        run_files,
    output:
        expand("results/{{study}}/tables/{table}.csv", table=S.TABLES),
    log:
        "results/{study}/logs/tables.log",
    conda:
        "../envs/breed.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    script:
        "../scripts/tables.py"


rule summary:
    input:
        "results/{study}/tables/runs.csv",
    output:
        summary=report(
            "results/{study}/tables/summary.csv",
            caption="../report/summary.rst",
            category="{study}",
            labels={"table": "final metrics over seeds"},
        ),
        ratios=report(
            "results/{study}/tables/ratios.csv",
            caption="../report/ratios.rst",
            category="{study}",
            labels={"table": "paired Breed/Random ratios"},
        ),
    log:
        "results/{study}/logs/summary.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/summary.py"
