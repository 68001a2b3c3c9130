"""The C and Fortran clients (clients/, built from source with CMake in a temporary
directory): their heat solvers equal breed's Python solver to 1e-10 (the C one serially and
on 2 MPI ranks), ``breed run`` with each through the local launcher with Breed steering, a
C client killed mid-stream retried like a Python one, and a C client with a wrong token told
so in one line. Opt-in: ``pytest -m compiled``."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conformance.conftest import ROOT, build_clients
from conformance.harness import ScriptedServer
from conformance.test_conformance import one_line, run_client
from faultkit import RunUnderTest, audit, samples_csv, signal_group, stop_mid_stream

from breed.problems.heat2d_solver import solve

pytestmark = pytest.mark.compiled
LAM = [300.0, 100.0, 500.0, 200.0, 400.0]
NAMES = ("T0", "T1", "T2", "T3", "T4")


def heat_problem(
    command: list[str],
    grid: int,
    steps: int,
    ranks: int = 1,
    dtype: str = "float64",
    length: float = 10.0,
) -> dict:
    """The heat preset's problem, written out as a user's (what the C client is told)."""
    return {
        "name": "heat2d_c",
        "steps": steps,
        "statistic": "std",
        "parameters": [{"name": n, "low": 100.0, "high": 500.0} for n in NAMES],
        "fields": [{"name": "u", "shape": [grid, grid], "range": [100.0, 500.0], "dtype": dtype}],
        "client": {"command": command, "ranks": ranks},
        "settings": {"grid": grid, "steps": steps, "dt": 0.01, "alpha": 1.0, "length": length},
    }


def trajectory(srv: ScriptedServer, grid: int, steps: int) -> np.ndarray:
    """Sim 0's field reassembled from the row blocks every rank sent."""
    out = np.full((steps + 1, grid, grid), np.nan)
    for m in srv.steps:
        out[m.step, m.row_offset : m.row_offset + m.rows] = m.block
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """libbreed_client, its Fortran module and the examples, built from source here."""
    return build_clients(tmp_path_factory.mktemp("clients-build"))


@pytest.fixture
def scripted(token):
    servers: list[ScriptedServer] = []

    def start(body: dict) -> ScriptedServer:
        body = {k: v for k, v in body.items() if k != "client"}
        srv = ScriptedServer(token, [("assign", {"params": LAM, **body}), ("stop",)])
        srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("exe", "ranks"), [("c/heat2d_c", 1), ("c/heat2d_c", 2), ("fortran/heat2d_f", 1)]
)
def test_compiled_heat_solvers_equal_the_python_solver(built, scripted, token, exe, ranks) -> None:
    grid, steps = 24, 20
    srv = scripted(heat_problem([], grid, steps, length=2.0))
    cmd = [str(built / exe)]
    if ranks > 1:
        cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), *cmd]
    code, err, _ = run_client(cmd, srv.address, token, timeout=120)
    assert code == 0, err
    assert {m.rank for m in srv.steps} == set(range(ranks))
    want = solve(LAM, grid=grid, steps=steps, dt=0.01, alpha=1.0, length=2.0)
    got = trajectory(srv, grid, steps)
    err_max = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
    print(f"\n{exe} on {ranks} rank(s): max relative difference {err_max:.2e}")
    assert err_max < 1e-10


