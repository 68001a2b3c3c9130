"""The surrogate u_theta(lambda, t) of the paper and its training step (Section 4, App. B.1).

An MLP maps 6 inputs (lambda' in [-1, 1]^5 and t' = t/T) through L hidden layers of H ReLU
neurons to the M*M nodes of the temperature field (paper: M=64, H in {16, 32, 64},
L in {1, 2, 3}); Adam, learning rate 1e-3, MSE loss. Every training step returns the per-sample
losses (``reduction="none"``, mean over the M*M outputs of each sample) with their batch mean and
standard deviation: the inputs of Breed's loss deviation (eq. 4).

Units. Inputs and targets are normalised as docs/ARCHITECTURE.md fixes (:class:`Normalisation`):
``lambda' = (lambda - c)/h``, ``t' = t/T``, ``u' = (u - c)/h`` with ``c = (lo+hi)/2``,
``h = (hi-lo)/2`` of ``solver.bounds``. Every loss and validation metric is in these units; the
buffer (:mod:`breed.reservoir`) stores samples already normalised, and :meth:`Trainer.predict`
and :func:`load_model` give fields back in Kelvin.

Multi-rank training: :meth:`Trainer._build` is the one place that creates the model and the
optimiser; when ``torch.distributed`` is initialised with more than one rank it wraps the model
in DistributedDataParallel (gradients averaged across ranks). Every rank builds the same initial
weights from the seed, and DDP broadcasts rank 0's anyway.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from breed.reservoir import DIM, INPUTS, Batch

MODEL_FORMAT = "breed-surrogate-v1"
EVAL_ELEMENTS = 1 << 22  # outputs per evaluation chunk (16 MiB of float32)


@dataclass(frozen=True)
class Normalisation:
    """Affine maps between physical and model units (docs/ARCHITECTURE.md).

    ``c = (lo+hi)/2`` and ``h = (hi-lo)/2`` of ``solver.bounds`` serve both lambda and the field:
    the maximum principle keeps every temperature within the bounds, so ``u' in [-1, 1]``.
    Time steps map to ``t' = t/T`` in [0, 1].
    """

    lo: float
    hi: float
    steps: int  # T

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"normalisation bounds: {self.lo} must be below {self.hi}")
        if self.steps < 1:
            raise ValueError(f"normalisation steps must be >= 1, got {self.steps}")

    @property
    def c(self) -> float:
        return 0.5 * (self.lo + self.hi)

    @property
    def h(self) -> float:
        return 0.5 * (self.hi - self.lo)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Normalisation:
        """From a validated run config (``solver.bounds``, ``solver.steps``)."""
        lo, hi = cfg["solver"]["bounds"]
        return cls(float(lo), float(hi), int(cfg["solver"]["steps"]))

    def inputs(self, params: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Model inputs ``(..., 6)`` float32 from lambda ``(..., 5)`` (K) and time steps t."""
        params = np.asarray(params, dtype=np.float64)
        if params.shape[-1:] != (DIM,):
            raise ValueError(f"parameters must have {DIM} values per row, got {params.shape}")
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), params.shape[:-1])
        out = np.empty(params.shape[:-1] + (INPUTS,), dtype=np.float32)
        out[..., :DIM] = (params - self.c) / self.h
        out[..., DIM] = t / self.steps
        return out

    def field(self, u: np.ndarray) -> np.ndarray:
        """Normalised float32 field ``(u - c)/h`` from Kelvin."""
        return ((np.asarray(u, dtype=np.float64) - self.c) / self.h).astype(np.float32)

    def unfield(self, v: np.ndarray) -> np.ndarray:
        """Kelvin (float64) from a normalised field: the inverse of :meth:`field`."""
        return np.asarray(v, dtype=np.float64) * self.h + self.c

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "steps": self.steps}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalisation:
        return cls(float(data["lo"]), float(data["hi"]), int(data["steps"]))


