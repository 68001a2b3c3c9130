"""``uniform``: the paper's *Random* baseline, and the initial design every seeded sampler shares.

The whole design of S points is drawn first from ``numpy.random.default_rng(seed)``, so that
``uniform`` and ``breed`` with the same seed hand out the same initial parameters in the same order
(paired seeds). Draws beyond S (simulations given up after retries get new parameters) continue
the same generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from breed.sampling.base import Draw, Sampler, box


def check_sampler_args(budget: int, bounds: tuple[Any, Any], dim: int | None) -> None:
    """One-line errors for arguments every sampler shares."""
    if int(budget) < 1:
        raise ValueError(f"study.simulations: budget must be >= 1, got {budget}")
    box(bounds, dim)


def initial_design(
    seed: int, budget: int, lower: np.ndarray, upper: np.ndarray, dim: int
) -> tuple[np.random.Generator, np.ndarray]:
    """The S uniform points of iteration 0 and the generator positioned right after them."""
    rng = np.random.default_rng(int(seed))
    return rng, rng.uniform(lower, upper, size=(int(budget), dim))


def check_resume(state: dict[str, Any], sampler: Sampler) -> None:
    """A checkpoint resumes only the sampler it was taken from (same name, seed and budget)."""
    for key in ("name", "seed", "budget"):
        mine = getattr(sampler, key)
        if state.get(key) != mine:
            raise ValueError(
                f"sampler checkpoint: {key} is {state.get(key)!r}, this run has {mine!r}"
            )


class UniformSampler(Sampler):
    """Independent uniform draws in the box (the paper's Random)."""

    name = "uniform"

    def __init__(
        self, budget: int, bounds: tuple[Any, Any], seed: int = 0, dim: int | None = None
    ) -> None:
        check_sampler_args(budget, bounds, dim)
        super().__init__(budget, bounds, seed, dim)
        self._rng, self._design = initial_design(seed, budget, self.lower, self.upper, self.dim)

    def _draw(self, sim_id: int) -> Draw:
        if sim_id < self.budget:
            params = self._design[sim_id]
        else:
            params = self._rng.uniform(self.lower, self.upper, size=self.dim)
        return Draw(params=params, source="uniform", generation=0)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seed": self.seed,
            "budget": self.budget,
            "handed": self.handed,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check_resume(state, self)
        self.handed = int(state["handed"])
        self._rng.bit_generator.state = state["rng"]
