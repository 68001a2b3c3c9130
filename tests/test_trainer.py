"""Trainer: normalisation, seeded init, per-sample losses, learning, validation metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from breed.config import validate
from breed.learning.buffer import Batch
from breed.learning.reservoir import Reservoir
from breed.learning.trainer import (
    Normalisation,
    Trainer,
    load_model,
    resolve_device,
    time_ranges,
    validation_metrics,
)
from breed.learning.validation import ValidationSet, heat_problem
from breed.problems.heat2d_solver import solve

GRID, STEPS = 6, 10


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: a second intra-op thread only spins against the other tests' processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**model: object) -> dict:
    return validate(
        {
            "seed": 7,
            "solver": {"grid": GRID, "steps": STEPS},
            "model": {"hidden": 16, "layers": 2, "device": "cpu", **model},
        }
    )


def trajectories(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    params = np.random.default_rng(seed).uniform(100.0, 500.0, size=(n, 5))
    fields = np.stack([solve(p, grid=GRID, steps=STEPS) for p in params]).astype(np.float32)
    return params, fields


def batch_of(norm: Normalisation, params: np.ndarray, fields: np.ndarray) -> Batch:
    """Every (trajectory, step) of ``fields`` as one normalised batch."""
    n, t1 = fields.shape[:2]
    return Batch(
        inputs=norm.inputs(np.repeat(params, t1, axis=0), np.tile(np.arange(t1), n)),
        targets=norm.field(fields.reshape(n * t1, -1)),
        sim_ids=np.repeat(np.arange(n), t1),
        steps=np.tile(np.arange(t1), n),
    )


def heat_norm(steps: int, grid: int = 4) -> Normalisation:
    """The heat preset's units: λ and every temperature scaled by the bounds [100, 500]."""
    return Normalisation.from_problem(heat_problem(grid=grid, steps=steps, bounds=(100.0, 500.0)))


def test_normalisation_as_documented_and_round_trip() -> None:
    norm = heat_norm(100)
    assert norm.frozen and norm.single() == (300.0, 200.0)
    x = norm.inputs(np.array([[100.0, 500.0, 300.0, 200.0, 450.0]]), np.array([50]))
    np.testing.assert_allclose(x, [[-1.0, 1.0, 0.0, -0.5, 0.75, 0.5]])
    assert x.dtype == np.float32
    u = np.random.default_rng(0).uniform(100.0, 500.0, size=(3, 16))  # 3 samples, 4x4
    v = norm.field(u)
    assert v.dtype == np.float32 and v.min() >= -1.0 and v.max() <= 1.0
    np.testing.assert_allclose(norm.unfield(v), u, rtol=1e-6)
    assert Normalisation.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="below"):
        Normalisation(np.full(5, 5.0), np.full(5, 5.0), np.zeros(5, bool), 10, [16])


def test_seed_fixes_the_initial_weights_and_spares_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = Trainer(config(), seed=3), Trainer(config(), seed=3), Trainer(config(), seed=4)
    assert torch.equal(torch.rand(3), expected)  # building trainers did not consume it
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pc)
        for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True)
    )
    assert Trainer(config()).seed == 7  # from the config when not given


def test_architecture_is_the_papers() -> None:
    tr = Trainer(config(hidden=32, layers=3))
    linears = [m for m in tr.model if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (6, 32),
        (32, 32),
        (32, 32),
        (32, GRID * GRID),
    ]
    assert sum(isinstance(m, torch.nn.ReLU) for m in tr.model) == 3
    assert isinstance(tr.optimizer, torch.optim.Adam)
    assert tr.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