@pytest.mark.timeout(300)
def test_c_client_batches_steps_on_2_mpi_ranks(built, scripted, token) -> None:
    """ASSIGN offering batch (PROTOCOL 6.1), steps 4 with a linger that never expires: each
    rank sends its 21 steps as STEPS of 4, 4, 4, 4, 4 and 1 (flushed by FINISH), and the
    trajectory is still the Python solver's."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec")
    grid, steps = 24, 20
    srv = scripted(
        {**heat_problem([], grid, steps, length=2.0), "batch": {"steps": 4, "linger": 600}}
    )
    code, err, _ = run_client(
        [mpiexec, "-n", "2", str(built / "c/heat2d_c")], srv.address, token, timeout=120
    )
    assert code == 0, err
    assert sorted(srv.step_messages) == [1, 1] + [4] * 10
    assert [(f.rank, f.steps_sent) for f in sorted(srv.finishes, key=lambda f: f.rank)] == [
        (0, steps + 1),
        (1, steps + 1),
    ]
    want = solve(LAM, grid=grid, steps=steps, dt=0.01, alpha=1.0, length=2.0)
    got = trajectory(srv, grid, steps)
    assert float(np.max(np.abs(got - want)) / np.max(np.abs(want))) < 1e-10


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "batch", [{"steps": 0, "linger": 1}, {"steps": 2.5, "linger": 1}, {"steps": 2}, [2, 1]]
)
def test_c_client_refuses_a_malformed_batch_in_one_line(built, scripted, token, batch) -> None:
    srv = scripted({**heat_problem([], 8, 2), "batch": batch})
    code, err, _ = run_client([str(built / "c/heat2d_c")], srv.address, token)
    assert code == 1
    one_line(err, "heat2d_c: error:", "malformed ASSIGN", "batch")
    assert not srv.steps


@pytest.mark.timeout(60)
def test_c_client_with_a_wrong_token_is_rejected_in_one_line(built, scripted) -> None:
    srv = scripted(heat_problem([], 8, 2))
    code, err, _ = run_client([str(built / "c/heat2d_c")], srv.address, b"\x01" * 32)
    assert code == 1
    one_line(err, "heat2d_c: error:", "run-token check")
    assert srv.undecodable == 1 and not srv.steps


def breed_run(tmp_path: Path, cfg: dict, timeout: float = 400) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "breed", "run", str(path), "--output", str(tmp_path / "run")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / "run"


def check_steered_heat_run(run: Path, cfg: dict, sims: int, steered: bool) -> None:
    """Every simulation done, Breed's proposal used where asked, and the validation set the
    compiled client made equal to the Python solver's."""
    summary = json.loads((run / "summary.json").read_text())
    assert summary["sims_done"] == sims and summary["problem"] == "heat2d_c"
    rows = samples_csv(run)
    assert sum(r["status"] == "done" for r in rows) == sims
    proposals = sum(r["source"] == "proposal" for r in rows)
    print(f"\n{proposals} of {sims} simulations drawn from Breed's proposal")
    if steered:
        assert proposals > 0
    from breed.learning.validation import load_validation

    vset = load_validation(run / "validation.npz")
    s = cfg["problem"]["settings"]
    for k in range(len(vset.params)):
        want = solve(
            vset.params[k],
            grid=s["grid"],
            steps=s["steps"],
            dt=s["dt"],
            alpha=s["alpha"],
            length=s["length"],
        )
        np.testing.assert_allclose(vset.fields[k].reshape(want.shape), want, rtol=1e-6)


def readme_block(after: str) -> str:
    """The first ```bash block of README.md after the line containing ``after``."""
    text = (ROOT / "README.md").read_text()
    rest = text[text.index(after) :]
    return rest.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(600)
def test_readme_c_client_commands_as_written(tmp_path) -> None:
    """The README's three commands, exactly as written, in a copy of the repository's clients
    (its own CMake build): the C heat solver on 2 MPI ranks per client, Breed steering."""
    block = readme_block("three commands from the")
    assert block.count("\n") == 3 and "cmake -S clients" in block and "breed run" in block
    shutil.copytree(ROOT / "clients", tmp_path / "clients", ignore=shutil.ignore_patterns("build"))
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cfg = yaml.safe_load((tmp_path / "clients/c/examples/heat2d_c.yaml").read_text())
    # deterministic mode (lag 4): Breed resamples before the later simulations are bound
    check_steered_heat_run(tmp_path / "results/heat-c", cfg, cfg["study"]["simulations"], True)


@pytest.mark.timeout(450)
def test_breed_run_streams_from_the_fortran_client(built, tmp_path) -> None:
    """The C example's config with the Fortran client built here (serial): every simulation
    done, its samples equal to the Python solver's. A serial client may finish the budget
    before Breed resamples (timing), so steering is not asserted here."""
    cfg = yaml.safe_load((ROOT / "clients/c/examples/heat2d_c.yaml").read_text())
    cfg["problem"]["client"] = {"command": [str(built / "fortran/heat2d_f")], "ranks": 1}
    cfg["study"]["simulations"] = 16
    check_steered_heat_run(breed_run(tmp_path, cfg), cfg, 16, False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_c_client_killed_mid_stream_is_retried(built, tmp_path, sig) -> None:
    """As tests/test_faults.py does with the Python client: the killed simulation runs again
    with the same λ, nothing lost, nothing trained on twice."""
    # 128² (128 KiB a step): the C solver sends a 32² simulation whole in one 2 ms slice, into
    # the two high-water marks and the kernel's socket buffers, so none was caught mid-stream
    steps = 300
    run = RunUnderTest(tmp_path, {"problem": heat_problem([str(built / "c/heat2d_c")], 128, steps)})
    try:
        proc = run.start()
        job, sim, have = stop_mid_stream(run, steps)
        signal_group(run.job_pgid(job), sig)
        signal_group(run.job_pgid(job), signal.SIGCONT)  # SIGTERM: the client aborts, 143
        assert run.finish(proc) == 0, run.stderr()
        rows = samples_csv(run.dir)
        assert sum(r["status"] == "done" for r in rows) == 8
        a = audit(run.dir)
        assert a["lost"] == 0 and a["extra"] == 0 and a["duplicated_puts"] == 0, a
        row = next(r for r in rows if int(r["sim_id"]) == sim)
        assert int(row["attempts"]) == 2 and row["status"] == "done"
        killed = next(r for r in run.jobs() if r["name"] == job)
        assert killed["state"] == "failed"
        assert killed["exit_code"] == str(-sig if sig == signal.SIGKILL else 128 + sig)
    finally:
        run.kill_everything()