def resolve_device(spec: str = "auto") -> torch.device:
    """``model.device``: auto (cuda if present, else cpu), cpu, cuda or cuda:N."""
    spec = str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        index = spec[5:]
        if index and not index.isdigit():
            raise ValueError(f"model.device: {spec!r} is not auto, cpu, cuda or cuda:N")
        if not torch.cuda.is_available():
            raise ValueError(f"model.device: {spec!r} requested but CUDA is not available")
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(f"model.device: {spec!r} but only {torch.cuda.device_count()} "
                             "CUDA device(s) exist")
        return torch.device(spec if index else "cuda", int(index) if index else None)
    raise ValueError(f"model.device: {spec!r} is not auto, cpu, cuda or cuda:N")


def build_mlp(grid: int, hidden: int, layers: int) -> nn.Sequential:
    """6 -> L x (H, ReLU) -> M*M, the paper's fully connected surrogate."""
    if min(grid, hidden, layers) < 1:
        raise ValueError(f"model: grid, hidden and layers must be >= 1, got "
                         f"{grid}, {hidden}, {layers}")
    mods: list[nn.Module] = []
    width = INPUTS
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, grid * grid))
    return nn.Sequential(*mods)


def time_ranges(steps: int) -> dict[str, tuple[int, int]]:
    """Inclusive step ranges of the time-resolved validation metrics.

    Named after the paper's T = 100 (t=0, 1-10, 11-50, 51-100); for another T the edges scale
    to 10% and 50% of T (rounded half up), e.g. T=20 -> 0, 1-2, 3-10, 11-20. A range that comes
    out empty (tiny T) has no entry, and its metric is None.
    """
    e1 = max(1, math.floor(0.1 * steps + 0.5))
    e2 = max(e1, math.floor(0.5 * steps + 0.5))
    out = {"t0": (0, 0)}
    for name, (a, b) in {"t1_10": (1, e1), "t11_50": (e1 + 1, e2),
                         "t51_100": (e2 + 1, steps)}.items():
        if a <= min(b, steps):
            out[name] = (a, min(b, steps))
    return out


def validation_metrics(err: np.ndarray) -> dict[str, float | None]:
    """Metrics from the per-(trajectory, step) MSE ``err`` of shape (n, T+1) (normalised units).

    Every (trajectory, step) has the same M*M nodes, so ``val_mse`` (mean over trajectories x
    steps x nodes) is the mean of ``err``. The per-trajectory error is each trajectory's MSE over
    its steps and nodes; its mean, 99th percentile and maximum are reported as AL4PDE/OGAS do.
    """
    err = np.asarray(err, dtype=np.float64)
    steps = err.shape[1] - 1
    traj = err.mean(axis=1)
    out: dict[str, float | None] = {
        "val_mse": float(err.mean()),
        "traj_err_mean": float(traj.mean()),
        "traj_err_p99": float(np.quantile(traj, 0.99)),
        "traj_err_max": float(traj.max()),
        "val_mse_no_t0": float(err[:, 1:].mean()) if steps >= 1 else None,
    }
    ranges = time_ranges(steps)
    for name in ("t0", "t1_10", "t11_50", "t51_100"):
        if name in ranges:
            a, b = ranges[name]
            out[f"val_mse_{name}"] = float(err[:, a:b + 1].mean())
        else:
            out[f"val_mse_{name}"] = None
    return out


@dataclass(frozen=True)
class StepResult:
    """One training iteration: what the sampler (eq. 4) and the run log need."""

    loss: float  # batch MSE that was minimised (normalised units)
    losses: np.ndarray  # (B,) float64 per-sample MSE, mean over the M*M outputs
    mean: float  # mean of ``losses`` (mu(l^(i)) of eq. 4; equals ``loss`` up to rounding)
    std: float  # population standard deviation of ``losses`` (sigma(l^(i)) of eq. 4)
    sim_ids: np.ndarray  # (B,) of the batch, for convenience
    steps: np.ndarray  # (B,)


