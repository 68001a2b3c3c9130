"""``breed``: Adaptive Multiple Importance Sampling steered by loss deviations (paper Section 3).

Iteration 0 hands out the same S uniform points as ``uniform`` with the same seed. Every P
training iterations the K parameters not handed out yet are redrawn from the mixture
``r(s) q^(s) + (1 - r(s)) U`` where ``q^(s)`` is a Gaussian mixture around the last N simulations
in order of Q updates, weighted by their Q (eqs. 9-12). Late binding makes steering safe: only
rows at or after the hand-out cursor are ever rewritten. See docs/breed.md for every reading of
the paper made here and why.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from scipy.special import logsumexp

from breed.sampling.base import Draw, Sampler
from breed.sampling.deviation import LossDeviation, as_numpy
from breed.sampling.uniform import check_resume, check_sampler_args, initial_design

SOURCES = ("uniform", "proposal")


def mixing_ratio(s: int, r_start: float, r_end: float, r_ramp: float) -> float:
    """Concentrate-explore value r(s) = r_s + (r_e - r_s) min(s / r_c, 1), s = 0 at the first
    resampling ("linear-constant"; the printed max(s (r_e - r_s) / r_c, r_e) is constant)."""
    if r_ramp <= 0:
        return float(r_end)
    return float(r_start + (r_end - r_start) * min(s / r_ramp, 1.0))


def effective_sample_fraction(weights: np.ndarray) -> float:
    """ESS / n = (sum w)^2 / (n sum w^2), in (0, 1]; 1 when all weights are equal."""
    w = np.asarray(weights, dtype=np.float64)
    total, sq = w.sum(), np.square(w).sum()
    return float(total * total / (len(w) * sq)) if sq > 0 else 0.0


def gaussian_children(
    rng: np.random.Generator,
    centers: np.ndarray,
    sigmas: np.ndarray,
    lower: Any,
    upper: Any,
    shrink: float,
    max_redraws: int,
    width: Any = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One child of N(center, diag(sigma * width)^2) per row, within the box [lower, upper]
    (paper Section 3.2; ``width`` per axis scales sigma to each parameter's range).

    An out-of-bounds child multiplies its sigma by ``1 - shrink`` and is redrawn, at most
    ``max_redraws`` times; a child still out of bounds keeps its parent's location.
    Returns ``(children, sigma used, kept-parent mask, redraws)``.
    """
    sig = np.array(sigmas, dtype=np.float64)
    width = np.asarray(width, dtype=np.float64)
    children = rng.normal(centers, sig[:, None] * width)
    out = ((children < lower) | (children > upper)).any(axis=1)
    redraws = 0
    for _ in range(max_redraws):
        idx = np.flatnonzero(out)
        if len(idx) == 0:
            break
        redraws += len(idx)
        sig[idx] *= 1.0 - shrink
        children[idx] = rng.normal(centers[idx], sig[idx, None] * width)
        out[idx] = ((children[idx] < lower) | (children[idx] > upper)).any(axis=1)
    children[out] = centers[out]
    return children, sig, out, redraws


