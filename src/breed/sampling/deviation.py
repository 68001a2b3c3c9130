"""Loss-deviation statistics of Breed (paper Section 3.1, eqs. 4-6).

Per training batch i: mu and sigma of its per-sample losses; for each sample (sim j, step t) in it
``delta = max(l - mu, 0) / sigma`` (eq. 4), comparable across network states. Each (j, t) keeps a
running mean of its deltas over the batches it appeared in (eq. 6, inner mean) and a count, never
the list of values: memory is O(S * (T + 1)). ``Q_j`` is the mean over the time steps of j (eq. 6),
defined only once every step of j has been seen (the set Lambda_J^(i) of eq. 5). Every time the Q
of an eligible simulation changes it gets the current batch index as a stamp: the proposal window
is the last N simulations in order of Q updates.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def as_numpy(values: Any) -> np.ndarray:
    """A flat numpy view of an array or tensor (detached and moved to the CPU if a tensor)."""
    if hasattr(values, "detach"):  # torch.Tensor, possibly on a GPU or requiring grad
        values = values.detach().cpu().numpy()
    return np.asarray(values).ravel()


def batch_moments(losses: np.ndarray) -> tuple[float, float]:
    """``(mu, sigma)`` of eq. 4 for one batch: mean and population standard deviation of its
    finite per-sample losses (NaN if none is finite). The one place they are computed: the
    deviations, the run log's ``batch_loss``/``batch_loss_std`` and the per-sample log."""
    losses = np.asarray(losses, dtype=np.float64)
    good = losses[np.isfinite(losses)]
    if not good.size:
        return float("nan"), float("nan")
    return float(good.mean()), float(good.std())