class Surrogate:
    """A trained model with its normalisation: predicts fields in Kelvin (inference only)."""

    def __init__(self, model: nn.Module, normalisation: Normalisation, grid: int,
                 device: torch.device) -> None:
        self.model, self.normalisation, self.grid, self.device = model, normalisation, grid, device

    @torch.no_grad()
    def predict(self, params: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Fields (K, float64) for lambda (K) of shape (5,) or (n, 5) and time steps t (scalar
        or (n,)): shape (M, M) or (n, M, M)."""
        params = np.asarray(params, dtype=np.float64)
        single = params.ndim == 1
        x = self.normalisation.inputs(np.atleast_2d(params), t)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(torch.from_numpy(x).to(self.device)).cpu().numpy()
        finally:
            self.model.train(was_training)
        out = self.normalisation.unfield(out).reshape(-1, self.grid, self.grid)
        return out[0] if single else out


def load_model(path: str | Path, device: str = "cpu") -> Surrogate:
    """A :class:`Surrogate` from a file written by :meth:`Trainer.save_model`."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"model: no such file {str(path)!r}") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise ValueError(f"model: {path} is not a breed model file ({MODEL_FORMAT})")
    arch = data["model"]
    model = build_mlp(arch["grid"], arch["hidden"], arch["layers"])
    model.load_state_dict(data["state_dict"])
    dev = resolve_device(device)
    return Surrogate(model.to(dev), Normalisation.from_dict(data["normalisation"]),
                     arch["grid"], dev)


class Trainer:
    """The paper's MLP, Adam and MSE on one device; one :meth:`step` per batch.

    Built from a validated run config (:func:`breed.config.validate`): ``model.*`` (hidden,
    layers, lr, device), ``solver.grid``, ``solver.steps``, ``solver.bounds`` and ``seed``.
    The same seed gives the same initial weights on any device.
    """

    def __init__(self, cfg: dict[str, Any], seed: int | None = None, device: str | None = None,
                 ddp: bool | None = None) -> None:
        mc, sc = cfg["model"], cfg["solver"]
        self.grid, self.hidden, self.layers = int(sc["grid"]), int(mc["hidden"]), int(mc["layers"])
        self.lr = float(mc["lr"])
        self.seed = int(cfg.get("seed", 0) if seed is None else seed)
        self.solver = {k: sc[k] for k in ("grid", "steps", "dt", "alpha", "length", "bounds")
                       if k in sc}
        self.normalisation = Normalisation.from_config(cfg)
        self.device = resolve_device(mc.get("device", "auto") if device is None else device)
        self.iteration = 0
        self._build(ddp)

    def _build(self, ddp: bool | None) -> None:
        """Create the model (seeded, on CPU then moved) and the optimiser; wrap for DDP."""
        with torch.random.fork_rng(devices=[]):  # seed the init without touching global RNG
            torch.manual_seed(self.seed)
            model = build_mlp(self.grid, self.hidden, self.layers)
        self.model = model.to(self.device)  # the bare module: state, evaluation, saving
        self.net: nn.Module = self.model  # what the training step calls
        if ddp is None:
            ddp = (torch.distributed.is_available() and torch.distributed.is_initialized()
                   and torch.distributed.get_world_size() > 1)
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)

    # -- training -------------------------------------------------------------------------
    def step(self, batch: Batch, weight: float = 1.0) -> StepResult:
        """One Adam step on the batch's MSE; returns the batch and per-sample losses.

        ``weight`` scales the loss that is differentiated (multi-rank DDP: each rank's share
        of the global batch, so the averaged gradient is the global batch's); the reported
        losses are unscaled."""
        if not batch.normalised:
            raise ValueError("batch is not normalised: create the buffer with "
                             "normalisation=trainer.normalisation")
        if batch.targets.shape[1:] != (self.grid * self.grid,):
            raise ValueError(f"batch targets have shape {batch.targets.shape}, the model "
                             f"outputs {self.grid * self.grid} values")
        x = torch.from_numpy(np.ascontiguousarray(batch.inputs)).to(self.device)
        y = torch.from_numpy(np.ascontiguousarray(batch.targets)).to(self.device)
        self.net.train()
        pred = self.net(x)
        per_sample = F.mse_loss(pred, y, reduction="none").mean(dim=1)
        loss = per_sample.mean()
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight if weight != 1.0 else loss).backward()
        self.optimizer.step()
        self.iteration += 1
        losses = per_sample.detach().to("cpu", torch.float64).numpy()
        return StepResult(loss=float(loss.detach()), losses=losses, mean=float(losses.mean()),
                          std=float(losses.std()), sim_ids=batch.sim_ids, steps=batch.steps)

    def idle_step(self) -> None:
        """Take part in a DDP step without data: a zero-weight pass, so every rank joins the
        gradient all-reduce (a rank that ran dry never blocks the others)."""
        x = torch.zeros((1, 6), dtype=torch.float32, device=self.device)
        self.net.train()
        loss = self.net(x).sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1

    # -- validation and inference ---------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, validation: Any, chunk_elements: int = EVAL_ELEMENTS
                 ) -> dict[str, float | None]:
        """Metrics of :func:`validation_metrics` on a validation set (``.params`` (n, 5) in K,
        ``.fields`` (n, T+1, M, M) in K, see :mod:`breed.validation`), in normalised units.

        Rows of (trajectory, step) go through the model in chunks of about ``chunk_elements``
        outputs, so memory stays bounded whatever the set's size. The output layer is folded
        into Kelvin (``W h``, ``b h + c``) so the targets are used as stored, with one in-place
        subtraction and a norm per row: about 3x faster than normalising every target, and
        exact to float32 rounding, since ``(u_hat - u)/h = u_hat' - u'``.
        """
        params = np.asarray(validation.params, dtype=np.float64)
        fields = validation.fields
        n, t1 = fields.shape[0], fields.shape[1]
        m2 = self.grid * self.grid
        if fields.shape[2:] != (self.grid, self.grid) or params.shape != (n, DIM):
            raise ValueError(f"validation set of shape {fields.shape} (params {params.shape}) "
                             f"does not fit a {self.grid}x{self.grid} model")
        if t1 - 1 != self.normalisation.steps:
            raise ValueError(f"validation set has {t1 - 1} steps, the run has "
                             f"{self.normalisation.steps}")
        norm = self.normalisation
        inputs = norm.inputs(np.repeat(params, t1, axis=0), np.tile(np.arange(t1), n))
        targets = fields.reshape(n * t1, m2)
        body, last = self.model[:-1], self.model[-1]
        weight_k = (last.weight * norm.h).t()
        bias_k = last.bias * norm.h + norm.c
        scale = 1.0 / (m2 * norm.h * norm.h)
        err = np.empty(n * t1, dtype=np.float64)
        rows = max(1, chunk_elements // m2)
        was_training = self.model.training
        self.model.eval()
        try:
            for a in range(0, n * t1, rows):
                b = min(a + rows, n * t1)
                x = torch.from_numpy(inputs[a:b]).to(self.device)
                y = torch.as_tensor(targets[a:b], dtype=torch.float32, device=self.device)
                diff = torch.addmm(bias_k, body(x), weight_k).sub_(y)  # K
                sq = torch.linalg.vector_norm(diff, dim=1).double().square_() * scale
                err[a:b] = sq.cpu().numpy()
        finally:
            self.model.train(was_training)
        return validation_metrics(err.reshape(n, t1))

    def predict(self, params: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Fields in Kelvin, see :meth:`Surrogate.predict`."""
        return Surrogate(self.model, self.normalisation, self.grid, self.device).predict(params, t)

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Snapshot (deep copy) of the model and optimiser for a checkpoint: later steps do not
        change it. The RNG states are the server's."""
        return copy.deepcopy({"model": self.model.state_dict(),
                              "optimizer": self.optimizer.state_dict(),
                              "iteration": self.iteration})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; copies, so ``state`` and this trainer share nothing
        (Adam would otherwise update moment tensors aliased with another optimiser's)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.iteration = int(state.get("iteration", 0))

    def save_model(self, path: str | Path) -> None:
        """Final weights, architecture, normalisation and solver settings: enough for
        :func:`load_model` to predict fields in Kelvin later. Written atomically."""
        path = Path(path)
        data = {
            "format": MODEL_FORMAT,
            "model": {"grid": self.grid, "hidden": self.hidden, "layers": self.layers},
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "normalisation": self.normalisation.to_dict(),
            "solver": self.solver, "lr": self.lr, "seed": self.seed,
            "iteration": self.iteration,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(data, tmp)
        os.replace(tmp, path)