def log_mixture_density(
    x: np.ndarray, centers: np.ndarray, weights: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """log sum_j w_j N(x | c_j, sigma_j^2 I) per row of x (the proposal of eq. 11)."""
    d = x.shape[1]
    d2 = np.square(x[:, None, :] - centers[None, :, :]).sum(axis=2)
    with np.errstate(divide="ignore"):
        logc = (
            np.log(weights)[None, :]
            - 0.5 * d2 / np.square(sigmas)[None, :]
            - d * np.log(sigmas)[None, :]
            - 0.5 * d * np.log(2 * np.pi)
        )
    return logsumexp(logc, axis=1)


class BreedSampler(Sampler):
    """The paper's Breed: loss-deviation target (eqs. 4-6), AMIS proposal (eqs. 9-12), mixing."""

    name = "breed"

    def __init__(
        self,
        budget: int,
        bounds: tuple[Any, Any],
        seed: int = 0,
        dim: int | None = None,
        *,
        steps: int = 100,
        sigma: float = 0.0125,
        period: int = 200,
        window: int = 200,
        r_start: float = 0.5,
        r_end: float = 0.9,
        r_ramp: float = 3,
        shrink: float = 0.3,
        max_redraws: int = 5,
        importance_weights: bool = False,
        ess_threshold: float | None = None,
        sigma_is: str = "std",
        keep_shrunk_sigma: bool = True,
    ) -> None:
        check_sampler_args(budget, bounds, dim)
        checks = {
            "sigma": (sigma, sigma > 0),
            "period": (period, period >= 1),
            "window": (window, window >= 1),
            "r_start": (r_start, 0 <= r_start <= 1),
            "r_end": (r_end, 0 <= r_end <= 1),
            "r_ramp": (r_ramp, r_ramp >= 0),
            "shrink": (shrink, 0 < shrink < 1),
            "max_redraws": (max_redraws, max_redraws >= 0),
            "ess_threshold": (ess_threshold, ess_threshold is None or 0 <= ess_threshold <= 1),
            "sigma_is": (sigma_is, sigma_is in ("std", "variance")),
        }
        for key, (value, ok) in checks.items():
            if not ok:
                raise ValueError(f"sampler.breed.{key}: invalid value {value!r}")
        super().__init__(budget, bounds, seed, dim)
        self.sigma, self.period, self.window = float(sigma), int(period), int(window)
        # the paper's Sigma = sigma * 1_d: a standard deviation (default) or, as the authors'
        # earlier code reads it, a variance; members carry the standard deviation
        self.sigma_is, self.keep_shrunk_sigma = sigma_is, bool(keep_shrunk_sigma)
        self._sigma0 = self.sigma if sigma_is == "std" else float(np.sqrt(self.sigma))
        self.r_start, self.r_end, self.r_ramp = float(r_start), float(r_end), float(r_ramp)
        self.shrink, self.max_redraws = float(shrink), int(max_redraws)
        self.importance_weights = bool(importance_weights)
        self.ess_threshold = None if ess_threshold is None else float(ess_threshold)
        self.stats = LossDeviation(steps, capacity=self.budget)
        self._rng, self._design = initial_design(seed, budget, self.lower, self.upper, self.dim)
        # sigma is a fraction of each parameter's range; densities are taken in the unit box
        # (the Jacobian of the scaling is one constant for every point, so weights agree)
        self._width = self.upper - self.lower
        n = self.budget
        # One row per simulation (hand-out order); rows >= handed are pending and may change.
        self._params = self._design.copy()
        self._source = np.zeros(n, dtype=np.int64)  # index into SOURCES
        self._generation = np.zeros(n, dtype=np.int64)
        self._parent = np.full(n, -1, dtype=np.int64)
        self._sigma = np.full(n, np.nan)  # sigma the row was drawn with
        self._member_sigma = np.full(n, self._sigma0)  # its sigma when it serves as a parent
        self.generation = 0
        self.draws: list[Draw] = []  # handed-out draws, never modified
        self._last_resample = 0
        self._proposal: tuple[np.ndarray, np.ndarray, float] | None = None  # ids, w, r
        # every generation's mixture r q + (1 - r) U as drawn (unit box): the denominators of
        # the deterministic-mixture importance weights
        self._mixtures: list[dict[str, Any]] = []

    # -- hand-out ---------------------------------------------------------------------------
    def _draw(self, sim_id: int) -> Draw:
        if sim_id >= len(self._params):
            self._append_extra()
        draw = self._row(sim_id)
        self.draws.append(draw)
        return draw

    def _row(self, j: int) -> Draw:
        prop = self._source[j] == 1
        return Draw(
            params=self._params[j],
            source=SOURCES[self._source[j]],
            generation=int(self._generation[j]),
            parent=int(self._parent[j]) if prop else None,
            sigma=float(self._sigma[j]) if prop else None,
        )

    def pending_draws(self) -> list[Draw]:
        """The draws not handed out yet (what the next resampling may rewrite)."""
        return [self._row(j) for j in range(self.handed, len(self._params))]

    def _append_extra(self) -> None:
        """A draw beyond S (a simulation given up after retries): one point of the current
        mixture (uniform while no proposal has been built)."""
        uniform = self._rng.uniform(self.lower, self.upper, size=(1, self.dim))
        if self._proposal is None:
            rows = self._mixture_rows(uniform, np.zeros(1, dtype=bool), None, None)
        else:
            ids, w, r = self._proposal
            rows = self._mixture_rows(uniform, self._rng.random(1) < r, ids, w)
        for name, value in rows.items():
            arr = getattr(self, name)
            setattr(self, name, np.concatenate([arr, value]))

    # -- training-side hooks ----------------------------------------------------------------
    def on_losses(
        self, iteration: int, sim_ids: np.ndarray, steps: np.ndarray, losses: np.ndarray
    ) -> np.ndarray:
        ids = as_numpy(sim_ids)
        if ids.size and np.issubdtype(ids.dtype, np.integer) and ids.max() >= self.handed:
            raise ValueError(
                f"on_losses: sim id {ids.max()} was never handed out ({self.handed} so far)"
            )
        return self.stats.update(ids, steps, losses)

    def on_simulation_done(self, sim_id: int, steps: int) -> None:
        self.stats.set_steps(sim_id, steps)

    def on_iteration(self, iteration: int) -> None:
        it = int(iteration)
        if it <= 0 or it == self._last_resample:
            return
        if self.ess_threshold is None:
            if it % self.period == 0:
                self.resample(it)
        elif it - self._last_resample >= self.period:
            ids = self.stats.window(self.window)
            w = self._weights(ids) if len(ids) else None
            if w is not None and effective_sample_fraction(w) < self.ess_threshold:
                self.resample(it)

    def quality(self, sim_id: int) -> float | None:
        q = self.stats.quality([sim_id])[0]
        return None if np.isnan(q) else float(q)

    def qualities(self, sim_ids: np.ndarray) -> np.ndarray:
        return self.stats.quality(sim_ids)

    def member_sigma(self, sim_id: int) -> float:
        """The sigma simulation ``sim_id`` lends its children (shrunk by out-of-bounds ones)."""
        return float(self._member_sigma[int(sim_id)])

    # -- AMIS -------------------------------------------------------------------------------
    def _weights(self, ids: np.ndarray) -> np.ndarray | None:
        """Normalised weights of the window: w ~ Q_j (eq. 9), or, with ``importance_weights``,
        Q_j over the deterministic-mixture density of lambda_j (docs/breed.md)."""
        with np.errstate(divide="ignore"):
            logw = np.log(self.stats.quality(ids))
        if self.importance_weights:
            logw = logw - self.log_dm_density(ids)
        if not np.isfinite(logw).any():
            return None  # every Q is 0: no information to steer with
        w = np.exp(logw - logw[np.isfinite(logw)].max())
        w[~np.isfinite(w)] = 0.0
        return w / w.sum()

    def log_dm_density(self, ids: np.ndarray) -> np.ndarray:
        """log of the deterministic mixture (Owen & Zhou 2000; Cornuet et al. 2012, AMIS) at
        the simulations ``ids``: sum_t N_t p_t(lambda) / sum_t N_t over the generations t of the
        simulations handed out so far, N_t of them from generation t, p_t = r_t q_t + (1 - r_t) U
        the mixture generation t was drawn from (p_0 = U), in the unit box (U = 1)."""
        x = self._unit(self._params[ids])
        gens, counts = np.unique(self._generation[: self.handed], return_counts=True)
        terms = []
        for g, count in zip(gens.tolist(), counts.tolist(), strict=True):
            logp = np.zeros(len(ids))  # U
            if g > 0:
                m = self._mixtures[g - 1]
                logq = log_mixture_density(x, m["centers"], m["w"], m["sigmas"])
                with np.errstate(divide="ignore"):
                    logp = np.logaddexp(np.log(m["r"]) + logq, np.log1p(-m["r"]))
            terms.append(np.log(count) + logp)
        return logsumexp(np.array(terms), axis=0) - np.log(counts.sum())

    def resample(self, iteration: int) -> bool:
        """Redraw every pending row from the mixture (eqs. 9-12); False when skipped."""
        t0 = time.perf_counter()
        start, k = self.handed, self.budget - self.handed
        ids = self.stats.window(self.window)
        w = self._weights(ids) if len(ids) and k > 0 else None
        if w is None:
            return False  # nothing left to steer, or no simulation in Lambda_J^(i) yet
        s = self.generation + 1
        r = mixing_ratio(s - 1, self.r_start, self.r_end, self.r_ramp)
        is_prop = self._rng.random(k) < r
        # the mixture as drawn: members' sigma before this resampling's shrinks
        self._mixtures.append(
            {
                "centers": self._unit(self._params[ids]),
                "w": w,
                "sigmas": self._member_sigma[ids].copy(),
                "r": r,
            }
        )
        rows = self._mixture_rows(self._design[start:].copy(), is_prop, ids, w, generation=s)
        redraws, kept = rows.pop("redraws"), rows.pop("kept_parent")
        for name, value in rows.items():
            getattr(self, name)[start:] = value
        self.generation, self._last_resample, self._proposal = s, int(iteration), (ids, w, r)
        q = self.stats.quality(ids)
        finite = q[np.isfinite(q)]
        q10, q50, q90 = np.quantile(finite, [0.1, 0.5, 0.9]) if finite.size else [None] * 3
        self.history.append(
            {
                "iteration": int(iteration),
                "generation": s,
                "K": k,
                "r": r,
                "proposal": int(is_prop.sum()),
                "proposal_share": float(is_prop.mean()),
                "window": len(ids),
                "q_p10": None if q10 is None else float(q10),
                "q_median": None if q50 is None else float(q50),
                "q_p90": None if q90 is None else float(q90),
                "sigma_median": float(np.median(self._mixtures[-1]["sigmas"])),
                "ess_fraction": effective_sample_fraction(w),
                "redraws": redraws,
                "kept_parent": kept,
                "seconds": time.perf_counter() - t0,
            }
        )
        return True

    def _mixture_rows(
        self,
        uniform: np.ndarray,
        is_prop: np.ndarray,
        ids: np.ndarray | None,
        w: np.ndarray | None,
        generation: int | None = None,
    ) -> dict[str, Any]:
        """Rows for ``len(uniform)`` new points: proposal children where ``is_prop``, else the
        given uniform points. Persists each parent's shrunk sigma."""
        k, n = len(uniform), int(is_prop.sum())
        gen = self.generation if generation is None else generation
        params, parent = uniform, np.full(k, -1, dtype=np.int64)
        sigma, member = np.full(k, np.nan), np.full(k, self._sigma0)
        redraws = kept = 0
        if n:
            assert ids is not None and w is not None, "proposal points need a proposal"
            picks = ids[self._rng.choice(len(ids), size=n, p=w)]  # multinomial, eq. 10
            children, used, kept_mask, redraws = gaussian_children(
                self._rng,
                self._params[picks],
                self._member_sigma[picks],
                self.lower,
                self.upper,
                self.shrink,
                self.max_redraws,
                self._width,
            )
            params[is_prop], parent[is_prop], sigma[is_prop] = children, picks, used
            if self.keep_shrunk_sigma:  # a member lends its last, shrunk sigma from now on
                np.minimum.at(self._member_sigma, picks, used)
                member[is_prop] = used
            kept = int(kept_mask.sum())
        out: dict[str, Any] = {
            "_params": params,
            "_source": is_prop.astype(np.int64),
            "_generation": np.full(k, gen, dtype=np.int64),
            "_parent": parent,
            "_sigma": sigma,
            "_member_sigma": member,
        }
        if generation is not None:
            out.update(redraws=int(redraws), kept_parent=kept)
        return out

    def _unit(self, x: np.ndarray) -> np.ndarray:
        return (x - self.lower) / self._width

    # -- checkpoint -------------------------------------------------------------------------
    _TABLE = ("_params", "_source", "_generation", "_parent", "_sigma", "_member_sigma")

    def state_dict(self) -> dict[str, Any]:
        prop = None
        if self._proposal is not None:
            ids, w, r = self._proposal
            prop = {"ids": ids.tolist(), "w": w.tolist(), "r": r}
        return {
            "name": self.name,
            "seed": self.seed,
            "budget": self.budget,
            "handed": self.handed,
            "generation": self.generation,
            "last_resample": self._last_resample,
            "rng": self._rng.bit_generator.state,
            "table": {name: getattr(self, name).tolist() for name in self._TABLE},
            "proposal": prop,
            "history": [dict(h) for h in self.history],
            "mixtures": [{k: np.asarray(v).tolist() for k, v in m.items()} for m in self._mixtures],
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resume(state, self)
        self.stats.load_state_dict(state["stats"])
        dtypes = {"_source": np.int64, "_generation": np.int64, "_parent": np.int64}
        for name in self._TABLE:
            setattr(self, name, np.asarray(state["table"][name], dtype=dtypes.get(name, float)))
        self._params = self._params.reshape(-1, self.dim)
        self.handed, self.generation = int(state["handed"]), int(state["generation"])
        self._last_resample = int(state["last_resample"])
        self._rng.bit_generator.state = state["rng"]
        prop = state["proposal"]
        self._proposal = (
            None
            if prop is None
            else (np.asarray(prop["ids"], dtype=np.int64), np.asarray(prop["w"]), float(prop["r"]))
        )
        self.history = [dict(h) for h in state["history"]]
        self._mixtures = [
            {
                "centers": np.asarray(m["centers"], dtype=float).reshape(-1, self.dim),
                "w": np.asarray(m["w"], dtype=float),
                "sigmas": np.asarray(m["sigmas"], dtype=float),
                "r": float(m["r"]),
            }
            for m in state.get("mixtures", [])
        ]
        self.draws = [self._row(j) for j in range(self.handed)]
