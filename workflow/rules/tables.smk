# Tidy tables of a study's runs (CSV), then the summary over seeds and the paired Random/Breed
# ratios (CSV, and HTML for the report).


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
            labels={"table": "paired Random/Breed ratios"},
        ),
        # the same numbers as HTML, embedded by the captions and the landing page
        summary_html="results/{study}/tables/summary.html",
        ratios_html="results/{study}/tables/ratios.html",
    log:
        "results/{study}/logs/summary.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/summary.py"