def test_per_sample_losses_match_a_manual_computation() -> None:
    tr = Trainer(config())
    params, fields = trajectories(2)
    batch = batch_of(tr.normalisation, params, fields)
    with torch.no_grad():  # the loss is that of the weights before the update
        pred = tr.model(torch.from_numpy(batch.inputs)).double().numpy()
    manual = ((pred - batch.targets.astype(np.float64)) ** 2).mean(axis=1)
    before = [p.detach().clone() for p in tr.model.parameters()]
    result = tr.step(batch)
    assert result.losses.dtype == np.float64 and result.losses.shape == (len(batch),)
    np.testing.assert_allclose(result.losses, manual, rtol=1e-5)
    assert result.loss == pytest.approx(manual.mean(), rel=1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, tr.model.parameters(), strict=True))
    assert tr.iteration == 1


def test_loss_decreases_on_a_few_fixed_trajectories() -> None:
    """The whole data path: solver fields -> reservoir (normalising) -> trainer."""
    tr = Trainer(config(hidden=32, layers=2, lr=3e-3))
    params, fields = trajectories(4, seed=1)
    buf = Reservoir(
        capacity=64, watermark=16, field_size=GRID * GRID, seed=0, normalisation=tr.normalisation
    )
    for k in range(len(params)):
        for t in range(STEPS + 1):
            assert buf.offer(params[k], t, fields[k, t], k)
    vset = ValidationSet(params, fields, {}, 0)
    start = tr.evaluate(vset)["val_mse"]
    first = tr.step(buf.sample_batch(16)).loss
    for _ in range(400):
        last = tr.step(buf.sample_batch(16)).loss
    end = tr.evaluate(vset)["val_mse"]
    assert last < 0.1 * first and end < 0.1 * start, (first, last, start, end)


def numpy_forward(tr: Trainer, x: np.ndarray) -> np.ndarray:
    """The MLP evaluated with numpy from the trainer's weights (float64)."""
    linears = [m for m in tr.model if isinstance(m, torch.nn.Linear)]
    h = x.astype(np.float64)
    for k, lin in enumerate(linears):
        h = h @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        if k < len(linears) - 1:
            h = np.maximum(h, 0.0)
    return h


@pytest.mark.parametrize("chunk", [1 << 22, 50, 1])
def test_evaluate_matches_a_direct_numpy_computation(chunk: int) -> None:
    tr = Trainer(config())
    for _ in range(5):  # away from the initial weights
        tr.step(batch_of(tr.normalisation, *trajectories(2, seed=9)))
    params, fields = trajectories(5, seed=2)
    norm = tr.normalisation
    err = np.empty((5, STEPS + 1))
    for k in range(5):
        x = norm.inputs(np.repeat(params[k : k + 1], STEPS + 1, axis=0), np.arange(STEPS + 1))
        target = (fields[k].reshape(STEPS + 1, -1).astype(np.float64) - 300.0) / 200.0
        err[k] = ((numpy_forward(tr, x) - target) ** 2).mean(axis=1)
    traj = err.mean(axis=1)
    got = tr.evaluate(ValidationSet(params, fields, {}, 0), chunk_elements=chunk)
    expected = {
        "val_mse": err.mean(),
        "traj_err_p99": np.quantile(traj, 0.99),
        "traj_err_max": traj.max(),
        "val_mse_no_t0": err[:, 1:].mean(),
        "val_mse_t0": err[:, 0].mean(),
        "val_mse_t1_10": err[:, 1:2].mean(),  # T=10: ranges 1-1, 2-5, 6-10
        "val_mse_t11_50": err[:, 2:6].mean(),
        "val_mse_t51_100": err[:, 6:].mean(),
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-4), key


def test_time_ranges_scale_with_the_number_of_steps() -> None:
    assert time_ranges(100) == {
        "t0": (0, 0),
        "t1_10": (1, 10),
        "t11_50": (11, 50),
        "t51_100": (51, 100),
    }
    assert time_ranges(20) == {
        "t0": (0, 0),
        "t1_10": (1, 2),
        "t11_50": (3, 10),
        "t51_100": (11, 20),
    }
    assert time_ranges(1) == {"t0": (0, 0), "t1_10": (1, 1)}
    metrics = validation_metrics(np.array([[1.0, 3.0], [2.0, 4.0]]))
    assert metrics["val_mse_t11_50"] is None and metrics["val_mse_t51_100"] is None
    assert metrics["val_mse"] == 2.5 and metrics["val_mse_no_t0"] == 3.5
    assert metrics["traj_err_max"] == 3.0


