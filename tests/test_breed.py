"""Breed (paper Section 3): steering towards high loss deviation, mixing, bounds, sigma shrink,
late binding, determinism and checkpoints. Driven by a synthetic training loop in-process."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from breed.sampling.breed import (
    BreedSampler,
    effective_sample_fraction,
    gaussian_children,
    log_mixture_density,
    mixing_ratio,
)
from breed.sampling.uniform import UniformSampler

LO, HI = 100.0, 500.0
CORNER = 300.0  # the hard region [300, 500]^5: 1/32 of the volume


def in_corner(x: np.ndarray) -> np.ndarray:
    return (np.atleast_2d(x) > CORNER).all(axis=1)


class SyntheticTraining:
    """Drives a sampler like the server does: hands out ``rate`` simulations per iteration, each
    finishes at once with steps t = 0..T, and a batch of random received samples gets losses
    that are high for simulations in the corner."""

    def __init__(self, sampler, rate: int = 2, batch: int = 128, seed: int = 0) -> None:
        self.s, self.rate, self.batch = sampler, rate, batch
        self.rng = np.random.default_rng(seed)
        self.params: list[np.ndarray] = []
        self.iteration = 0

    def step(self) -> None:
        for _ in range(self.rate):
            if len(self.params) < self.s.budget:
                self.params.append(self.s.next().params)
                self.s.on_simulation_done(len(self.params) - 1, self.s.stats.steps + 1)
        self.iteration += 1
        ids = self.rng.integers(0, len(self.params), self.batch)
        steps = self.rng.integers(0, self.s.stats.steps + 1, self.batch)
        hard = in_corner(np.array(self.params)[ids])
        losses = 1.0 + 10.0 * hard + self.rng.normal(0, 0.1, self.batch)
        delta = self.s.on_losses(self.iteration, ids, steps, losses)
        assert delta.shape == (self.batch,) and (delta >= 0).all()
        self.s.on_iteration(self.iteration)


def breed(**kw) -> BreedSampler:
    opts = dict(
        budget=400, bounds=(LO, HI), seed=0, dim=5, steps=10, sigma=0.0125, period=20, window=50
    )
    opts.update(kw)
    return BreedSampler(**opts)


def test_mixing_ratio_is_linear_then_constant():
    r = [mixing_ratio(s, 0.5, 0.9, 3) for s in range(6)]
    np.testing.assert_allclose(r, [0.5, 0.5 + 0.4 / 3, 0.5 + 0.8 / 3, 0.9, 0.9, 0.9])
    assert mixing_ratio(0, 0.1, 1.0, 0) == 1.0  # no ramp: r_e from the first resampling


def test_effective_sample_fraction():
    assert effective_sample_fraction(np.ones(8)) == pytest.approx(1.0)
    assert effective_sample_fraction(np.r_[1.0, np.zeros(7)]) == pytest.approx(1 / 8)


@pytest.mark.parametrize("importance", [False, True])
def test_proposal_concentrates_on_the_hard_corner(importance):
    s = breed(importance_weights=importance)
    run = SyntheticTraining(s)
    shares = []  # (K, r, uniform count) right after each resampling
    for _ in range(200):
        gen = s.generation
        run.step()
        if s.generation != gen:
            pending = s.pending_draws()
            r = s.history[-1]["r"]
            assert r == pytest.approx(mixing_ratio(s.generation - 1, 0.5, 0.9, 3))
            shares.append((len(pending), r, sum(d.source == "uniform" for d in pending)))
    assert len(shares) >= 5
    draws = s.draws
    x = np.array([d.params for d in draws])
    assert (x >= LO).all() and (x <= HI).all()
    prop = np.array([d.source == "proposal" for d in draws])
    assert prop.sum() > 100
    volume = ((HI - CORNER) / (HI - LO)) ** 5
    frac = in_corner(x[prop]).mean()
    assert frac > 0.5 > 15 * volume, (frac, volume)
    assert in_corner(x[~prop]).mean() < 3 * volume  # uniform draws stay uniform
    # Uniform share of each redraw is 1 - r(s), binomially: pooled z-score over resamplings.
    k, r, u = map(np.array, zip(*shares, strict=True))
    z = (u.sum() - (k * (1 - r)).sum()) / np.sqrt((k * r * (1 - r)).sum())
    assert abs(z) < 4, z
    for kk, rr, uu in shares:
        assert abs(uu - kk * (1 - rr)) <= 4 * np.sqrt(kk * rr * (1 - rr)) + 1


def test_same_seed_same_sequence_and_paired_with_uniform():
    def run(seed):
        s = breed(seed=seed)
        t = SyntheticTraining(s, seed=1)
        for _ in range(120):
            t.step()
        return s

    a, b, c = run(0), run(0), run(1)
    xa, xb = (np.array([d.params for d in s.draws]) for s in (a, b))
    np.testing.assert_array_equal(xa, xb)
    assert a.generation > 1 and [d.source for d in a.draws] == [d.source for d in b.draws]
    assert not np.allclose(xa, np.array([d.params for d in c.draws]))
    # Paired seeds: every uniform draw of Breed is Random's draw of the same hand-out slot.
    u = UniformSampler(400, (LO, HI), seed=0, dim=5)
    rand = np.array([u.next().params for _ in range(len(a.draws))])
    uni = np.array([d.source == "uniform" for d in a.draws])
    np.testing.assert_array_equal(xa[uni], rand[uni])
    assert not np.allclose(xa[~uni], rand[~uni])


def test_iteration_zero_is_the_uniform_design():
    s = breed()
    u = UniformSampler(400, (LO, HI), seed=0, dim=5)
    for j in range(30):
        s.next()
        s.on_simulation_done(j, 11)
        s.on_losses(0, np.full(11, j), np.arange(11), np.linspace(0, 1, 11))
    s.on_iteration(0)  # the paper's i = 0: nothing to steer with yet
    assert s.generation == 0 and not s.history
    rest = s.pending_draws()
    assert all(d.source == "uniform" and d.generation == 0 for d in s.draws + rest)
    x = np.array([d.params for d in s.draws + rest])
    np.testing.assert_array_equal(x, np.array([u.next().params for _ in range(400)]))
    s.on_iteration(20)
    assert s.generation == 1


def test_no_eligible_simulation_skips_the_resampling():
    s = breed()
    for j in range(40):
        s.next()
        s.on_losses(1, np.full(10, j), np.arange(10), np.arange(10.0))  # step 10 never seen
    before = [d.params for d in s.pending_draws()]
    s.on_iteration(20)
    assert s.generation == 0 and not s.history
    np.testing.assert_array_equal(before, [d.params for d in s.pending_draws()])


def test_steering_never_touches_a_handed_out_simulation():
    s = breed()
    run = SyntheticTraining(s)
    for _ in range(50):
        run.step()
    handed = list(s.draws)
    saved = [d.params.copy() for d in handed]
    pending = [d.params.copy() for d in s.pending_draws()]
    assert s.resample(1000)
    assert s.draws == handed and all(a is b for a, b in zip(s.draws, handed, strict=True))
    for d, p in zip(s.draws, saved, strict=True):
        np.testing.assert_array_equal(d.params, p)
        with pytest.raises(ValueError):
            d.params[0] = LO  # read-only
    assert not np.allclose(pending, [d.params for d in s.pending_draws()])  # pending did move
    np.testing.assert_array_equal([s._row(j).params for j in range(len(handed))], saved)


def test_out_of_bounds_children_shrink_sigma_or_keep_the_parent():
    rng = np.random.default_rng(0)
    centers = np.vstack([np.full((500, 5), HI), np.full((500, 5), HI - 3.0)])
    kids, sig, kept, redraws = gaussian_children(rng, centers, np.full(1000, 5.0), LO, HI, 0.3, 5)
    assert (kids >= LO).all() and (kids <= HI).all()
    assert redraws > 0
    on_edge = slice(0, 500)  # on the bound, each try is inside with probability 2^-5
    assert 0.7 < kept[on_edge].mean() < 0.95
    np.testing.assert_array_equal(kids[kept], centers[kept])
    np.testing.assert_allclose(sig[kept], 5.0 * 0.7**5)
    shrunk = sig[500:] < 5.0  # inside: shrinking helps, few keep the parent
    assert shrunk.any() and kept[500:].mean() < kept[on_edge].mean() / 2
    assert set(np.round(sig / 5.0, 12)) <= {round(0.7**k, 12) for k in range(6)}
    _, sig0, kept0, n0 = gaussian_children(rng, centers, np.full(1000, 5.0), LO, HI, 0.3, 0)
    assert n0 == 0 and (sig0 == 5.0).all() and kept0[:500].mean() > 0.9


def test_shrunk_sigma_stays_with_the_member():
    s = breed(sigma=2.5)  # wider than the box: nearly every child leaves it
    run = SyntheticTraining(s)
    while s.generation < 1:
        run.step()
    h = s.history[-1]
    assert h["redraws"] > 0 and h["kept_parent"] > 0
    first = [d for d in s.pending_draws() if d.source == "proposal"]
    parents = {d.parent for d in first}
    member = {p: s.member_sigma(p) for p in parents}
    assert all(member[d.parent] <= d.sigma < 2.5 for d in first)
    s.resample(run.iteration + 1)
    second = [d for d in s.pending_draws() if d.source == "proposal" and d.parent in member]
    assert second  # the same members were picked again: they start from their shrunk sigma
    assert all(d.sigma <= member[d.parent] for d in second)
    x = np.array([d.params for d in s.draws + s.pending_draws()])
    assert (x >= LO).all() and (x <= HI).all()


def test_a_parent_may_lend_its_original_sigma_instead_of_its_shrunk_one():
    s = breed(sigma=2.5, keep_shrunk_sigma=False)
    run = SyntheticTraining(s)
    while s.generation < 1:
        run.step()
    prop = [d for d in s.pending_draws() if d.source == "proposal"]
    assert s.history[-1]["redraws"] > 0 and any(d.sigma < 2.5 for d in prop)  # shrunk to draw
    assert all(s.member_sigma(d.parent) == 2.5 for d in prop)  # but never kept
    assert all(s.member_sigma(j) == 2.5 for j in range(s.budget))


def test_sigma_may_be_read_as_a_variance():
    """Sigma = sigma * 1_d read as a covariance: members lend sqrt(sigma) as their standard
    deviation (in units of each parameter's range)."""
    s = breed(sigma=0.0004, sigma_is="variance")
    assert s.member_sigma(0) == pytest.approx(0.02)
    run = SyntheticTraining(s)
    while s.generation < 1:
        run.step()
    prop = [d for d in s.pending_draws() if d.source == "proposal"]
    steps = np.array([(d.params - s._params[d.parent]) / (HI - LO) for d in prop])
    assert np.std(steps) == pytest.approx(0.02, rel=0.15)  # not 0.0004
    with pytest.raises(ValueError, match="sigma_is"):
        breed(sigma_is="precision")


def test_importance_weights_use_the_deterministic_mixture_of_every_generation():
    """Every window member's density is the mixture of all generations as drawn,
    (1/H) sum_j (r_gj q_gj + (1 - r_gj) U) over the H simulations handed out, uniform draws of
    a resampling included (not the density of the component that drew each point)."""
    s = breed(importance_weights=True)
    run = SyntheticTraining(s)
    while s.generation < 3:
        run.step()
    ids = s.stats.window(s.window)
    gens = s._generation[: s.handed]
    x = (s._params[ids] - LO) / (HI - LO)
    want = np.zeros(len(ids))
    for g in gens:
        p = np.ones(len(ids))  # U on the unit box
        if g > 0:
            m = s._mixtures[g - 1]
            q = sum(
                wk * multivariate_normal(ck, sk**2 * np.eye(5)).pdf(x)
                for ck, wk, sk in zip(m["centers"], m["w"], m["sigmas"], strict=True)
            )
            p = m["r"] * q + (1 - m["r"]) * p
        want += p / len(gens)
    np.testing.assert_allclose(np.exp(s.log_dm_density(ids)), want, rtol=1e-9)
    later_uniform = [j for j in ids if s._generation[j] > 0 and s._source[j] == 0]
    assert later_uniform and not np.allclose(want[np.isin(ids, later_uniform)], 1.0)
    assert np.isfinite(s._weights(ids)).all() and s._weights(ids).sum() == pytest.approx(1.0)


def test_checkpoint_resumes_the_same_sequence():
    a = breed(seed=3)
    ra = SyntheticTraining(a, seed=5)
    for _ in range(70):
        ra.step()
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # what the server's checkpoint does, loaded safely
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    b = breed(seed=3)
    b.load_state_dict(state)
    rb = SyntheticTraining(b, seed=5)
    rb.rng.bit_generator.state = ra.rng.bit_generator.state
    rb.params, rb.iteration = list(ra.params), ra.iteration
    for _ in range(130):
        ra.step()
        rb.step()
    assert a.generation > 4 and a.generation == b.generation
    np.testing.assert_array_equal([d.params for d in a.draws], [d.params for d in b.draws])
    assert [d.parent for d in a.draws] == [d.parent for d in b.draws]
    np.testing.assert_array_equal(a.qualities(range(400)), b.qualities(range(400)))
    with pytest.raises(ValueError, match="seed"):
        breed(seed=4).load_state_dict(state)


def test_draws_beyond_the_budget_follow_the_mixture():
    s = breed(budget=60, period=5, window=20)
    run = SyntheticTraining(s, rate=3)
    for _ in range(40):
        run.step()
    extra = [s.next() for _ in range(200)]  # simulations given up after retries
    x = np.array([d.params for d in extra])
    assert (x >= LO).all() and (x <= HI).all()
    assert {d.source for d in extra} == {"uniform", "proposal"}
    assert len(s.draws) == 260


def test_ess_trigger_replaces_the_fixed_period():
    never = breed(ess_threshold=0.0)
    run = SyntheticTraining(never)
    for _ in range(100):
        run.step()
    assert never.generation == 0
    eager = breed(ess_threshold=1.0, period=15)
    run = SyntheticTraining(eager)
    for _ in range(100):
        run.step()
    its = [h["iteration"] for h in eager.history]
    assert len(its) >= 4 and np.diff(its).min() >= 15
    assert all(h["ess_fraction"] < 1.0 for h in eager.history)


def test_log_mixture_density_matches_scipy():
    rng = np.random.default_rng(0)
    x, c = rng.normal(size=(6, 5)), rng.normal(size=(4, 5))
    w, sig = np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.5, 1.0, 1.5, 2.0])
    ref = sum(
        wi * multivariate_normal(ci, si**2 * np.eye(5)).pdf(x)
        for wi, ci, si in zip(w, c, sig, strict=True)
    )
    np.testing.assert_allclose(log_mixture_density(x, c, w, sig), np.log(ref))


