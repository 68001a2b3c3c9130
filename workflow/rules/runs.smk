# One validation set per study, one resolved config per grid point, one `breed run` per config.


rule validation_config:
    output:
        "results/{study}/validation.yaml",
    params:
        config=lambda wildcards: S.validation_config(config, wildcards.study),
    log:
        "results/{study}/logs/validation_config.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/write_yaml.py"


rule make_validation:
    input:
        "results/{study}/validation.yaml",
    output:
        "results/{study}/validation.npz",
    params:
        args=lambda wildcards, input, output: [
            "make-validation", "--config", input[0], "--output", output[0]
        ],
    log:
        "results/{study}/logs/make_validation.log",
    conda:
        "../envs/breed.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    script:
        "../scripts/breed_cli.py"


# The config lives beside the run directory, not in it: `breed run` creates that directory
# fresh (and --overwrite moves a failed attempt's aside, so a rerun never mixes two runs).
rule run_config:
    output:
        "results/{study}/configs/{run}.yaml",
    params:
        config=lambda wildcards: S.run_config(
            study_specs(wildcards.study)[wildcards.run],
            validation_file=f"results/{wildcards.study}/validation.npz",
            run_dir=f"results/{wildcards.study}/{wildcards.run}",
        ),
    log:
        "results/{study}/logs/run_config/{run}.log",
    conda:
        "../envs/breed.yaml"
    localrule: True
    script:
        "../scripts/write_yaml.py"


rule breed_run:
    input:
        config="results/{study}/configs/{run}.yaml",
        validation="results/{study}/validation.npz",
    output:
        expand("results/{{study}}/{{run}}/{file}", file=RESULTS),
    params:
        args=lambda wildcards, input, output: [
            "run", input.config, "--output", os.path.dirname(output[0]), "--overwrite"
        ],
    log:
        "results/{study}/logs/breed_run/{run}.log",
    conda:
        "../envs/breed.yaml"
    threads: lambda wildcards: S.run_threads(study_specs(wildcards.study)[wildcards.run].config)
    resources:
        mem_mb=lambda wildcards: S.run_resources(config, wildcards.study)["mem_mb"],
        runtime=lambda wildcards: S.run_resources(config, wildcards.study)["runtime"],
        gpu=lambda wildcards: S.run_resources(config, wildcards.study)["gpu"],
    script:
        "../scripts/breed_cli.py"
