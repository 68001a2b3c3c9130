"""What a problem is: its parameter space, the fields a client streams, and how to start one.

A :class:`Problem` is the single owner of every fact the rest of breed needs about a solver:
λ's dimension, names and bounds (:class:`Parameter`), the fields of one time step
(:class:`FieldSpec`: name, shape of any rank, dtype, an optional physical range for the output
normalisation), the number of time steps, and the client command the launcher starts
(:class:`ClientCommand`). It is built from the run config by :func:`breed.problems.problem_of`
(a preset such as ``heat2d``, or a ``problem:`` mapping written by the user) and validated
there, so a bad description is one line naming the key, before anything starts.

Sampling space. Samplers draw in the box ``[low, high]`` of each parameter, taken in log10 for
``scale: log`` parameters (a viscosity from 1e-3 to 1e-1 is explored per decade, not per unit);
:meth:`Problem.from_sampling` maps back. The model's inputs are the same coordinates scaled to
``[-1, 1]``, so for linear parameters ``λ' = (λ - c)/h`` with ``c, h`` the centre and half-width.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCALES = ("linear", "log")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Parameter:
    """One entry of λ: its name and bounds (physical units), sampled linearly or in log10."""

    name: str
    low: float
    high: float
    scale: str = "linear"

    @property
    def bounds(self) -> tuple[float, float]:
        """Bounds in sampling space."""
        if self.scale == "log":
            return math.log10(self.low), math.log10(self.high)
        return self.low, self.high


@dataclass(frozen=True)
class FieldSpec:
    """One field of a time step; ``range`` (physical) fixes its normalisation, else the server
    estimates it from the first samples it receives (:mod:`breed.learning.normalisation`)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float64"
    range: tuple[float, float] | None = None
    bounded: bool = False  # values outside ``range`` (1 % slack) are refused (heat: physics)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def wire_shape(self) -> tuple[int, int]:
        """How a block travels: rows of the first axis, the other axes flattened."""
        return self.shape[0], self.size // self.shape[0]


@dataclass(frozen=True)
class ClientCommand:
    """How the launcher starts one client job: any executable, ``ranks`` MPI ranks."""

    command: tuple[str, ...]
    ranks: int = 1
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    name: str
    parameters: tuple[Parameter, ...]
    fields: tuple[FieldSpec, ...]
    steps: int  # T: a client sends the time steps t = 0..T
    client: ClientCommand
    settings: dict[str, Any] = field(default_factory=dict)  # handed to clients in ASSIGN
    statistic: str = "unit_std"  # of λ, histogrammed in Fig. 4 (breed.study.deviation)

    # -- parameters ---------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return len(self.parameters)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    @property
    def lower(self) -> np.ndarray:
        """Lower bounds in sampling space, shape (d,)."""
        return np.array([p.bounds[0] for p in self.parameters], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([p.bounds[1] for p in self.parameters], dtype=np.float64)

    @property
    def log_mask(self) -> np.ndarray:
        return np.array([p.scale == "log" for p in self.parameters], dtype=bool)

    def to_sampling(self, params: np.ndarray | Sequence[float]) -> np.ndarray:
        """Physical λ (..., d) -> sampling space."""
        z = np.array(params, dtype=np.float64)
        mask = self.log_mask
        if mask.any():
            z[..., mask] = np.log10(z[..., mask])
        return z

    def from_sampling(self, z: np.ndarray | Sequence[float]) -> np.ndarray:
        """Sampling space (..., d) -> physical λ."""
        lam = np.array(z, dtype=np.float64)
        mask = self.log_mask
        if mask.any():
            lam[..., mask] = np.power(10.0, lam[..., mask])
        return lam

    # -- fields -------------------------------------------------------------------------------
    @property
    def sample_size(self) -> int:
        """Values of one sample: every field of a time step, flattened and concatenated."""
        return sum(f.size for f in self.fields)

    @property
    def offsets(self) -> list[int]:
        """Where each field starts in a sample."""
        out, at = [], 0
        for f in self.fields:
            out.append(at)
            at += f.size
        return out

    # -- identity -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What clients are told (ASSIGN) and what fingerprints a validation set."""
        return {
            "name": self.name,
            "steps": self.steps,
            "parameters": [asdict(p) for p in self.parameters],
            "fields": [
                {"name": f.name, "shape": list(f.shape), "dtype": f.dtype} for f in self.fields
            ],
            "settings": self.settings,
        }

    def identity(self) -> dict[str, Any]:
        """Everything that decides a trajectory: not how a client is started, nor the dtype
        fields travel in."""
        out = self.describe()
        out["fields"] = [{"name": f["name"], "shape": f["shape"]} for f in out["fields"]]
        return json.loads(json.dumps(out, default=float))

    def fingerprint(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
