"""Samplers shared by every run: uniform (Random), the QMC baselines, the registry, the Draw record,
and Breed's loss-deviation statistics (eqs. 4-6) against a store-everything computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from breed.config import validate
from breed.sampling import SAMPLERS, Draw, make_sampler
from breed.sampling.deviation import LossDeviation, batch_deviation
from breed.sampling.qmc import HaltonSampler, LHSSampler, SobolSampler
from breed.sampling.uniform import UniformSampler

LO, HI = 100.0, 500.0
BASELINES = [UniformSampler, HaltonSampler, LHSSampler, SobolSampler]


def take(sampler, n: int) -> np.ndarray:
    return np.array([sampler.next().params for _ in range(n)])


@pytest.mark.parametrize("cls", BASELINES)
def test_baseline_draws_are_in_bounds_and_seeded(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Sobol's balance warning for n not a power of 2
        a = take(cls(50, (LO, HI), seed=3, dim=5), 130)  # 80 draws beyond the budget
        b = take(cls(50, (LO, HI), seed=3, dim=5), 130)
        c = take(cls(50, (LO, HI), seed=4, dim=5), 130)
    assert a.shape == (130, 5)
    assert (a >= LO).all() and (a <= HI).all()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert len(np.unique(a, axis=0)) == 130


@pytest.mark.parametrize("cls", BASELINES)
def test_baseline_checkpoint_resumes_the_sequence(cls):
    ref = take(cls(20, (LO, HI), seed=7, dim=5), 45)
    first = cls(20, (LO, HI), seed=7, dim=5)
    take(first, 27)
    resumed = cls(20, (LO, HI), seed=7, dim=5)
    resumed.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(take(resumed, 18), ref[27:])
    with pytest.raises(ValueError, match="seed"):
        cls(20, (LO, HI), seed=8, dim=5).load_state_dict(first.state_dict())


def test_lhs_has_one_point_per_stratum_on_every_axis():
    n = 64
    x = take(LHSSampler(n, (LO, HI), seed=1, dim=5), n)
    strata = np.floor((x - LO) / (HI - LO) * n).astype(int)
    for axis in range(5):
        np.testing.assert_array_equal(np.sort(strata[:, axis]), np.arange(n))


def test_halton_fills_space_more_evenly_than_uniform():
    # Discrepancy is the point of the QMC baselines: count points per cell of a 2^5 grid.
    def worst_cell_gap(x):
        cells = (np.floor((x - LO) / (HI - LO) * 2).astype(int) * (2 ** np.arange(5))).sum(1)
        return np.abs(np.bincount(cells, minlength=32) - len(x) / 32).max()

    n = 512
    assert worst_cell_gap(take(HaltonSampler(n, (LO, HI), seed=0, dim=5), n)) < worst_cell_gap(
        take(UniformSampler(n, (LO, HI), seed=0, dim=5), n)
    )


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_make_sampler_from_validated_config(name):
    cfg = validate(
        {
            "seed": 5,
            "sampler": {"name": name},
            "study": {"simulations": 12},
            "solver": {"bounds": [10.0, 20.0], "steps": 7},
        }
    )
    s = make_sampler(cfg)
    # the validation design is the validation set's: it takes that seed, not the run's
    assert s.name == name and s.budget == 12
    assert s.seed == (cfg["validation"]["seed"] if name == "validation" else 5)
    x = take(s, 12)
    assert (x >= 10).all() and (x <= 20).all()


def test_make_sampler_rejects_bad_input():
    cfg = validate({"sampler": {"name": "breed"}})
    cfg["sampler"]["name"] = "annealing"
    with pytest.raises(ValueError, match="unknown sampler 'annealing'"):
        make_sampler(cfg)
    with pytest.raises(ValueError, match="validated config"):
        make_sampler({"sampler": {"name": "uniform"}})
    with pytest.raises(ValueError, match="lower < upper"):
        UniformSampler(5, (3.0, 3.0), dim=5)
    with pytest.raises(ValueError, match="need the dimension"):
        UniformSampler(5, (1.0, 3.0))
    with pytest.raises(ValueError, match="study.simulations"):
        UniformSampler(0, (1.0, 3.0))


def test_draw_is_an_immutable_private_copy():
    src = np.array([1.0, 2, 3, 4, 5])
    d = Draw(params=src)
    src[0] = 99.0
    assert d.params[0] == 1.0
    with pytest.raises(ValueError):
        d.params[1] = 0.0
    with pytest.raises(AttributeError):
        d.source = "proposal"


# -- loss-deviation statistics (eqs. 4-6) -----------------------------------------------------


def brute_force(batches, steps: int):
    """Store every delta, then average: the definition of eqs. 4-6, without running means."""
    values: dict[tuple[int, int], list[float]] = {}
    stamp: dict[int, int] = {}
    for b, (ids, ts, losses) in enumerate(batches):
        finite = [x for x in losses if np.isfinite(x)]
        mu = sum(finite) / len(finite)
        sd = (sum((x - mu) ** 2 for x in finite) / len(finite)) ** 0.5
        seen_here = set()
        for j, t, x in zip(ids.tolist(), ts.tolist(), losses.tolist(), strict=True):
            if not np.isfinite(x) or (j, t) in seen_here:
                continue  # a duplicate in one batch counts once: I_jt is a set of batches
            seen_here.add((j, t))
            values.setdefault((j, t), []).append(max(x - mu, 0.0) / sd if sd > 0 else 0.0)
        for j in {j for j, _ in seen_here}:
            if all((j, t) in values for t in range(steps + 1)):
                stamp[j] = b
    q = {j: np.mean([np.mean(values[j, t]) for t in range(steps + 1)]) for j in stamp}
    return values, q, stamp


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_deviation_statistics_match_store_everything(seed):
    rng = np.random.default_rng(seed)
    sims, steps, batch = 7, 4, 12
    stats = LossDeviation(steps, capacity=2)  # forces the O(S*T) arrays to grow
    batches = []
    for _ in range(40):
        ids = rng.integers(0, sims, batch)
        ts = rng.integers(0, steps + 1, batch)
        losses = rng.gamma(2.0, 1.0, batch)
        ids[1], ts[1], losses[1] = ids[0], ts[0], losses[0]  # an in-batch duplicate
        if rng.random() < 0.2:
            losses[3] = np.nan  # a diverged sample is ignored, not folded in
        batches.append((ids, ts, losses))
        delta = stats.update(ids, ts, losses)
        mu, sd = np.nanmean(losses), np.nanstd(losses)
        np.testing.assert_allclose(delta, np.maximum(losses - mu, 0) / sd)
    values, q, stamp = brute_force(batches, steps)
    for (j, t), vals in values.items():
        assert stats.count[j, t] == len(vals)
        assert stats.mean[j, t] == pytest.approx(np.mean(vals), rel=1e-12, abs=1e-12)
    assert sorted(stats.eligible().tolist()) == sorted(q)
    got = stats.quality(np.arange(sims + 2))
    for j in range(sims + 2):
        if j in q:
            assert got[j] == pytest.approx(q[j], rel=1e-12)
        else:
            assert np.isnan(got[j])
    by_update = sorted(stamp, key=lambda j: (stamp[j], j))
    for n in range(1, sims + 1):
        assert stats.window(n).tolist() == by_update[-n:]
    # Memory O(S*T): rows grow by doubling with the largest sim id, never with the batches.
    assert stats.mean.shape[1] == steps + 1 and stats.mean.shape[0] < 2 * sims


def test_only_simulations_with_every_step_seen_get_a_quality():
    stats = LossDeviation(steps=2)
    stats.update([0, 0, 1, 1], [0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0])
    assert stats.eligible().size == 0
    stats.update([0, 1], [2, 0], [5.0, 1.0])
    assert stats.eligible().tolist() == [0]
    stats.set_steps(1, 2)  # sim 1 only had t = 0..1: it is complete
    assert stats.eligible().tolist() == [0, 1]


def test_torch_tensors_are_accepted():
    import torch

    stats = LossDeviation(steps=1)
    losses = torch.tensor([1.0, 3.0], requires_grad=True) * 2  # straight from the trainer
    delta = stats.update(torch.tensor([0, 0]), torch.tensor([0, 1]), losses)
    np.testing.assert_allclose(delta, [0.0, 1.0])
    assert stats.quality([0])[0] == pytest.approx(0.5)


def test_constant_batch_has_zero_deviation():
    delta, mu, sigma = batch_deviation(np.full(5, 0.3))
    assert sigma == 0 and (delta == 0).all()


def test_deviation_checkpoint_roundtrip():
    rng = np.random.default_rng(0)
    a = LossDeviation(3)
    for _ in range(10):
        a.update(rng.integers(0, 5, 8), rng.integers(0, 4, 8), rng.random(8))
    b = LossDeviation(3)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.quality(range(5)), b.quality(range(5)))
    assert a.window(5).tolist() == b.window(5).tolist()


@pytest.mark.parametrize(
    "args,match",
    [
        (([0, 1], [0], [1.0, 2.0]), "differ in length"),
        (([0, 1], [0, 9], [1.0, 2.0]), "step 9 outside 0..3"),
        (([0, -1], [0, 1], [1.0, 2.0]), "negative sim id"),
        (([0.5, 1], [0, 1], [1.0, 2.0]), "sim_ids must be integers"),
    ],
)
def test_deviation_rejects_bad_batches(args, match):
    with pytest.raises(ValueError, match=match):
        LossDeviation(3).update(*args)
