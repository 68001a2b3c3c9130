"""Validation of the serial heat solver (paper Appendix B.1, eqs. 13-16) as numerical code."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import scipy.sparse as sp
import scipy.sparse.linalg as spl

from breed.problems.heat2d_solver import HeatParameterError, HeatSolver, dst_eigenvalues, solve

LAM = np.array([300.0, 100.0, 500.0, 200.0, 400.0])  # T0, T1, T2, T3, T4


def sparse_reference(lam, grid, steps, dt, alpha, length):
    """Independent implementation: assemble the 5-point matrix, one sparse solve per step."""
    n, h = grid - 2, length / (grid - 1)
    r = alpha * dt / h**2
    second = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    eye = sp.identity(n)
    a = (sp.identity(n * n) + r * (sp.kron(second, eye) + sp.kron(eye, second))).tocsc()
    u = np.full((grid, grid), lam[0])
    u[:, 0], u[:, -1], u[0, :], u[-1, :] = lam[3], lam[4], lam[1], lam[2]
    out = [u.copy()]
    for _ in range(steps):
        rhs = u[1:-1, 1:-1].copy()
        rhs[0, :] += r * u[0, 1:-1]
        rhs[-1, :] += r * u[-1, 1:-1]
        rhs[:, 0] += r * u[1:-1, 0]
        rhs[:, -1] += r * u[1:-1, -1]
        u = u.copy()
        u[1:-1, 1:-1] = spl.spsolve(a, rhs.ravel()).reshape(n, n)
        out.append(u)
    return np.array(out)


def test_shape_dtype_initial_field_and_corner_ownership():
    u = solve(LAM, grid=16, steps=7)
    assert u.shape == (8, 16, 16) and u.dtype == np.float64
    assert np.all(u[0, 1:-1, 1:-1] == LAM[0])
    # x1 walls (i = 0: T1, i = -1: T2) own the corners; x2 walls (j = 0: T3, j = -1: T4)
    assert np.all(u[:, 0, :] == LAM[1]) and np.all(u[:, -1, :] == LAM[2])
    assert np.all(u[:, 1:-1, 0] == LAM[3]) and np.all(u[:, 1:-1, -1] == LAM[4])
    assert u[0, 0, 0] == u[0, 0, -1] == LAM[1] and u[0, -1, 0] == u[0, -1, -1] == LAM[2]


def test_defaults_match_the_paper():
    assert solve(LAM).shape == (101, 64, 64)


def test_matches_an_independent_sparse_solver():
    kw = dict(grid=13, steps=6, dt=0.02, alpha=0.7, length=1.3)
    ref = sparse_reference(LAM, **kw)
    np.testing.assert_allclose(solve(LAM, **kw), ref, rtol=1e-12, atol=0)


def test_constant_parameters_stay_constant():
    u = solve([250.0] * 5, grid=33, steps=50)
    np.testing.assert_allclose(u, 250.0, rtol=1e-13, atol=0)


@pytest.mark.parametrize("seed", range(5))
def test_maximum_principle(seed):
    lam = np.random.default_rng(seed).uniform(100, 500, 5)
    u = solve(lam, grid=24, steps=40, dt=0.05, length=2.0)
    assert u.min() >= lam.min() - 1e-9 and u.max() <= lam.max() + 1e-9


def test_hot_interior_cools_monotonically():
    """T0 above every wall: implicit Euler (an M-matrix step) makes every node decrease."""
    hot = solve([500, 100, 150, 120, 110], grid=24, steps=40, dt=0.05, length=2.0)
    assert np.all(np.diff(hot[:, 1:-1, 1:-1], axis=0) <= 1e-9)
    assert hot[-1, 1:-1, 1:-1].max() < 500


def test_mirror_symmetry():
    t0, t1, t2, t3, t4 = LAM
    u = solve(LAM, grid=21, steps=20, length=2.0)
    swap12 = solve([t0, t2, t1, t3, t4], grid=21, steps=20, length=2.0)
    swap34 = solve([t0, t1, t2, t4, t3], grid=21, steps=20, length=2.0)
    np.testing.assert_allclose(swap12[:, ::-1, :], u, rtol=1e-12)
    np.testing.assert_allclose(swap34[:, :, ::-1], u, rtol=1e-12)
    # exchanging the roles of x1 and x2 transposes the interior (corners aside: ownership)
    transposed = solve([t0, t3, t4, t1, t2], grid=21, steps=20, length=2.0)
    np.testing.assert_allclose(
        transposed[:, 1:-1, 1:-1].transpose(0, 2, 1), u[:, 1:-1, 1:-1], rtol=1e-12
    )


def test_linearity_in_lambda():
    """lambda -> u is linear (not only affine): solve(0) = 0, so superposition is exact."""
    kw = dict(grid=17, steps=15, dt=0.02, length=1.5)
    rng = np.random.default_rng(1)
    a, b = rng.uniform(100, 500, 5), rng.uniform(100, 500, 5)
    assert np.all(solve(np.zeros(5), **kw) == 0.0)
    ua, ub = solve(a, **kw), solve(b, **kw)
    scale = np.abs(ua).max()
    np.testing.assert_allclose(solve(a + b, **kw), ua + ub, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(solve(-2.5 * a, **kw), -2.5 * ua, rtol=0, atol=1e-12 * scale)
    basis = np.array([solve(e, **kw) for e in np.eye(5)])
    np.testing.assert_allclose(np.tensordot(a, basis, axes=1), ua, rtol=0, atol=1e-12 * scale)


def implicit_euler_series(lam, x1, x2, steps, dt, alpha, length, modes=80):
    """Exact solution of the space-continuous problem after ``steps`` implicit-Euler steps.

    ``u^n = u_s + sum_kl a_kl (1 + dt mu_kl)^-n sin(k pi x1/L) sin(l pi x2/L)`` with
    ``mu_kl = alpha pi^2 (k^2 + l^2) / L^2``; ``u_s`` is the harmonic steady state (a sinh series
    per wall) and ``a_kl`` the sine coefficients of ``T0 - u_s`` (those of ``u_s`` follow from
    Green's identity: ``mu * <u_s, phi> = -(wall integral of T * d(phi)/dn)``). Because time is
    discretised exactly as in the solver, the difference to the solver is pure spatial error.
    """
    t0, t1, t2, t3, t4 = lam
    k = np.arange(1, modes + 1.0)[:, None]
    m = np.arange(1, modes + 1.0)[None, :]
    mu = alpha * np.pi**2 * (k**2 + m**2) / length**2
    odd_k, odd_m = 1 - (-1.0) ** k, 1 - (-1.0) ** m
    initial = t0 * 4 / np.pi**2 * odd_k * odd_m / (k * m)
    steady = (
        4
        / length**2
        / mu
        * (
            (t1 + t2 * (-1.0) ** (k + 1)) * (k / m) * odd_m
            + (t3 + t4 * (-1.0) ** (m + 1)) * (m / k) * odd_k
        )
    )
    amp = (initial - steady) * (1 + dt * mu) ** (-steps)
    s1 = np.sin(np.pi * np.outer(k[:, 0], x1) / length)
    s2 = np.sin(np.pi * np.outer(m[0], x2) / length)
    transient = np.einsum("kl,kp,lp->p", amp, s1, s2)
    q = np.arange(1, 402, 2.0)[:, None]

    def ratio(y):  # sinh(q pi y / L) / sinh(q pi), overflow-free
        return (
            np.exp(q * np.pi * (y / length - 1))
            * (1 - np.exp(-2 * q * np.pi * y / length))
            / (1 - np.exp(-2 * q * np.pi))
        )

    c = 4 / (q * np.pi)
    u_s = c * (t1 * ratio(length - x1) + t2 * ratio(x1)) * np.sin(q * np.pi * x2 / length) + c * (
        t3 * ratio(length - x2) + t4 * ratio(x2)
    ) * np.sin(q * np.pi * x1 / length)
    return u_s.sum(0) + transient


@pytest.mark.parametrize("lam", [[100, 300, 300, 300, 300], LAM.tolist()])
def test_spatial_convergence_to_the_fourier_series(lam):
    """Observed order of the 5-point Laplacian at fixed nodes away from the corners: 2."""
    dt, steps, alpha, length = 0.01, 10, 1.0, 1.0  # t = 0.1: diffusion reaches the centre
    frac = np.array([0.25, 0.5, 0.75])
    x1, x2 = (g.ravel() * length for g in np.meshgrid(frac, frac, indexing="ij"))
    exact = implicit_euler_series(lam, x1, x2, steps, dt, alpha, length)
    errors = []
    for grid in (17, 33, 65, 129):
        idx = np.rint(frac * (grid - 1)).astype(int)
        u = solve(lam, grid=grid, steps=steps, dt=dt, alpha=alpha, length=length)[-1]
        errors.append(np.abs(u[np.ix_(idx, idx)].ravel() - exact).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    print(f"lambda={lam} max errors {np.array(errors)} observed spatial orders {orders}")
    assert errors[-1] < 1e-2
    assert np.all(np.abs(orders - 2.0) < 0.1)


def test_temporal_convergence_to_the_semi_discrete_solution():
    """Against the exact-in-time solution of the spatially discrete system: order 1 in dt."""
    lam, grid, length, alpha, t_end = LAM, 17, 1.0, 1.0, 0.1
    n = grid - 2
    h = length / (grid - 1)
    eig = alpha / h**2 * (dst_eigenvalues(n)[:, None] + dst_eigenvalues(n)[None, :])
    coarse = HeatSolver(lam, grid, dt=1.0, alpha=alpha, length=length)
    # semi-discrete: u_hat(t) = u_inf + (u0 - u_inf) exp(-eig t), u_inf = forcing / (eig dt)
    u_inf = coarse._forcing / (eig * 1.0)
    exact_hat = u_inf + (coarse._u0_hat - u_inf) * np.exp(-eig * t_end)
    exact = scipy.fft.dstn(exact_hat, type=1, norm="ortho")
    errors = []
    for steps in (10, 20, 40, 80):
        u = solve(lam, grid=grid, steps=steps, dt=t_end / steps, alpha=alpha, length=length)
        errors.append(np.abs(u[-1, 1:-1, 1:-1] - exact).max())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    print(f"temporal errors {np.array(errors)} observed orders {orders}")
    assert np.all(np.abs(orders - 1.0) < 0.15)


def test_streamed_fields_and_blocks_are_bit_identical_to_solve():
    u = solve(LAM, grid=20, steps=9)
    solver = HeatSolver(LAM, grid=20)
    streamed = np.array(list(solver.fields(9)))
    assert np.array_equal(streamed, u)
    blocks = list(solver.blocks(9, 5, 12))
    assert [t for t, _ in blocks] == list(range(10))
    assert all(np.array_equal(b, u[t, 5:12]) for t, b in blocks)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(params=[1, 2, 3]), "5 numbers"),
        (dict(params=[1, 2, 3, 4, float("nan")]), "finite"),
        (dict(params=["a"] * 5), "5 numbers"),
        (dict(grid=2), "grid"),
        (dict(grid=10.5), "grid"),
        (dict(steps=-1), "steps"),
        (dict(dt=0.0), "dt"),
        (dict(alpha=-1.0), "alpha"),
        (dict(length=float("inf")), "length"),
    ],
)
def test_bad_input_is_a_one_line_value_error(kwargs, match):
    args = dict(params=LAM, grid=8, steps=2)
    args.update(kwargs)
    with pytest.raises(HeatParameterError, match=match) as info:
        solve(**args)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_bad_row_range():
    with pytest.raises(HeatParameterError, match="row range"):
        list(HeatSolver(LAM, grid=8).blocks(2, 5, 3))
