"""Problems: descriptions checked up front, a user's solver (a standalone script started by
command) end to end through the local launcher, and a client that breaks its problem told at
once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from breed.config import ConfigError, validate
from breed.launcher import runner
from breed.problems import problem_of

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "examples" / "byos" / "toy.yaml"


def toy(**changes) -> dict:
    cfg = yaml.safe_load(TOY.read_text())
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return cfg


def test_the_heat_preset_is_the_structure_a_user_writes() -> None:
    p = problem_of(validate({}))
    assert p.name == "heat2d" and p.names == ["T0", "T1", "T2", "T3", "T4"] and p.dim == 5
    assert [f.shape for f in p.fields] == [(64, 64)] and p.steps == 100
    assert p.fields[0].range == (100.0, 500.0) and p.client.command[1:] == (
        "-m",
        "breed.problems.heat2d_client",
    )
    np.testing.assert_array_equal(p.lower, np.full(5, 100.0))


def test_a_user_problem_parses_with_log_axes() -> None:
    p = problem_of(validate(toy()))
    assert p.names == ["a", "k", "w"] and p.sample_size == 2 * 24 * 40
    assert list(p.log_mask) == [False, False, True]
    z = p.to_sampling([1.0, 1.0, 1.0])
    assert z[2] == 0.0 and np.allclose(p.from_sampling(z), [1.0, 1.0, 1.0])
    assert p.lower[2] == -1.0 and p.upper[2] == 1.0  # log10 of 0.1 .. 10
    assert p.fingerprint() != problem_of(validate(toy(**{"problem.steps": 21}))).fingerprint()


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"problem.parameters": []}, "problem.parameters"),
        ({"problem.parameters.0.low": 3.0}, "problem.parameters.0.low"),
        ({"problem.parameters.2.low": -1.0}, "problem.parameters.2.low"),  # log scale, low <= 0
        ({"problem.fields.0.shape": [24, 0]}, "problem.fields.0.shape"),
        ({"problem.fields.1.dtype": "int8"}, "problem.fields.1.dtype"),
        ({"problem.fields.1.name": "u"}, "problem.fields"),
        ({"problem.client.command": ["no-such-solver-binary", "-x"]}, "problem.client.command"),
        ({"problem.client.command": ["./missing/solver.py"]}, "problem.client.command"),
        ({"problem.steps": 0}, "problem.steps"),
        ({"problem.client.env": {"BREED_TOKEN": "x"}}, "problem.client.env"),
        ({"problem": "no-such-preset"}, "problem"),
    ],
)
def test_bad_problem_descriptions_are_one_line_exit_2(tmp_path, capsys, changes, key) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(toy(**changes)))
    out = tmp_path / "run"
    assert runner.main([str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"breed run: {key}"), err
    assert not out.exists()


def test_problem_errors_name_the_key_in_validate() -> None:
    with pytest.raises(ConfigError, match=r"^problem\.fields\.0\.range"):
        validate(toy(**{"problem.fields.0.range": [2.0, -2.0]}))


def run_toy(tmp_path: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "breed", "run", str(TOY), "--output", str(tmp_path / "run"), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_users_solver_runs_end_to_end_with_breed_steering(tmp_path: Path) -> None:
    """The README's bring-your-own-solver command exactly as written, in a copy of the
    examples: its validation set collected by its own client, Breed steering, two fields (one
    scaled from the first samples)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    breed = Path(sys.executable).with_name("breed")
    proc = subprocess.run(
        [str(breed), "run", "examples/byos/toy.yaml", "--output", "results/toy"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "results" / "toy"
    # the collection run is a step of the run: one final line, the run's own
    lines = proc.stderr.splitlines()
    assert [x for x in lines if "finished in" in x] == lines[-1:]
    assert lines[-1].endswith(f"results in {Path('results/toy')}")
    rows = (run / "samples.csv").read_text().splitlines()
    assert rows[0].startswith("sim_id,a,k,w,source,")
    assert sum(",done," in r for r in rows[1:]) == 40
    assert any(",proposal," in r for r in rows[1:])  # Breed steered some simulations
    summary = json.loads((run / "summary.json").read_text())
    assert summary["problem"] == "toy" and summary["final_validation"]["val_mse"] < 1.0
    from breed.learning.validation import halton_params, load_validation

    problem = problem_of(yaml.safe_load((run / "config.resolved.yaml").read_text()))
    vset = load_validation(run / "validation.npz", expect_problem=problem.identity())
    assert vset.fields.shape == (8, 21, 2 * 24 * 40)
    assert not list(run.glob("validation.npz.collect*"))  # the collection run is cleaned up
    np.testing.assert_allclose(vset.params, halton_params(8, 12345, problem), rtol=1e-12)
    sys.path.insert(0, str(TOY.parent))
    import toy_client

    want = toy_client.fields(
        dict(zip(problem.names, vset.params[3], strict=True)), 5, 20, np.arange(24)
    )
    np.testing.assert_allclose(
        vset.fields[3, 5], np.concatenate([want["u"].ravel(), want["v"].ravel()]), rtol=1e-6
    )  # float32 on the wire


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_a_users_solver_with_two_mpi_ranks_per_client(tmp_path: Path) -> None:
    proc = run_toy(tmp_path, "--set", "problem.client.ranks=2", "--set", "study.simulations=24")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["sims_done"] == 24
    assert summary["messages"]["blocks"] == 24 * 21 * 2 * 2  # sims x steps x fields x ranks
    assert summary["messages"]["samples"] == 24 * 21


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_client_that_breaks_the_problem_is_told_at_once(tmp_path: Path) -> None:
    """Simulation 0's first attempt sends a 24 x 39 field: its client gets a REJECT and exits
    non-zero with one line in under 5 s; the server counts it; the run completes."""
    cfg = toy(
        **{
            "problem.client.command": [
                "{python}",
                str(ROOT / "tests" / "data" / "bad_shape_client.py"),
            ],
            "launcher.max_jobs": 1,
            "launcher.simulation_timeout": 300.0,
            "sampler.name": "uniform",
            "validation.file": None,
        }
    )
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "breed", "run", str(path), "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 120  # never a wait for simulation_timeout (300 s)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rejected"]["bad_shape"] >= 1 and summary["messages"]["refused_sims"] >= 1
    jobs = (run / "jobs.csv").read_text().splitlines()
    failed = [j for j in jobs if ",failed," in j]
    assert failed and all(",3," in j for j in failed)  # the client's own exit code
    log = run / "logs" / (failed[0].split(",")[0] + ".log")
    lines = log.read_text().strip().splitlines()
    told = float(lines[-2].split("told after ")[1].split()[0])
    assert told < 5.0, lines  # seconds from its first bad step to the one-line error
    print(f"\nthe client was told {told:.3f} s after its first bad step")
    assert lines[-1].startswith(
        "bad_shape_client: server rejected the data of simulation 0: field v: 24 rows x 39"
    ), lines
    row0 = next(r for r in (run / "samples.csv").read_text().splitlines()[1:] if r.startswith("0,"))
    assert ",done," in row0 and ",2," in row0  # run again at once, with the same lambda