def test_evaluate_rejects_a_set_of_another_shape() -> None:
    tr = Trainer(config())
    params, fields = trajectories(2)
    with pytest.raises(ValueError, match="steps"):
        tr.evaluate(ValidationSet(params, fields[:, :5], {}, 0))


def test_state_dict_resumes_training_exactly() -> None:
    batches = [batch_of(heat_norm(STEPS, GRID), *trajectories(2, seed=s)) for s in range(4)]
    a = Trainer(config())
    for b in batches[:2]:
        a.step(b)
    b_ = Trainer(config(), seed=99)  # different init, overwritten by the checkpoint
    b_.load_state_dict(a.state_dict())
    assert b_.iteration == 2
    for batch in batches[2:]:
        np.testing.assert_array_equal(a.step(batch).losses, b_.step(batch).losses)


def test_saved_model_predicts_kelvin(tmp_path) -> None:
    tr = Trainer(config())
    tr.step(batch_of(tr.normalisation, *trajectories(2)))
    tr.save_model(tmp_path / "model.pt")
    model = load_model(tmp_path / "model.pt")
    params = np.array([[100.0, 200.0, 300.0, 400.0, 500.0], [150.0] * 5])
    out = model.predict(params, np.array([0, 10]))
    assert out.shape == (2, GRID, GRID) and out.dtype == np.float64
    np.testing.assert_allclose(out, tr.predict(params, np.array([0, 10])))
    x = tr.normalisation.inputs(params, np.array([0, 10]))
    np.testing.assert_allclose(out.reshape(2, -1), numpy_forward(tr, x) * 200.0 + 300.0, rtol=1e-5)
    assert model.predict(params[0], 3).shape == (GRID, GRID)
    with pytest.raises(ValueError, match="not a breed model"):
        torch.save({"x": 1}, tmp_path / "other.pt")
        load_model(tmp_path / "other.pt")


