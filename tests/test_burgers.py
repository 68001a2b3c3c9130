"""The Burgers preset: its solver against the Cole-Hopf oracle (error and order), its
description, and a run end to end with its own client (slow tier)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from breed.config import validate
from breed.problems import problem_of
from breed.problems.burgers1d import cole_hopf
from breed.problems.burgers1d_client import solve

ROOT = Path(__file__).resolve().parents[1]


def max_error(
    params: tuple[float, float, float], grid: int, steps: int = 10, t_end: float = 2.0
) -> float:
    x = 2.0 * np.pi * np.arange(grid) / grid
    return max(
        float(np.abs(u - cole_hopf(params, x, t_end * t / steps)).max())
        for t, u in solve(params, grid, steps, t_end)
    )


def test_the_oracle_is_converged_and_exact_at_t0() -> None:
    x = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    p = (0.02, 1.5, 0.5)  # the steepest corner of the box
    np.testing.assert_allclose(cole_hopf(p, x, 0.0), 1.5 * np.sin(x) + 0.5 * np.sin(2 * x))
    for t in (0.05, 1.0, 2.0):
        np.testing.assert_allclose(
            cole_hopf(p, x, t), cole_hopf(p, x, t, points=200_000), atol=1e-12
        )
    assert np.abs(cole_hopf(p, x, 2.0)).max() <= 2.0  # the maximum principle, the declared range


@pytest.mark.parametrize(
    ("params", "err_256"),
    [((0.1, 1.0, 0.3), 1e-3), ((0.3, 0.5, -0.5), 1e-4), ((0.02, 1.5, 0.5), 1e-1)],
)
def test_the_solver_is_second_order_against_cole_hopf(params, err_256) -> None:
    errors = [max_error(params, n) for n in (128, 256, 512)]
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert errors[1] < err_256, errors
    # second order once the front is resolved (the steep corner needs 512 nodes for that)
    assert (np.diff(errors) < 0).all() and 1.7 < orders[-1] < 2.3, orders


def test_the_preset_is_a_problem_like_a_users() -> None:
    p = problem_of(validate({"problem": "burgers1d"}))
    assert p.names == ["nu", "a", "b"] and list(p.log_mask) == [True, False, False]
    assert [f.shape for f in p.fields] == [(256,)] and p.steps == 50
    assert p.client.command[1:] == ("-m", "breed.problems.burgers1d_client")
    assert p.fields[0].range == (-2.0, 2.0) and p.settings["t_end"] == 2.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_burgers_runs_end_to_end_with_its_own_client(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "breed",
            "run",
            str(ROOT / "config" / "examples" / "burgers.yaml"),
            "--output",
            str(tmp_path / "run"),
            "--set",
            "study.simulations=24",
            "--set",
            "validation.size=6",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["problem"] == "burgers1d" and summary["sims_done"] == 24
    rows = (run / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("sim_id,nu,a,b,")
    nu = np.array([float(r.split(",")[1]) for r in rows[1:]])
    assert ((nu >= 0.02) & (nu <= 0.3)).all()
    from breed.learning.validation import load_validation

    vset = load_validation(run / "validation.npz")  # made by the Burgers client itself
    x = 2.0 * np.pi * np.arange(256) / 256
    np.testing.assert_allclose(vset.fields[2, 50], cole_hopf(vset.params[2], x, 2.0), atol=5e-2)
