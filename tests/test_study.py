"""breed.study: study grids -> run configs with readable ids, tidy tables, paired ratios."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_rundir import write_synthetic_study

from breed import study as S

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def ids(specs: list[S.RunSpec]) -> set[str]:
    return {s.run_id for s in specs}


def test_config_matches_workflow_schema(config: dict) -> None:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)


def test_every_schema_key_has_description_and_default() -> None:
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    missing = []

    def walk(node: dict, path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "description" not in sub or "default" not in sub:
                missing.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}*.")

    walk(schema, "")
    assert missing == []


def test_models_study_is_h_by_l_by_method_per_seed(config: dict) -> None:
    specs = S.expand_study(config, "models")
    assert len(specs) == 3 * 3 * 2 * len(config["seeds"])
    assert "breed-H16-L1-s0.025-P300-N200-r0.5-0.7-3-seed0" in ids(specs)
    assert "random-H64-L3-seed2" in ids(specs)
    breed = next(s for s in specs if s.run_id.startswith("breed-H32-L2"))
    assert breed.config["study"]["simulations"] == 800
    assert breed.config["solver"]["grid"] == 64 and breed.config["solver"]["steps"] == 100
    assert breed.config["model"]["batch_size"] == 128
    assert breed.config["buffer"]["watermark"] == 300
    assert breed.config["launcher"]["max_jobs"] == 10
    assert breed.config["validation"]["size"] == 200
    ref = {s.run_id for s in specs if s.reference}
    assert ref == {
        f"{m}-seed{k}"
        for k in config["seeds"]
        for m in ("random-H16-L1", "breed-H16-L1-s0.025-P300-N200-r0.5-0.7-3")
    }


def test_sampling_study_varies_one_parameter_at_a_time(config: dict) -> None:
    specs = [s for s in S.expand_study(config, "sampling") if s.seed == 0]
    breed = [s for s in specs if s.params["method"] == "breed"]
    # centre + sigma {1, 10, 25} K (5 K is the centre) + 5 periods + 3 windows
    assert len(breed) == 1 + 3 + 5 + 3
    assert len([s for s in specs if s.params["method"] == "random"]) == 1
    assert "breed-H16-L1-s0.0125-P200-N200-r0.5-0.9-3-seed0" in ids(specs)
    assert "breed-H16-L1-s0.0125-P10-N200-r0.5-0.9-3-seed0" in ids(specs)
    assert "breed-H16-L1-s0.0625-P200-N200-r0.5-0.9-3-seed0" in ids(specs)
    assert "breed-H16-L1-s0.0125-P200-N1000-r0.5-0.9-3-seed0" in ids(specs)
    for s in breed:  # exactly one parameter away from the centre
        off = [s.params["sigma"] != 0.0125, s.params["P"] != 200, s.params["N"] != 200]
        assert sum(off) <= 1
    centre = [s for s in breed if s.params["centre"]]
    assert [s.run_id for s in centre] == ["breed-H16-L1-s0.0125-P200-N200-r0.5-0.9-3-seed0"]


def test_mixing_study_uses_table1_centre(config: dict) -> None:
    specs = [s for s in S.expand_study(config, "mixing") if s.seed == 1]
    breed = ids(s for s in specs if s.params["method"] == "breed")
    assert len(breed) == 1 + 3 + 2 + 2
    assert "breed-H16-L1-s0.0125-P200-N200-r0.1-1-5-seed1" in breed
    assert "breed-H16-L1-s0.0125-P200-N200-r0.8-1-5-seed1" in breed
    assert "breed-H16-L1-s0.0125-P200-N200-r0.1-0.7-5-seed1" in breed
    assert "breed-H16-L1-s0.0125-P200-N200-r0.1-1-2-seed1" in breed


def test_random_and_breed_of_one_seed_are_paired(config: dict) -> None:
    specs = S.expand_study(config, "quick")
    assert sorted(s.run_id for s in specs) == [
        "breed-H16-L1-s0.025-P300-N200-r0.5-0.7-3-seed0",
        "breed-H16-L1-s0.025-P300-N200-r0.5-0.7-3-seed1",
        "breed-H16-L1-s0.025-P300-N200-r0.5-0.7-3-seed2",
        "random-H16-L1-seed0",
        "random-H16-L1-seed1",
        "random-H16-L1-seed2",
    ]
    by_seed: dict[int, set[str]] = {}
    for s in specs:
        by_seed.setdefault(s.seed, set()).add(s.params["pair_id"])
        assert s.config["seed"] == s.seed
    assert all(p == {"H16-L1"} for p in by_seed.values())


@pytest.mark.parametrize("study", ["quick", "tiny"])
def test_quick_and_tiny_compare_at_equal_simulations_and_iterations(
    config: dict, study: str
) -> None:
    """Deterministic mode: a fixed pace, so both methods of a seed train the same iterations
    on the same number of simulations, and Breed's resamplings bind simulations at fixed
    points (it steers on every run, whatever the timing)."""
    from breed.learning.budget import deterministic, iteration_budget

    specs = S.expand_study(config, study)
    assert {s.params["method"] for s in specs} == {"random", "breed"}
    assert all(deterministic(s.config) for s in specs)
    assert len({iteration_budget(s.config) for s in specs}) == 1
    assert len({s.config["study"]["simulations"] for s in specs}) == 1
    if study == "quick":
        assert len({s.seed for s in specs}) >= 3


def test_backend_and_validation_file_reach_the_run_config(config: dict) -> None:
    cfg = {**config, "launcher_backend": "slurm"}
    spec = S.expand_study(cfg, "tiny")[0]
    run = S.run_config(spec, "results/tiny/validation.npz", f"results/tiny/{spec.run_id}")
    assert run["launcher"]["backend"] == "slurm"
    assert run["validation"]["file"] == "results/tiny/validation.npz"
    assert run["output"] == f"results/tiny/{spec.run_id}"
    assert spec.config["validation"]["file"] is None  # the spec itself is not modified


def test_a_study_of_another_problem_makes_its_validation_set_for_that_problem(config: dict) -> None:
    from breed.problems import problem_of

    val = S.validation_config({**config, "launcher_backend": "slurm"}, "burgers")
    run = S.expand_study(config, "burgers")[0].config
    assert problem_of(val).fingerprint() == problem_of(run).fingerprint()
    assert problem_of(val).name == "burgers1d" and val["launcher"]["backend"] == "slurm"
    assert val["validation"]["size"] == run["validation"]["size"] == 40


def test_selected_studies_expands_sets(config: dict) -> None:
    assert S.selected_studies(config, "paper") == ["models", "sampling", "mixing"]
    assert S.selected_studies(config) == ["quick"]
    with pytest.raises(S.StudyError, match="'nope' is not one of"):
        S.selected_studies(config, "nope")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"grid": {"model.hiden": [16]}}, r"studies\.bad: model\.hiden: unknown key"),
        ({"grid": {"model.hidden": [0]}}, r"studies\.bad: model\.hidden: 0 is less than"),
        ({"vary": {"solver.grid": [16, 32]}}, r"solver\.grid cannot vary"),
        ({"grid": {"problem": ["heat2d", "burgers1d"]}}, r"problem cannot vary"),
        ({"base": {"training": {"per_sample_log": False}}}, r"per_sample_log must stay true"),
        ({"reference": {"model.hiddn": 16}}, r"reference: model\.hiddn is not a run-config key"),
    ],
)
def test_bad_studies_fail_with_one_line(config: dict, change: dict, message: str) -> None:
    cfg = copy.deepcopy(config)
    cfg["studies"]["bad"] = {**copy.deepcopy(cfg["studies"]["tiny"]), **change}
    with pytest.raises(S.StudyError, match=message) as info:
        S.expand_study(cfg, "bad")
    assert "\n" not in str(info.value)


def test_extra_varied_keys_enter_the_run_id(config: dict) -> None:
    cfg = copy.deepcopy(config)
    cfg["studies"]["buf"] = {
        **copy.deepcopy(cfg["studies"]["tiny"]),
        "grid": {"buffer.kind": ["reservoir", "fifo"], "sampler.name": ["uniform"]},
    }
    # a fifo buffer has no budget to pace: the tiny study's deterministic mode is left out
    cfg["studies"]["buf"]["base"]["training"] = {"validation_interval": 10}
    assert ids(S.expand_study(cfg, "buf")) == {
        "random-H16-L1-kindreservoir-seed0",
        "random-H16-L1-kindfifo-seed0",
    }


def test_study_figures_and_resources(config: dict) -> None:
    assert S.study_figures(config, "quick") == ["fig3a", "fig4", "fig6"]
    assert S.study_figures(config, "sampling") == ["fig3b", "fig4", "fig6"]
    assert S.run_resources(config, "quick") == {"mem_mb": 2000, "runtime": 15, "gpu": 0}
    assert S.run_resources(config, "models")["runtime"] == 240
    spec = S.expand_study(config, "quick")[0]
    assert S.run_threads(spec.config) == 1 + 2  # trainer + two local clients


def test_geometric_mean() -> None:
    assert S.geometric_mean(np.array([0.5, 2.0])) == pytest.approx(1.0)
    assert S.geometric_mean(np.array([0.25, 1.0])) == pytest.approx(0.5)
    assert math.isnan(S.geometric_mean(np.array([np.nan])))


def paired_runs(random: list[float], breed: list[float], configs: int = 1) -> pd.DataFrame:
    """A runs table of one model: a Random run and ``configs`` Breed runs per seed."""
    rows = []
    for seed, (r, b) in enumerate(zip(random, breed, strict=True)):
        rows.append({"config_id": "random", "seed": seed, "method": "random", "val_mse": r})
        for k in range(configs):
            rows.append({"config_id": f"breed-{k}", "seed": seed, "method": "breed", "val_mse": b})
    runs = pd.DataFrame(rows).assign(study="s", pair_id="H16-L1", reference=False)
    for m in S.VALIDATION_METRICS[1:]:
        runs[m] = 2 * runs["val_mse"]
    return runs


def test_paired_ratios_are_random_over_breed_of_the_same_seed() -> None:
    """Random/Breed, > 1 = Breed better (the direction changed from Breed/Random: the docs and
    benchmarks always reported Random/Breed); a Breed seed without its Random run is left out."""
    runs = paired_runs([4.0, 4.0], [1.0, 4.0])
    runs = pd.concat([runs, runs.iloc[[1]].assign(seed=9, val_mse=0.001)], ignore_index=True)
    ratios = S.paired_ratios(runs)
    assert list(ratios["metric"]) == S.VALIDATION_METRICS  # long form: one row per metric
    row = ratios.set_index("metric").loc["val_mse"]
    assert row["pairs"] == 2 and row["breed_wins"] == 1
    assert row[f"{S.RATIO}_gmean"] == pytest.approx(2.0)  # sqrt(4 * 1)
    assert (row[f"{S.RATIO}_min"], row[f"{S.RATIO}_max"]) == (1.0, 4.0)
    assert (row["random_mean"], row["breed_mean"]) == (4.0, 2.5)
    assert S.RATIO == "random_over_breed" and "Breed is better" in S.RATIO_MEANING
    assert math.isnan(row["wilcoxon_p"])  # 2 pairs: no test


def test_paired_bootstrap_ci_brackets_the_geometric_mean_and_is_stable() -> None:
    rng = np.random.default_rng(3)
    breed = rng.lognormal(0, 0.3, 12)
    random = breed * rng.lognormal(np.log(1.3), 0.1, 12)  # Random 30 % worse, per seed
    c = S.compare_paired(random, breed)
    assert c.pairs == 12 and c.breed_wins == 12
    assert c.ci_low < c.gmean < c.ci_high
    assert 1.0 < c.ci_low and c.ci_high < 1.6
    assert c.min <= c.ci_low and c.ci_high <= c.max
    assert S.compare_paired(random, breed) == c  # seeded: tables are byte-stable
    # swapping the methods inverts the ratio and its interval
    swapped = S.compare_paired(breed, random)
    assert swapped.gmean == pytest.approx(1 / c.gmean)
    assert swapped.ci_low == pytest.approx(1 / c.ci_high, rel=0.05)
    assert swapped.breed_wins == 0


def test_wilcoxon_from_six_pairs_only() -> None:
    from scipy.stats import wilcoxon

    random, breed = [2.0, 3.0, 2.5, 4.0, 3.5, 2.2], [1.0, 1.5, 2.0, 3.0, 3.6, 2.0]
    assert S.WILCOXON_MIN_PAIRS == 6
    c = S.compare_paired(random, breed)
    assert c.wilcoxon_p == pytest.approx(wilcoxon(random, breed).pvalue)
    assert c.breed_wins == 5
    assert math.isnan(S.compare_paired(random[:5], breed[:5]).wilcoxon_p)


def test_compare_paired_drops_unusable_pairs_and_handles_none() -> None:
    c = S.compare_paired([2.0, np.nan, 3.0, 1.0], [1.0, 1.0, 0.0, 1.0])
    assert c.pairs == 2 and c.gmean == pytest.approx(math.sqrt(2.0))
    one = S.compare_paired([2.0], [1.0])
    assert one.gmean == 2.0 and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = S.compare_paired([], [])
    assert none.pairs == 0 and math.isnan(none.gmean)
    assert list(none.row()) == S.RATIO_COLUMNS


def test_summary_reports_mean_and_range_and_quartiles_only_from_five_seeds() -> None:
    runs = paired_runs([1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 2.0, 2.0, 9.0], configs=1)
    runs = runs[~((runs["method"] == "breed") & (runs["seed"] == 4))]  # Breed: 4 seeds
    summary = S.summary_by_config(runs).set_index("config_id")
    rnd, brd = summary.loc["random"], summary.loc["breed-0"]
    assert (rnd["seeds"], brd["seeds"]) == (5, 4)
    assert (rnd["val_mse_mean"], rnd["val_mse_min"], rnd["val_mse_max"]) == (3.0, 1.0, 5.0)
    assert (rnd["val_mse_q25"], rnd["val_mse_median"], rnd["val_mse_q75"]) == (2.0, 3.0, 4.0)
    assert (brd["val_mse_mean"], brd["val_mse_min"], brd["val_mse_max"]) == (1.5, 1.0, 2.0)
    assert brd[["val_mse_q25", "val_mse_median", "val_mse_q75"]].isna().all()
    assert "traj_err_mean_mean" not in summary  # val_mse is the per-trajectory mean


def test_tables_from_synthetic_runs(config: dict, tmp_path: Path) -> None:
    specs = S.expand_study(config, "quick")
    write_synthetic_study(tmp_path, specs)
    runs = S.runs_table(specs, tmp_path)
    assert len(runs) == 6 and set(runs["method"]) == {"random", "breed"}
    r0 = runs.set_index("run_id").loc["random-H16-L1-seed0"]
    last_val = S.read_metrics(tmp_path / "random-H16-L1-seed0").query("kind == 'validation'")
    assert r0["val_mse"] == pytest.approx(last_val["val_mse"].iloc[-1])
    assert r0["iterations"] == 200 and r0["sims_done"] == 39
    assert (
        math.isnan(r0["sigma"])
        and runs.set_index("run_id").loc["breed-H16-L1-s0.025-P300-N200-r0.5-0.7-3-seed1", "sigma"]
        == 0.025
    )

    curves = S.curves_table(specs, tmp_path)
    assert set(curves["kind"]) == {"train", "validation"}
    assert len(curves.query("run_id == 'random-H16-L1-seed0' and kind == 'train'")) == 20

    inputs = S.inputs_table(specs, tmp_path)
    assert len(inputs) == 6 * 39  # the "lost" simulation is left out
    expected = np.std(inputs[["T0", "T1", "T2", "T3", "T4"]].to_numpy(), axis=1)
    assert np.allclose(inputs["deviation"], expected)

    corr = S.correlations_table(specs, tmp_path)
    assert set(corr["run_id"]) == {s.run_id for s in specs if s.params["method"] == "breed"}
    assert len(corr) == 3 * 10  # 5 variables -> 10 pairs per Breed run
    one = corr.query("a == 'sample_loss' and b == 'batch_loss'").iloc[0]
    frame = pd.read_csv(tmp_path / one["run_id"] / "per_sample_loss.csv")
    assert one["r"] == pytest.approx(frame["sample_loss"].corr(frame["batch_loss"]))

    summary = S.summary_by_config(runs)
    assert list(summary["seeds"]) == [3, 3]
    rnd = summary.set_index("config_id").loc["random-H16-L1"]
    assert rnd["val_mse_mean"] == pytest.approx(runs.query("method == 'random'")["val_mse"].mean())
    assert math.isnan(rnd["val_mse_median"])  # 3 seeds: no quartiles

    ratios = S.paired_ratios(runs).set_index("metric")
    assert ratios.loc["val_mse", "pairs"] == 3
    r = runs.set_index(["method", "seed"])["val_mse"]
    assert ratios.loc["val_mse", f"{S.RATIO}_gmean"] == pytest.approx(
        math.prod(r["random", k] / r["breed", k] for k in range(3)) ** (1 / 3)
    )
    assert ratios.loc["val_mse", f"{S.RATIO}_gmean"] > 1  # synthetic Breed is 10 % lower
