"""Validation sets of any problem, made by its own client through the launcher.

A collection run is an ordinary ``breed run`` of the problem with ``training.mode: collect``
and the ``validation`` sampler (the validation design, :func:`breed.learning.validation.halton_params`,
in order): the launcher starts the problem's clients as for training, the server receives and
checks their steps through the same data path, but stores whole trajectories
(:class:`TrajectoryStore`) instead of training, and writes them as a validation set
(``trajectories.npz``). Simulations are retried like any others, never redrawn
(``on_give_up: drop``): a design point that cannot be computed fails the collection.

``breed run`` collects its run's set this way before its server starts (in
``RUN_DIR/validation.npz.collect/``, then ``RUN_DIR/validation.npz``), and
``breed make-validation --config RUN.yaml --output FILE`` does it for a study.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from breed.problems.problem import Problem


class TrajectoryStore:
    """Where a collection run's receiver puts samples: every (simulation, step), nothing
    evicted, never full. The buffer interface the receiver uses."""

    kind = "trajectories"
    normalisation = None  # raw values: a validation set is physical

    def __init__(self, problem: Problem, size: int) -> None:
        self.problem, self.size = problem, size
        self.values = np.zeros((size, problem.steps + 1, problem.sample_size), dtype=np.float32)
        self.have = np.zeros((size, problem.steps + 1), dtype=bool)
        self._lock = threading.Lock()
        self._closed = False
        self.received = 0

    def can_accept(self) -> bool:
        return True

    def put(
        self,
        params: np.ndarray,
        step: int,
        values: np.ndarray,
        sim_id: int,
        timeout: float | None = None,
    ) -> bool:
        with self._lock:
            self._store(int(sim_id), int(step), values)
        return True

    def offer_many(
        self,
        params: np.ndarray,
        steps: np.ndarray,
        fields: np.ndarray,
        sim_ids: np.ndarray,
        normalised: bool = False,
    ) -> int:
        with self._lock:
            for s, t, v in zip(sim_ids, steps, fields, strict=True):
                self._store(int(s), int(t), v)
        return len(sim_ids)

    def _store(self, sim_id: int, step: int, values: np.ndarray) -> None:
        if not 0 <= sim_id < self.size:
            raise ValueError(f"collection: simulation {sim_id} outside the design of {self.size}")
        self.values[sim_id, step] = np.asarray(values).reshape(-1)
        if not self.have[sim_id, step]:
            self.have[sim_id, step] = True
            self.received += 1

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "capacity": int(self.have.size),
            "fill": self.received,
            "received": self.received,
            "unseen": 0,
        }

    def validation_set(self, params: np.ndarray, seed: int) -> Any:
        """The collected trajectories as a validation set (one field: its own shape)."""
        from breed.learning.validation import ValidationSet

        missing = np.argwhere(~self.have)
        if len(missing):
            s, t = missing[0]
            raise RuntimeError(
                f"collection incomplete: simulation {s} step {t} (and "
                f"{len(missing) - 1} more) never arrived"
            )
        fields = self.values
        if len(self.problem.fields) == 1:
            fields = fields.reshape(
                self.size, self.problem.steps + 1, *self.problem.fields[0].shape
            )
        return ValidationSet(
            np.asarray(params, dtype=np.float64), fields, self.problem.identity(), int(seed)
        )