def batch_deviation(losses: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Eq. 4 for one batch: ``(delta, mu, sigma)``; non-finite losses get NaN and are ignored.

    sigma is the population standard deviation of the batch. A batch whose losses are all equal
    (sigma = 0) gives delta = 0: no sample deviates from the mean.
    """
    losses = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(losses)
    delta = np.full(losses.shape, np.nan)
    if not finite.any():
        return delta, float("nan"), float("nan")
    good = losses[finite]
    mu, sigma = batch_moments(good)
    excess = np.maximum(good - mu, 0.0)
    delta[finite] = excess / sigma if sigma > 0 else 0.0
    return delta, mu, sigma


class LossDeviation:
    """Running deviation statistics per (simulation, time step) and Q per simulation."""

    def __init__(self, steps: int, capacity: int = 0) -> None:
        if int(steps) < 0:
            raise ValueError(f"solver.steps: must be >= 0, got {steps}")
        self.steps = int(steps)
        self.width = self.steps + 1  # time steps t = 0..T
        self.batches = 0  # batches seen (the clock of the Q-update order)
        self._alloc(max(int(capacity), 1))

    def _alloc(self, rows: int) -> None:
        self.mean = np.zeros((rows, self.width))  # running mean of delta over I_jt
        self.count = np.zeros((rows, self.width), dtype=np.int64)  # |I_jt|
        self.seen = np.zeros(rows, dtype=np.int64)  # distinct steps seen at least once
        self.expected = np.full(rows, self.width, dtype=np.int64)  # steps of the simulation
        self.stamp = np.full(rows, -1, dtype=np.int64)  # batch of the last Q update, -1: none

    def _grow(self, rows: int) -> None:
        if rows <= len(self.seen):
            return
        old = (self.mean, self.count, self.seen, self.expected, self.stamp)
        self._alloc(max(rows, 2 * len(self.seen)))
        for new, src in zip(
            (self.mean, self.count, self.seen, self.expected, self.stamp), old, strict=True
        ):
            new[: len(src)] = src

    def update(self, sim_ids: Any, steps: Any, losses: Any) -> np.ndarray:
        """Fold one batch into the statistics; returns delta per sample (eq. 4), input order."""
        sim_ids, steps = as_numpy(sim_ids), as_numpy(steps)
        losses = as_numpy(losses).astype(np.float64, copy=False)
        if not (len(sim_ids) == len(steps) == len(losses)):
            raise ValueError(
                f"on_losses: sim_ids, steps and losses differ in length "
                f"({len(sim_ids)}, {len(steps)}, {len(losses)})"
            )
        if len(losses) == 0:
            return np.empty(0)
        for name, arr in (("sim_ids", sim_ids), ("steps", steps)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"on_losses: {name} must be integers, got dtype {arr.dtype}")
        sim_ids, steps = sim_ids.astype(np.int64), steps.astype(np.int64)
        if sim_ids.min() < 0:
            raise ValueError(f"on_losses: negative sim id {sim_ids.min()}")
        if steps.min() < 0 or steps.max() > self.steps:
            bad = steps.min() if steps.min() < 0 else steps.max()
            raise ValueError(f"on_losses: step {bad} outside 0..{self.steps} (solver.steps)")
        self._grow(int(sim_ids.max()) + 1)
        delta, _, _ = batch_deviation(losses)
        ok = np.isfinite(delta)
        # One value per (j, t) per batch: a duplicate in one batch has the same loss (same network
        # state), and eq. 6 averages over the set I_jt of batches, not over occurrences.
        key = sim_ids[ok] * self.width + steps[ok]
        key, first = np.unique(key, return_index=True)
        d = delta[ok][first]
        flat_mean, flat_count = self.mean.reshape(-1), self.count.reshape(-1)
        old_count = flat_count[key]
        flat_count[key] = old_count + 1
        flat_mean[key] += (d - flat_mean[key]) / (old_count + 1)
        rows = key // self.width
        newly = rows[old_count == 0]
        if len(newly):
            np.add.at(self.seen, newly, 1)
        touched = np.unique(rows)
        eligible = touched[self.seen[touched] >= self.expected[touched]]
        self.stamp[eligible] = self.batches
        self.batches += 1
        return delta

    def set_steps(self, sim_id: int, steps: int) -> None:
        """Simulation ``sim_id`` has ``steps`` time steps, t = 0..steps-1 (on_simulation_done)."""
        if not 1 <= int(steps) <= self.width:
            raise ValueError(
                f"on_simulation_done: {steps} time steps, expected 1..{self.width} "
                f"(t = 0..solver.steps)"
            )
        if int(sim_id) < 0:
            raise ValueError(f"on_simulation_done: negative sim id {sim_id}")
        j = int(sim_id)
        self._grow(j + 1)
        self.expected[j] = int(steps)
        if self.seen[j] >= self.expected[j] and self.stamp[j] < 0:
            self.stamp[j] = max(self.batches - 1, 0)

    def eligible(self) -> np.ndarray:
        """Ids of the simulations in Lambda_J^(i) (eq. 5): every step seen at least once."""
        return np.flatnonzero(self.stamp >= 0)

    def quality(self, sim_ids: Any) -> np.ndarray:
        """Q_j (eq. 6) per id; NaN for simulations not (yet) in Lambda_J^(i)."""
        ids = np.asarray(sim_ids, dtype=np.int64).ravel()
        out = np.full(len(ids), np.nan)
        known = (ids >= 0) & (ids < len(self.seen))
        known[known] = self.stamp[ids[known]] >= 0
        j = ids[known]
        # Unseen entries are 0, so the row sum over the seen count is the mean over t.
        out[known] = self.mean[j].sum(axis=1) / self.seen[j]
        return out

    def window(self, n: int) -> np.ndarray:
        """The last ``n`` eligible simulations in order of Q updates, oldest first.

        Ties (simulations updated by the same batch) are ordered by sim id.
        """
        ids = self.eligible()
        order = np.lexsort((ids, self.stamp[ids]))
        return ids[order][-int(n) :] if n > 0 else ids[:0]

    def state_dict(self) -> dict[str, Any]:
        used = np.flatnonzero((self.seen > 0) | (self.expected != self.width))
        rows = int(used[-1]) + 1 if len(used) else 0
        return {
            "steps": self.steps,
            "batches": self.batches,
            "rows": rows,
            "mean": self.mean[:rows].tolist(),
            "count": self.count[:rows].tolist(),
            "seen": self.seen[:rows].tolist(),
            "expected": self.expected[:rows].tolist(),
            "stamp": self.stamp[:rows].tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["steps"]) != self.steps:
            raise ValueError(
                f"sampler checkpoint: steps is {state['steps']}, this run has {self.steps}"
            )
        rows = int(state["rows"])
        self._alloc(max(rows, len(self.seen)))
        self.batches = int(state["batches"])
        if rows:
            self.mean[:rows] = np.asarray(state["mean"], dtype=np.float64)
            self.count[:rows] = np.asarray(state["count"], dtype=np.int64)
            self.seen[:rows] = state["seen"]
            self.expected[:rows] = state["expected"]
            self.stamp[:rows] = state["stamp"]
