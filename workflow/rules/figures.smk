# Figures 3a, 3b, 4 and 6 of the paper, drawn from the tables only (never re-trains).


rule fig3a:
    input:
        runs="results/{study}/tables/runs.csv",
        curves="results/{study}/tables/curves.csv",
    output:
        png=report(
            "results/{study}/figures/fig3a.png",
            caption="../report/fig3a.rst",
            category="{study}",
            labels={"figure": "3a models"},
        ),
        pdf="results/{study}/figures/fig3a.pdf",
    log:
        "results/{study}/logs/fig3a.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/figure.py"


rule fig3b:
    input:
        runs="results/{study}/tables/runs.csv",
        curves="results/{study}/tables/curves.csv",
    output:
        png=report(
            "results/{study}/figures/fig3b.png",
            caption="../report/fig3b.rst",
            category="{study}",
            labels={"figure": "3b Breed hyperparameters"},
        ),
        pdf="results/{study}/figures/fig3b.pdf",
    params:
        varied=lambda wildcards: [
            S.PARAMS.get(key, key) for key in config["studies"][wildcards.study]["vary"]
        ],
    log:
        "results/{study}/logs/fig3b.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/figure.py"


rule fig4:
    input:
        runs="results/{study}/tables/runs.csv",
        inputs="results/{study}/tables/inputs.csv",
    output:
        png=report(
            "results/{study}/figures/fig4.png",
            caption="../report/fig4.rst",
            category="{study}",
            labels={"figure": "4 input deviation"},
        ),
        pdf="results/{study}/figures/fig4.pdf",
    log:
        "results/{study}/logs/fig4.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/figure.py"


rule fig6:
    input:
        runs="results/{study}/tables/runs.csv",
        correlations="results/{study}/tables/correlations.csv",
    output:
        png=report(
            "results/{study}/figures/fig6.png",
            caption="../report/fig6.rst",
            category="{study}",
            labels={"figure": "6 correlations"},
        ),
        pdf="results/{study}/figures/fig6.pdf",
    log:
        "results/{study}/logs/fig6.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/figure.py"
