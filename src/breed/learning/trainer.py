"""The surrogate u_theta(lambda, t) and its training step (paper Section 4, App. B.1).

By default the paper's MLP maps d + 1 inputs (lambda' in [-1, 1]^d and t' = t/T; heat: d = 5)
through L hidden layers of H ReLU neurons to the S values of a sample (heat: the M*M nodes;
paper: M=64, H in {16, 32, 64}, L in {1, 2, 3}); ``model.factory: "pkg.module:callable"``
builds any ``torch.nn.Module`` instead, called as ``factory(n_inputs, output_shape,
**model.options)``. Adam, learning rate 1e-3, MSE loss. Every training step returns the
per-sample losses (``reduction="none"``, mean over the S outputs of each sample) with their
batch mean and standard deviation: the inputs of Breed's loss deviation (eq. 4).

Units: model units of :mod:`breed.learning.normalisation`. Every loss and validation metric is in these
units; the buffer (:mod:`breed.learning.reservoir`) stores samples already normalised, and
:meth:`Trainer.predict` and :func:`load_model` give fields back in physical units.

Multi-rank training: :meth:`Trainer._build` is the one place that creates the model and the
optimiser; when ``torch.distributed`` is initialised with more than one rank it wraps the model
in DistributedDataParallel (gradients averaged across ranks). Every rank builds the same initial
weights from the seed, and DDP broadcasts rank 0's anyway.
"""

from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from breed.fsio import atomic_write
from breed.learning.buffer import Batch
from breed.learning.normalisation import Normalisation
from breed.problems import problem_of

if TYPE_CHECKING:
    from breed.learning.validation import ValidationSet

MODEL_FORMAT = "breed-surrogate-v2"
EVAL_ELEMENTS = 1 << 22  # outputs per evaluation chunk (16 MiB of float32)


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
            raise ValueError(
                f"model.device: {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device(spec) if index else torch.device("cuda")
    raise ValueError(f"model.device: {spec!r} is not auto, cpu, cuda or cuda:N")


def build_mlp(n_inputs: int, n_outputs: int, hidden: int, layers: int) -> nn.Sequential:
    """d+1 -> L x (H, ReLU) -> S, the paper's fully connected surrogate."""
    if min(n_inputs, n_outputs, hidden, layers) < 1:
        raise ValueError(
            f"model: inputs, outputs, hidden and layers must be >= 1, got "
            f"{n_inputs}, {n_outputs}, {hidden}, {layers}"
        )
    mods: list[nn.Module] = []
    width = n_inputs
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    mods.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*mods)


def resolve_factory(spec: str) -> Any:
    """``"pkg.module:callable"`` -> the callable (``model.factory``); ValueError naming why."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"model.factory: {spec!r} is not 'package.module:callable'")
    try:
        target = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise ValueError(f"model.factory: cannot import {module!r}: {exc}") from None
    except AttributeError:
        raise ValueError(f"model.factory: {module!r} has no {name!r}") from None
    if not callable(target):
        raise ValueError(f"model.factory: {spec!r} is not callable")
    return target


def build_model(arch: dict[str, Any]) -> nn.Module:
    """The model of ``arch`` (what ``model.pt`` records): the MLP, or a factory's module."""
    if arch.get("factory"):
        model = resolve_factory(arch["factory"])(
            arch["n_inputs"], (arch["n_outputs"],), **(arch.get("options") or {})
        )
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"model.factory: {arch['factory']} returned "
                f"{type(model).__name__}, not a torch.nn.Module"
            )
        with torch.no_grad():  # a wrong output size is the config's error, not the first step's
            try:
                shape = tuple(model(torch.zeros((2, arch["n_inputs"]))).shape)
            except Exception as exc:  # noqa: BLE001 - the user's module: any failure is theirs
                raise ValueError(
                    f"model.factory: {arch['factory']} fails on a (2, "
                    f"{arch['n_inputs']}) input: {exc}".splitlines()[0]
                ) from None
        if shape != (2, arch["n_outputs"]):
            raise ValueError(
                f"model.factory: {arch['factory']} maps (2, {arch['n_inputs']}) "
                f"inputs to {shape}, expected (2, {arch['n_outputs']}) outputs"
            )
        return model
    return build_mlp(arch["n_inputs"], arch["n_outputs"], arch["hidden"], arch["layers"])


