# The paper's figures, drawn from the tables only (never re-trains): one rule per entry of
# breed.study.figures.FIGURES (its tables, report label; caption: ../report/<name>.rst).


def varied_columns(wildcards):
    """The table columns of the parameters a study varies one at a time (Fig. 3b panels)."""
    return [S.PARAMS.get(key, key) for key in config["studies"][wildcards.study]["vary"]]


for _name, _figure in F.FIGURES.items():

    rule:
        name:
            _name
        input:
            **{t: f"results/{{study}}/tables/{t}.csv" for t in F.figure_tables(_name)},
        output:
            png=report(
                f"results/{{study}}/figures/{_name}.png",
                caption=f"../report/{_name}.rst",
                category="{study}",
                labels={"figure": _figure.label},
            ),
            pdf=f"results/{{study}}/figures/{_name}.pdf",
        params:
            figure=_name,
            **({"varied": varied_columns} if _figure.varied else {}),
        log:
            f"results/{{study}}/logs/{_name}.log",
        conda:
            "../envs/breed.yaml"
        localrule: True
        script:
            "../scripts/figure.py"
