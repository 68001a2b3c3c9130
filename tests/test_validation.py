"""Validation set: Halton parameters, file round trip, solver mismatch, `breed make-validation`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from breed.launcher.make_validation import main
from breed.learning.validation import (
    ValidationFileError,
    halton_params,
    heat_problem,
    load_validation,
    make_validation,
)
from breed.problems.heat2d_solver import solve

SMALL = {"grid": 5, "steps": 4, "dt": 0.01, "alpha": 1.0, "length": 10.0}


def test_halton_params_in_bounds_deterministic_and_spread() -> None:
    heat = heat_problem(**SMALL, bounds=(100.0, 500.0))
    a = halton_params(200, seed=3, problem=heat)
    assert a.shape == (200, 5) and a.dtype == np.float64
    assert a.min() >= 100.0 and a.max() <= 500.0
    np.testing.assert_array_equal(a, halton_params(200, seed=3, problem=heat))
    assert not np.array_equal(a, halton_params(200, seed=4, problem=heat))
    # low discrepancy: every fifth of every axis holds close to a fifth of the points
    counts = np.stack([np.histogram(a[:, d], bins=5, range=(100, 500))[0] for d in range(5)])
    assert counts.min() >= 35 and counts.max() <= 45
    with pytest.raises(ValueError, match="bounds"):
        heat_problem(**SMALL, bounds=(5.0, 5.0))


def test_file_round_trip_holds_solver_trajectories(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "val.npz"
    made = make_validation(path, size=6, seed=1, bounds=(200.0, 400.0), **SMALL)
    vset = load_validation(
        path, expect_solver={**SMALL, "bounds": [200.0, 400.0], "ranks": 4, "dtype": "float32"}
    )
    assert vset.size == 6 and vset.seed == 1
    assert vset.params.dtype == np.float64 and vset.fields.dtype == np.float32
    assert vset.fields.shape == (6, 5, 5, 5)
    np.testing.assert_array_equal(vset.params, made.params)
    np.testing.assert_array_equal(vset.fields, made.fields)
    np.testing.assert_array_equal(
        vset.params, halton_params(6, 1, heat_problem(**SMALL, bounds=(200.0, 400.0)))
    )
    for k in range(6):  # the same solver the clients run
        np.testing.assert_allclose(vset.fields[k], solve(vset.params[k], **SMALL), rtol=1e-6)
    assert vset.solver == {**SMALL, "bounds": [200.0, 400.0]}
    assert not list(tmp_path.glob("sub/.*tmp"))  # written atomically, nothing left behind


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("grid", 7),
        ("steps", 5),
        ("dt", 0.02),
        ("alpha", 2.0),
        ("length", 1.0),
        ("bounds", [100.0, 500.0]),
    ],
)
def test_mismatched_solver_is_a_one_line_error(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "val.npz"
    make_validation(path, size=2, seed=0, bounds=(200.0, 400.0), compress=False, **SMALL)
    run = {**SMALL, "bounds": [200.0, 400.0], key: value}
    with pytest.raises(ValidationFileError) as err:
        load_validation(path, expect_solver=run)
    msg = str(err.value)
    assert f"solver.{key}" in msg and "\n" not in msg


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationFileError, match="no such file"):
        load_validation(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValidationFileError, match="not a breed validation set"):
        load_validation(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValidationFileError, match="not a breed validation set"):
        load_validation(tmp_path / "other.npz")


def test_cli_writes_the_requested_set(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "val.npz"
    assert (
        main(
            [
                "--output",
                str(out),
                "--size",
                "3",
                "--seed",
                "5",
                "--grid",
                "4",
                "--steps",
                "2",
                "--bounds",
                "150",
                "250",
            ]
        )
        == 0
    )
    vset = load_validation(
        out, expect_solver={"grid": 4, "steps": 2, "dt": 0.01, "bounds": [150.0, 250.0]}
    )
    assert vset.size == 3 and vset.seed == 5
    assert "wrote 3 trajectories" in capsys.readouterr().out


def test_cli_takes_the_solver_from_a_run_config(tmp_path: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"solver": {"grid": 4, "steps": 3, "dt": 0.05}, "validation": {"size": 2, "seed": 9}}
        )
    )
    out = tmp_path / "val.npz"
    assert main(["--config", str(cfg), "--output", str(out)]) == 0
    vset = load_validation(
        out, expect_solver={"grid": 4, "steps": 3, "dt": 0.05, "alpha": 1.0, "length": 10.0}
    )
    assert vset.size == 2 and vset.seed == 9
    assert main(["--config", str(cfg), "--output", str(out), "--size", "4"]) == 0
    assert load_validation(out).size == 4


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "--output"),
        (["--output", "x.npz", "--grid", "two"], "--grid"),
        (["--output", "x.npz", "--grid", "2"], "solver.grid"),
        (["--output", "x.npz", "--size", "0"], "validation.size"),
        (["--output", "x.npz", "--dt", "-1"], "solver.dt"),
        (["--output", "x.npz", "--bounds", "500", "100"], "solver.bounds"),
        (["--output", "x.npz", "--config", "missing.yaml"], "no such file"),
        (["--output", "x.npz", "--config", "run.yaml", "--grid", "8"], "--grid"),
        (["--output", "x.npz", "--bogus"], "--bogus"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("solver: {grid: 4}\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err, err
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.timeout(60)
def test_breed_make_validation_command(tmp_path: Path) -> None:
    """Through the real `breed` entry point in a subprocess: exit codes 0 and 2."""
    out = tmp_path / "val.npz"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "breed",
            "make-validation",
            "--output",
            str(out),
            "--size",
            "2",
            "--grid",
            "4",
            "--steps",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert ok.returncode == 0, ok.stderr
    assert load_validation(out).size == 2
    bad = subprocess.run(
        [sys.executable, "-m", "breed", "make-validation", "--size", "2"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