def test_bad_input_is_a_clear_error():
    s = breed()
    s.next()
    with pytest.raises(ValueError, match="never handed out"):
        s.on_losses(1, np.array([5]), np.array([0]), np.array([1.0]))
    with pytest.raises(ValueError, match="sampler.breed.shrink"):
        breed(shrink=1.0)
    with pytest.raises(ValueError, match="12 time steps, expected 1..11"):
        s.on_simulation_done(0, 12)


@pytest.mark.timeout(60)
def test_resampling_cost_paper_size(capsys):
    """One resampling at S=800, N=200, K=600, T=100 (paper study (2)); printed for the record."""
    s = BreedSampler(800, (LO, HI), seed=0, dim=5, steps=100, window=200)
    for _ in range(200):
        s.next()
    rng = np.random.default_rng(0)
    ids, steps = np.repeat(np.arange(200), 101), np.tile(np.arange(101), 200)
    for chunk in np.array_split(rng.permutation(len(ids)), 160):  # batches of ~128
        s.on_losses(1, ids[chunk], steps[chunk], rng.gamma(2.0, 1.0, len(chunk)))
    t_batch = time.perf_counter()
    for _ in range(100):
        s.on_losses(1, ids[:128], steps[:128], rng.gamma(2.0, 1.0, 128))
    t_batch = (time.perf_counter() - t_batch) / 100
    times = []
    for it in range(1, 21):
        t0 = time.perf_counter()
        assert s.resample(it)
        times.append(time.perf_counter() - t0)
    assert s.history[-1]["K"] == 600 and s.history[-1]["window"] == 200
    ms = 1e3 * np.median(times)
    with capsys.disabled():
        print(
            f"\nresampling S=800 N=200 K=600: {ms:.2f} ms (median of 20); "
            f"on_losses per batch of 128: {1e3 * t_batch:.3f} ms"
        )
    assert ms < 50
