"""Model units: the one owner of how λ, t and the fields are scaled for the surrogate.

Inputs: each parameter in the problem's sampling space (log10 for log-scale parameters) maps
its box to ``[-1, 1]``, ``λ' = (z - c)/h`` with ``c, h`` the box's centre and half-width, and the
time step to ``t' = t/T``. Outputs: each field ``f`` of a sample maps ``u' = (u - c_f)/h_f``,
with ``c_f, h_f`` from the field's declared ``range`` (its centre and half-width: the heat
preset declares the parameter bounds, which the maximum principle makes a bound of every
temperature) or, for a field without one, from the first samples received: the mean and
standard deviation of its values over the buffer's first ``watermark`` samples, frozen then
(before the first training step) and kept in checkpoints and ``model.pt``.

Every loss and validation metric is in these units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from breed.problems.problem import Problem


@dataclass(eq=False)
class Normalisation:
    lower: np.ndarray  # (d,) sampling-space box
    upper: np.ndarray
    log_mask: np.ndarray  # (d,) bool: the parameter is taken in log10
    steps: int  # T
    sizes: list[int]  # values of each field in a sample
    center: np.ndarray | None = None  # (K,) per field; None until frozen
    half: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.lower = np.asarray(self.lower, dtype=np.float64)
        self.upper = np.asarray(self.upper, dtype=np.float64)
        self.log_mask = np.asarray(self.log_mask, dtype=bool)
        if not np.all(self.lower < self.upper):
            raise ValueError(f"normalisation bounds: {self.lower} must be below {self.upper}")
        if self.steps < 1:
            raise ValueError(f"normalisation steps must be >= 1, got {self.steps}")
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self._c_in = 0.5 * (self.lower + self.upper)
        self._h_in = 0.5 * (self.upper - self.lower)

    @classmethod
    def from_problem(cls, problem: Problem) -> Normalisation:
        ranges = [f.range for f in problem.fields]
        center = half = None
        bounded = [r for r in ranges if r is not None]
        if len(bounded) == len(ranges):
            center = np.array([0.5 * (lo + hi) for lo, hi in bounded])
            half = np.array([0.5 * (hi - lo) for lo, hi in bounded])
        return cls(
            problem.lower,
            problem.upper,
            problem.log_mask,
            problem.steps,
            [f.size for f in problem.fields],
            center,
            half,
        )

    # -- inputs ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.lower)

    @property
    def n_inputs(self) -> int:
        return self.dim + 1

    @property
    def sample_size(self) -> int:
        return int(self.offsets[-1])

    def inputs(self, params: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Model inputs ``(..., d+1)`` float32 from physical λ ``(..., d)`` and time steps."""
        params = np.asarray(params, dtype=np.float64)
        if params.shape[-1:] != (self.dim,):
            raise ValueError(f"parameters must have {self.dim} values per row, got {params.shape}")
        if self.log_mask.any():
            params = params.copy()
            params[..., self.log_mask] = np.log10(params[..., self.log_mask])
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), params.shape[:-1])
        out = np.empty(params.shape[:-1] + (self.n_inputs,), dtype=np.float32)
        out[..., : self.dim] = (params - self._c_in) / self._h_in
        out[..., self.dim] = t / self.steps
        return out

    # -- outputs --------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self.center is not None

    def freeze(self, samples: np.ndarray) -> None:
        """Per-field mean and standard deviation of raw ``samples`` (n, S): the output scale of
        fields without a declared range (once; declared ranges are kept)."""
        if self.frozen:
            return
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[1] != self.sample_size or len(samples) == 0:
            raise ValueError(f"freeze: need (n, {self.sample_size}) samples, got {samples.shape}")
        center, half = [], []
        for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True):
            values = samples[:, a:b]
            mu, sd = float(values.mean()), float(values.std())
            center.append(mu)
            half.append(sd if sd > 1e-12 * max(1.0, abs(mu)) else 1.0)  # constant: shift only
        self.center, self.half = np.array(center), np.array(half)

    def _need(self) -> tuple[np.ndarray, np.ndarray]:
        if self.center is None or self.half is None:
            raise ValueError("output normalisation not frozen yet (before the watermark)")
        return self.center, self.half

    def field_into(self, out: np.ndarray, raw: np.ndarray) -> None:
        """``out[...] = (raw - c) / h`` per field, float32, without a temporary."""
        center, half = self._need()
        for k, (a, b) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            np.subtract(raw[..., a:b], np.float32(center[k]), out=out[..., a:b], casting="unsafe")
            out[..., a:b] *= np.float32(1.0 / half[k])

    def field(self, u: np.ndarray) -> np.ndarray:
        """Normalised float32 sample(s) from physical values."""
        u = np.asarray(u)
        out = np.empty(u.shape, dtype=np.float32)
        self.field_into(out, u)
        return out

    def unfield(self, v: np.ndarray) -> np.ndarray:
        """Physical values (float64) from normalised ones: the inverse of :meth:`field`."""
        center, half = self.vectors()
        return np.asarray(v, dtype=np.float64) * half + center

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-value ``(c, h)`` of shape (S,), float64 (to fold into an output layer)."""
        center, half = self._need()
        sizes = np.diff(self.offsets)
        return np.repeat(center, sizes), np.repeat(half, sizes)

    def single(self) -> tuple[float, float] | None:
        """``(c, h)`` when one affine map serves the whole sample (one field, or all fields
        alike), for code that applies it as two scalars (the ingest process)."""
        if (
            self.center is None
            or self.half is None
            or not (np.all(self.center == self.center[0]) and np.all(self.half == self.half[0]))
        ):
            return None
        return float(self.center[0]), float(self.half[0])

    # -- persistence ----------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Normalisation) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable (frozen at the watermark)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "log": self.log_mask.tolist(),
            "steps": self.steps,
            "sizes": list(self.sizes),
            "center": None if self.center is None else self.center.tolist(),
            "half": None if self.half is None else self.half.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        return cls(
            np.asarray(data["lower"]),
            np.asarray(data["upper"]),
            np.asarray(data["log"], dtype=bool),
            int(data["steps"]),
            [int(n) for n in data["sizes"]],
            None if data["center"] is None else np.asarray(data["center"]),
            None if data["half"] is None else np.asarray(data["half"]),
        )