def test_raw_batch_is_refused() -> None:
    tr = Trainer(config())
    raw = Batch(
        np.zeros((2, 6), np.float32),
        np.zeros((2, GRID * GRID), np.float32),
        np.zeros(2, np.int64),
        np.zeros(2, np.int64),
        normalised=False,
    )
    with pytest.raises(ValueError, match="not normalised"):
        tr.step(raw)


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="model.device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="model.device"):
        resolve_device("cuda:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            resolve_device("cuda:0")


@pytest.mark.timeout(60)
def test_ddp_wrapping_in_a_one_rank_group(tmp_path) -> None:
    """The DDP path of _build and step (gloo, one rank); multi-rank runs are the server's."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        tr = Trainer(config(), ddp=True)
        assert isinstance(tr.net, torch.nn.parallel.DistributedDataParallel)
        ref = Trainer(config(), ddp=False)
        batch = batch_of(tr.normalisation, *trajectories(2))
        for _ in range(3):
            np.testing.assert_allclose(tr.step(batch).losses, ref.step(batch).losses, rtol=1e-6)
    finally:
        dist.destroy_process_group()


DDP_RANK = """
import sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from test_trainer import GRID, STEPS, batch_of, config, trajectories
from breed.learning.trainer import Trainer

rank = int(sys.argv[1])
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="file://{store}", rank=rank, world_size=2)
tr = Trainer(config())
assert isinstance(tr.net, torch.nn.parallel.DistributedDataParallel)
a, b, c = (batch_of(tr.normalisation, *trajectories(1, seed=s)) for s in (1, 2, 3))
b = type(b)(b.inputs[:5], b.targets[:5], b.sim_ids[:5], b.steps[:5])  # 11 and 5 samples
# iteration 1: both ranks hold data, weighted by their share of the 16 samples
tr.step(a if rank == 0 else b, weight=2 * (11 if rank == 0 else 5) / 16)
# iteration 2: rank 1 ran dry and joins the all-reduce with an idle step
tr.step(c, weight=2.0) if rank == 0 else tr.idle_step()
np.savez({out!r}.format(rank), *[p.detach().numpy() for p in tr.model.parameters()])
dist.destroy_process_group()
"""


@pytest.mark.timeout(120)
def test_two_rank_ddp_equals_one_process_on_the_global_batch(tmp_path) -> None:
    """Real DDP over gloo in two processes: weighted steps and an idle rank give exactly the
    single-process update on the union of the ranks' batches (ranks stay in sync)."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "rank.py"
    script.write_text(
        DDP_RANK.format(
            tests=str(Path(__file__).parent),
            store=tmp_path / "store",
            out=str(tmp_path / "rank{}.npz"),
        )
    )
    procs = [
        subprocess.Popen([sys.executable, str(script), str(r)], stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    try:
        errs = [p.communicate(timeout=100)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [p.returncode for p in procs] == [0, 0], errs
    ref = Trainer(config())
    a, b, c = (batch_of(ref.normalisation, *trajectories(1, seed=s)) for s in (1, 2, 3))
    ref.step(
        Batch(
            np.concatenate([a.inputs, b.inputs[:5]]),
            np.concatenate([a.targets, b.targets[:5]]),
            np.concatenate([a.sim_ids, b.sim_ids[:5]]),
            np.concatenate([a.steps, b.steps[:5]]),
        )
    )
    ref.step(c)
    expected = [p.detach().numpy() for p in ref.model.parameters()]
    for r in (0, 1):
        with np.load(tmp_path / f"rank{r}.npz") as got:
            for k, want in enumerate(expected):
                np.testing.assert_allclose(got[f"arr_{k}"], want, rtol=1e-5, atol=1e-6)


def user_model(n_inputs: int, output_shape: tuple[int, ...], width: int = 4) -> torch.nn.Module:
    """A user's surrogate (``model.factory``): any module from (d+1) inputs to one sample."""
    return torch.nn.Sequential(
        torch.nn.Linear(n_inputs, width), torch.nn.Tanh(), torch.nn.Linear(width, output_shape[0])
    )


def not_a_model(n_inputs: int, output_shape: tuple[int, ...]) -> object:
    return object()


def wrong_outputs(n_inputs: int, output_shape: tuple[int, ...]) -> torch.nn.Module:
    return torch.nn.Linear(n_inputs, output_shape[0] + 1)


def test_a_users_model_factory_is_trained_saved_and_loaded(tmp_path) -> None:
    tr = Trainer(config(factory="test_trainer:user_model", options={"width": 8}))
    assert [m.out_features for m in tr.model if isinstance(m, torch.nn.Linear)] == [8, GRID * GRID]
    batch = batch_of(tr.normalisation, *trajectories(2))
    first = tr.step(batch).losses.mean()
    for _ in range(20):
        last = tr.step(batch).losses.mean()
    assert last < first  # it trains
    tr.save_model(tmp_path / "model.pt")
    params = np.array([[100.0, 200.0, 300.0, 400.0, 500.0]])
    np.testing.assert_allclose(
        load_model(tmp_path / "model.pt").predict(params, np.array([4])),
        tr.predict(params, np.array([4])),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("test_trainer:not_a_model", "not a torch.nn.Module"),
        ("test_trainer:wrong_outputs", "outputs"),
        ("no_such_package.models:net", "cannot import"),
        ("test_trainer:missing", "has no 'missing'"),
        ("test_trainer", "package.module:callable"),
    ],
)
def test_a_bad_model_factory_is_a_one_line_error(factory: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        Trainer(config(factory=factory))
    assert "\n" not in str(err.value)
