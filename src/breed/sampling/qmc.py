"""Quasi-random baselines ``halton``, ``lhs`` and ``sobol`` (``scipy.stats.qmc``, scrambled, seeded).

Each sampler precomputes a block of points in ``[0, 1)^dim`` and scales it to the bounds; draws
beyond the budget S (simulations given up after retries) extend the sequence block by block, so
the sequence is a pure function of the seed and a checkpoint only needs the hand-out count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import qmc

from breed.sampling.base import Draw, Sampler
from breed.sampling.uniform import check_resume, check_sampler_args


def _engine(cls: type[qmc.QMCEngine], dim: int, seed: int) -> qmc.QMCEngine:
    """Build a scrambled engine; scipy >= 1.15 calls the seed ``rng``, older ones ``seed``."""
    try:
        return cls(dim, scramble=True, rng=np.random.default_rng(seed))
    except TypeError:  # scipy < 1.15
        return cls(dim, scramble=True, seed=np.random.default_rng(seed))


class QMCSampler(Sampler):
    """Hands out a low-discrepancy sequence scaled to the box."""

    engine_class: type[qmc.QMCEngine] = qmc.Halton

    def __init__(
        self, budget: int, bounds: tuple[Any, Any], seed: int = 0, dim: int | None = None
    ) -> None:
        check_sampler_args(budget, bounds, dim)
        super().__init__(budget, bounds, seed, dim)
        self._engine = _engine(self.engine_class, self.dim, self.seed)
        self._points = np.empty((0, self.dim))
        self._extend()

    def _block(self) -> np.ndarray:
        """The next block of unit-cube points (at least S on the first call)."""
        return self._engine.random(self.budget)

    def _extend(self) -> None:
        unit = self._block()
        scaled = qmc.scale(unit, self.lower, self.upper)
        # Scaling can round a point a hair past the upper bound; the bounds are a hard contract.
        self._points = np.concatenate([self._points, np.clip(scaled, self.lower, self.upper)])

    def _draw(self, sim_id: int) -> Draw:
        while sim_id >= len(self._points):
            self._extend()
        return Draw(params=self._points[sim_id], source=self.name, generation=0)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "budget": self.budget, "handed": self.handed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resume(state, self)
        self.handed = int(state["handed"])
        while self.handed > len(self._points):
            self._extend()


class HaltonSampler(QMCSampler):
    """Scrambled Halton sequence (the validation set uses the same family)."""

    name = "halton"
    engine_class = qmc.Halton


class LHSSampler(QMCSampler):
    """Latin hypercube: each block of S points has one point in each of the S strata per axis."""

    name = "lhs"
    engine_class = qmc.LatinHypercube


class SobolSampler(QMCSampler):
    """Scrambled Sobol' sequence, drawn in powers of two to keep its balance properties."""

    name = "sobol"
    engine_class = qmc.Sobol

    def _block(self) -> np.ndarray:
        done = self._engine.num_generated
        # First block: the smallest 2^m >= S; later blocks double the total (stays a power of 2).
        m = math.ceil(math.log2(self.budget)) if done == 0 else int(math.log2(done))
        return self._engine.random_base2(m)


class ValidationDesign(QMCSampler):
    """The validation set's design (:func:`breed.learning.validation.halton_design`) in order: how a
    problem's own client makes its validation set (``training.mode: collect``). Hand-out,
    checkpoint and resume are the QMC samplers'; the design never extends past its size."""

    name = "validation"

    def __init__(
        self, budget: int, bounds: tuple[Any, Any], seed: int = 0, dim: int | None = None
    ) -> None:
        from breed.learning.validation import halton_design

        check_sampler_args(budget, bounds, dim)
        Sampler.__init__(self, budget, bounds, seed, dim)  # no QMC engine: a fixed design
        self._points = halton_design(self.budget, self.seed, self.lower, self.upper)

    def _extend(self) -> None:
        raise ValueError(
            "validation design: every point was handed out (a simulation "
            "given up cannot be redrawn: launcher.on_give_up must be drop)"
        )