def time_ranges(steps: int) -> dict[str, tuple[int, int]]:
    """Inclusive step ranges of the time-resolved validation metrics.

    Named after the paper's T = 100 (t=0, 1-10, 11-50, 51-100); for another T the edges scale
    to 10% and 50% of T (rounded half up), e.g. T=20 -> 0, 1-2, 3-10, 11-20. A range that comes
    out empty (tiny T) has no entry, and its metric is None.
    """
    e1 = max(1, math.floor(0.1 * steps + 0.5))
    e2 = max(e1, math.floor(0.5 * steps + 0.5))
    out = {"t0": (0, 0)}
    for name, (a, b) in {
        "t1_10": (1, e1),
        "t11_50": (e1 + 1, e2),
        "t51_100": (e2 + 1, steps),
    }.items():
        if a <= min(b, steps):
            out[name] = (a, min(b, steps))
    return out


def validation_metrics(err: np.ndarray) -> dict[str, float | None]:
    """Metrics from the per-(trajectory, step) MSE ``err`` of shape (n, T+1) (normalised units).

    Every (trajectory, step) has the same M*M nodes, so ``val_mse`` (mean over trajectories x
    steps x nodes) is the mean of ``err``. The per-trajectory error is each trajectory's MSE over
    its steps and nodes; its 99th percentile and maximum are reported as AL4PDE/OGAS do (its
    mean is ``val_mse`` itself, every trajectory having T+1 steps, so it is not repeated).
    """
    err = np.asarray(err, dtype=np.float64)
    steps = err.shape[1] - 1
    traj = err.mean(axis=1)
    out: dict[str, float | None] = {
        "val_mse": float(err.mean()),
        "traj_err_p99": float(np.quantile(traj, 0.99)),
        "traj_err_max": float(traj.max()),
        "val_mse_no_t0": float(err[:, 1:].mean()) if steps >= 1 else None,
    }
    ranges = time_ranges(steps)
    for name in ("t0", "t1_10", "t11_50", "t51_100"):
        if name in ranges:
            a, b = ranges[name]
            out[f"val_mse_{name}"] = float(err[:, a : b + 1].mean())
        else:
            out[f"val_mse_{name}"] = None
    return out


@dataclass(frozen=True)
class StepResult:
    """One training iteration: what the sampler (eq. 4) and the run log need."""

    loss: float  # batch MSE that was minimised (normalised units)
    losses: np.ndarray  # (B,) float64 per-sample MSE, mean over the outputs; eq. 4's mu and
    # sigma are taken over the whole (multi-rank) batch by breed.sampling.deviation


