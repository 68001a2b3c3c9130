"""The sampler interface: the server asks for the parameters of the next simulation.

Late binding: the server calls :meth:`Sampler.next` only when a client asks for work, so a
sampler may rewrite every parameter it has not handed out yet (Breed's steering) and can never
touch one already running.

Contract with the server: simulation ids are hand-out indices (the k-th call of :meth:`next`
gives the parameters of sim id k, including new draws for simulations given up after retries);
a simulation sends the time steps ``t = 0..T`` (T = ``solver.steps``), that is T + 1 of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

DIM = 5  # lambda = (T0, T1, T2, T3, T4)


@dataclass(frozen=True)
class Draw:
    """Parameters of one simulation and where they came from (recorded in samples.csv)."""

    params: np.ndarray  # shape (DIM,), float64, within bounds
    source: str = "uniform"  # "uniform" | "proposal" | "halton" | "lhs" | "sobol"
    generation: int = 0  # resampling index s (0: initial design)
    parent: int | None = None  # sim id of the proposal member it was drawn around
    sigma: float | None = None  # sigma of that member when drawn (K)

    def __post_init__(self) -> None:
        # A read-only private copy: a handed-out draw can never be changed by anyone (steering
        # only rewrites parameters not handed out yet).
        params = np.array(self.params, dtype=np.float64)
        params.setflags(write=False)
        object.__setattr__(self, "params", params)


class Sampler(ABC):
    """Chooses lambda for each simulation; told about losses and finished simulations."""

    name: str = "base"

    def __init__(self, budget: int, bounds: tuple[float, float], seed: int = 0,
                 dim: int = DIM) -> None:
        self.budget = int(budget)
        self.lower, self.upper = float(bounds[0]), float(bounds[1])
        self.seed = int(seed)
        self.dim = dim

    @abstractmethod
    def next(self) -> Draw:
        """Parameters for the next simulation to start (called at hand-out time)."""

    def on_losses(self, iteration: int, sim_ids: np.ndarray, steps: np.ndarray,
                  losses: np.ndarray) -> np.ndarray | None:
        """Per-sample losses of one training batch; returns per-sample deviations if tracked."""
        return None

    def on_simulation_done(self, sim_id: int, steps: int) -> None:  # noqa: B027 (optional hook)
        """All ``steps`` time steps of ``sim_id`` were received (T + 1 for t = 0..T)."""

    def on_iteration(self, iteration: int) -> None:  # noqa: B027 (optional hook)
        """Called after every training iteration (Breed resamples every P of them)."""

    def quality(self, sim_id: int) -> float | None:
        """Q_j of a simulation when the sampler computes it (Breed), else None."""
        return None

    def qualities(self, sim_ids: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`quality` (NaN where undefined), for the per-sample log."""
        out = [self.quality(int(j)) for j in np.asarray(sim_ids).ravel()]
        return np.array([np.nan if q is None else q for q in out], dtype=np.float64)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the parameter sequence from a checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Inverse of :meth:`state_dict`."""
