"""The sampler interface: the server asks for the parameters of the next simulation.

Late binding: the server calls :meth:`Sampler.next` only when a client asks for work, so a
sampler may rewrite every parameter it has not handed out yet (Breed's steering) and can never
touch one already running.

Contract with the server: simulation ids are hand-out indices (the k-th call of :meth:`next`
gives the parameters of sim id k, including new draws for simulations given up after retries);
a simulation sends the time steps ``t = 0..T`` (T = the problem's ``steps``), that is T + 1 of
them. Samplers draw in the problem's sampling space (:class:`breed.problems.Problem`: each
parameter's ``[low, high]``, in log10 for log-scale parameters); the box is all they know.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Draw:
    """Parameters of one simulation and where they came from (recorded in samples.csv)."""

    params: np.ndarray  # shape (d,), float64, within bounds (sampling space)
    source: str = "uniform"  # "uniform" | "proposal" | "halton" | "lhs" | "sobol"
    generation: int = 0  # resampling index s (0: initial design)
    parent: int | None = None  # sim id of the proposal member it was drawn around
    sigma: float | None = None  # sigma of that member when drawn (fraction of each range)

    def __post_init__(self) -> None:
        # A read-only private copy: a handed-out draw can never be changed by anyone (steering
        # only rewrites parameters not handed out yet).
        params = np.array(self.params, dtype=np.float64)
        params.setflags(write=False)
        object.__setattr__(self, "params", params)


def box(bounds: tuple[Any, Any], dim: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(lower, upper)``, scalars shared by ``dim`` axes or arrays of one bound per axis ->
    ``(lower (d,), upper (d,), d)``; one-line ValueError for a box that is not one."""
    try:
        lo, hi = (np.atleast_1d(np.asarray(b, dtype=np.float64)) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"sampler bounds: need (lower, upper), got {bounds!r}") from None
    d = dim if dim is not None else max(lo.size, hi.size)
    if lo.size == 1 and hi.size == 1 and dim is None and np.ndim(bounds[0]) == 0:
        raise ValueError("sampler bounds: scalar bounds need the dimension")
    if int(d) < 1:
        raise ValueError(f"sampler: dimension must be >= 1, got {d}")
    try:
        lo, hi = np.broadcast_to(lo, (int(d),)).copy(), np.broadcast_to(hi, (int(d),)).copy()
    except ValueError:
        raise ValueError(f"sampler bounds: {bounds!r} do not give {d} axes") from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
        raise ValueError(f"sampler bounds: need lower < upper on every axis, got {bounds!r}")
    return lo, hi, int(d)


class Sampler(ABC):
    """Chooses lambda for each simulation; told about losses and finished simulations."""

    name: str = "base"

    def __init__(
        self, budget: int, bounds: tuple[Any, Any], seed: int = 0, dim: int | None = None
    ) -> None:
        self.budget = int(budget)
        self.lower, self.upper, self.dim = box(bounds, dim)
        self.seed = int(seed)
        # the one hand-out count: simulation ids are its values (the table and the
        # checkpoint ask it, none keeps its own)
        self.handed = 0
        # one record per resampling (Breed's); the server logs each to metrics.jsonl and the
        # console. Samplers that never resample keep it empty.
        self.history: list[dict[str, Any]] = []

    def next(self) -> Draw:
        """Parameters of simulation ``handed``, the next to start (called at hand-out time)."""
        draw = self._draw(self.handed)
        self.handed += 1
        return draw

    @abstractmethod
    def _draw(self, sim_id: int) -> Draw:
        """The parameters of simulation ``sim_id`` (= :attr:`handed`), now handed out."""

    def on_losses(
        self, iteration: int, sim_ids: np.ndarray, steps: np.ndarray, losses: np.ndarray
    ) -> np.ndarray | None:
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