class Surrogate:
    """A trained model with its normalisation: predicts fields in physical units (inference)."""

    def __init__(
        self,
        model: nn.Module,
        normalisation: Normalisation,
        shapes: list[tuple[int, ...]],
        device: torch.device,
    ) -> None:
        self.model, self.normalisation, self.device = model, normalisation, device
        self.shapes = [tuple(sh) for sh in shapes]

    @torch.no_grad()
    def predict(self, params: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Samples (physical units, float64) for lambda of shape (d,) or (n, d) and time steps
        t (scalar or (n,)): the field's shape (or (n, *shape)) for a one-field problem, else
        (S,) / (n, S) with the fields concatenated."""
        params = np.asarray(params, dtype=np.float64)
        single = params.ndim == 1
        x = self.normalisation.inputs(np.atleast_2d(params), t)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(torch.from_numpy(x).to(self.device)).cpu().numpy()
        finally:
            self.model.train(was_training)
        out = self.normalisation.unfield(out)
        if len(self.shapes) == 1:
            out = out.reshape(-1, *self.shapes[0])
        return out[0] if single else out


def load_model(path: str | Path, device: str = "cpu") -> Surrogate:
    """A :class:`Surrogate` from a file written by :meth:`Trainer.save_model`."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"model: no such file {str(path)!r}") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise ValueError(f"model: {path} is not a breed model file ({MODEL_FORMAT})")
    model = build_model(data["model"])
    model.load_state_dict(data["state_dict"])
    dev = resolve_device(device)
    return Surrogate(
        model.to(dev),
        Normalisation.from_dict(data["normalisation"]),
        [tuple(f["shape"]) for f in data["problem"]["fields"]],
        dev,
    )


class Trainer:
    """The surrogate, Adam and MSE on one device; one :meth:`step` per batch.

    Built from a validated run config (:func:`breed.config.validate`): ``model.*`` (hidden,
    layers, lr, device, factory, options), the problem (:func:`breed.problems.problem_of`:
    lambda's dimension and bounds, the fields, the steps) and ``seed``. The same seed gives the
    same initial weights on any device.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        seed: int | None = None,
        device: str | None = None,
        ddp: bool | None = None,
    ) -> None:
        mc = cfg["model"]
        self.problem = problem_of(cfg)
        self.normalisation = Normalisation.from_problem(self.problem)
        self.arch = {
            "factory": mc.get("factory"),
            "options": dict(mc.get("options") or {}),
            "hidden": int(mc["hidden"]),
            "layers": int(mc["layers"]),
            "n_inputs": self.normalisation.n_inputs,
            "n_outputs": self.problem.sample_size,
        }
        self.lr = float(mc["lr"])
        self.seed = int(cfg.get("seed", 0) if seed is None else seed)
        self.device = resolve_device(mc.get("device", "auto") if device is None else device)
        self.iteration = 0
        self._build(ddp)

    def _build(self, ddp: bool | None) -> None:
        """Create the model (seeded, on CPU then moved) and the optimiser; wrap for DDP."""
        with torch.random.fork_rng(devices=[]):  # seed the init without touching global RNG
            torch.manual_seed(self.seed)
            model = build_model(self.arch)
        self.model = model.to(self.device)  # the bare module: state, evaluation, saving
        self.net: nn.Module = self.model  # what the training step calls
        if ddp is None:
            ddp = (
                torch.distributed.is_available()
                and torch.distributed.is_initialized()
                and torch.distributed.get_world_size() > 1
            )
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
            raise ValueError(
                "batch is not normalised: create the buffer with "
                "normalisation=trainer.normalisation"
            )
        if batch.targets.shape[1:] != (self.arch["n_outputs"],):
            raise ValueError(
                f"batch targets have shape {batch.targets.shape}, the model "
                f"outputs {self.arch['n_outputs']} values"
            )
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
        return StepResult(loss=float(loss.detach()), losses=losses)

    def idle_step(self) -> None:
        """Take part in a DDP step without data: a zero-weight pass, so every rank joins the
        gradient all-reduce (a rank that ran dry never blocks the others)."""
        x = torch.zeros((1, self.arch["n_inputs"]), dtype=torch.float32, device=self.device)
        self.net.train()
        loss = self.net(x).sum() * 0.0
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.iteration += 1

    # -- validation and inference ---------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, validation: ValidationSet, chunk_elements: int = EVAL_ELEMENTS
    ) -> dict[str, float | None]:
        """Metrics of :func:`validation_metrics` on a validation set (``.params`` (n, d)
        physical, ``.fields`` (n, T+1, *sample shape) physical, see :mod:`breed.learning.validation`),
        in model units.

        Rows of (trajectory, step) go through the model in chunks of about ``chunk_elements``
        outputs, so memory stays bounded whatever the set's size. For a model ending in a
        linear layer, that layer is folded into physical units (``W h``, ``b h + c``) so the
        targets are used as stored, with one in-place subtraction and a norm per row: about 3x
        faster than normalising every target, and exact to float32 rounding, since
        ``(u_hat - u)/h = u_hat' - u'``. Other models are compared in model units.
        """
        norm = self.normalisation
        params = np.asarray(validation.params, dtype=np.float64)
        fields = validation.fields
        n, t1 = fields.shape[0], fields.shape[1]
        size = self.arch["n_outputs"]
        if math.prod(fields.shape[2:]) != size or params.shape != (n, norm.dim):
            raise ValueError(
                f"validation set of shape {fields.shape} (params {params.shape}) "
                f"does not fit this problem ({norm.dim} parameters, {size} values "
                "per sample)"
            )
        if t1 - 1 != norm.steps:
            raise ValueError(f"validation set has {t1 - 1} steps, the run has {norm.steps}")
        inputs = norm.inputs(np.repeat(params, t1, axis=0), np.tile(np.arange(t1), n))
        targets = fields.reshape(n * t1, size)
        center, half = norm.vectors()
        one = norm.single()
        model = self.model
        fold = isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)
        if fold:
            assert isinstance(model, nn.Sequential)
            body, last = model[:-1], model[-1]
            h = torch.as_tensor(half, dtype=torch.float32, device=self.device)
            c = torch.as_tensor(center, dtype=torch.float32, device=self.device)
            assert isinstance(last, nn.Linear)
            if one is not None:  # one scale for every value: scalars (the paper's case)
                weight_k = (last.weight * one[1]).t()
                bias_k = last.bias * one[1] + one[0]
            else:
                weight_k = (last.weight * h[:, None]).t()
                bias_k = last.bias * h + c
            inv_h = None if one is not None else (1.0 / h)
        scale = 1.0 / (size * one[1] * one[1]) if one is not None else 1.0 / size
        err = np.empty(n * t1, dtype=np.float64)
        rows = max(1, chunk_elements // size)
        was_training = self.model.training
        self.model.eval()
        try:
            for a in range(0, n * t1, rows):
                b = min(a + rows, n * t1)
                x = torch.from_numpy(inputs[a:b]).to(self.device)
                if fold:
                    y = torch.as_tensor(targets[a:b], dtype=torch.float32, device=self.device)
                    diff = torch.addmm(bias_k, body(x), weight_k).sub_(y)  # physical units
                    if inv_h is not None:
                        diff.mul_(inv_h)
                else:
                    y = torch.from_numpy(norm.field(targets[a:b])).to(self.device)
                    diff = self.model(x).sub_(y)
                sq = torch.linalg.vector_norm(diff, dim=1).double().square_() * scale
                err[a:b] = sq.cpu().numpy()
        finally:
            self.model.train(was_training)
        return validation_metrics(err.reshape(n, t1))

    def predict(self, params: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """Fields in physical units, see :meth:`Surrogate.predict`."""
        shapes = [f.shape for f in self.problem.fields]
        return Surrogate(self.model, self.normalisation, shapes, self.device).predict(params, t)

    # -- persistence ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Snapshot (deep copy) of the model and optimiser for a checkpoint: later steps do not
        change it. The RNG states are the server's."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "iteration": self.iteration,
                "normalisation": self.normalisation.to_dict(),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`; copies, so ``state`` and this trainer share nothing
        (Adam would otherwise update moment tensors aliased with another optimiser's)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.iteration = int(state.get("iteration", 0))
        saved = Normalisation.from_dict(state["normalisation"])
        # in place: the buffer shares this object (a scale estimated from the first samples)
        self.normalisation.center, self.normalisation.half = saved.center, saved.half

    def save_model(self, path: str | Path) -> None:
        """Final weights, architecture, normalisation and problem: enough for
        :func:`load_model` to predict fields in physical units later. Written atomically."""
        path = Path(path)
        data = {
            "format": MODEL_FORMAT,
            "model": self.arch,
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "normalisation": self.normalisation.to_dict(),
            "problem": self.problem.describe(),
            "lr": self.lr,
            "seed": self.seed,
            "iteration": self.iteration,
        }
        atomic_write(path, lambda fh: torch.save(data, fh))
