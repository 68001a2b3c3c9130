"""Training budgets (breed.learning.budget): the total, the pace, and the settings refused
before a run starts (one line naming the key, exit 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from breed.config import ConfigError, validate
from breed.learning.budget import iteration_budget
from breed.learning.reservoir import buffer_from_config


def test_the_budget_is_iterations_or_n_per_simulation() -> None:
    assert iteration_budget(validate({})) is None
    per = validate({"study": {"simulations": 30}, "training": {"iterations_per_simulation": 4}})
    assert iteration_budget(per) == 120
    both = {"study": {"simulations": 30}, "training": {"iterations_per_simulation": 4}}
    both["training"]["iterations"] = 500  # more than the pace needs: the rest after the stream
    assert iteration_budget(validate(both)) == 500
    assert buffer_from_config(per).recycle and not buffer_from_config(validate({})).recycle


@pytest.mark.parametrize(
    ("training", "extra", "message"),
    [
        (
            {"iterations": 100, "iterations_per_simulation": 2},
            {},
            "training.iterations: 100 is less than training.iterations_per_simulation 2 x "
            "study.simulations 60 = 120",
        ),
        (
            {"iterations_per_simulation": 2, "max_iterations": 50},
            {},
            "training.iterations_per_simulation: 120 is more than training.max_iterations 50",
        ),
        (
            {"iterations_per_simulation": 2},
            {"buffer": {"kind": "fifo"}},
            "training.iterations_per_simulation: a budget is spent on the reservoir",
        ),
        (
            {"deterministic": True},
            {},
            "training.deterministic: needs training.iterations_per_simulation",
        ),
        (
            {"deterministic": True, "iterations_per_simulation": 2},
            {"launcher": {"server_ranks": 2}},
            "training.deterministic: needs launcher.server_ranks 1",
        ),
    ],
)
def test_contradictions_are_refused(training: dict, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate({"study": {"simulations": 60}, "training": training, **extra})


@pytest.mark.timeout(60)
def test_breed_run_refuses_a_contradiction_with_one_line(tmp_path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"training": {"iterations": 10, "iterations_per_simulation": 1}}))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "breed", "run", str(cfg), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "training.iterations: 10 is less" in proc.stderr
    assert not out.exists()
