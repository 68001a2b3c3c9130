"""Samplers: the server asks for the parameters of the next simulation (one module per sampler)."""

from __future__ import annotations

import importlib
from typing import Any

from breed.sampling.base import DIM, Draw, Sampler

SAMPLERS: dict[str, str] = {
    "uniform": "breed.sampling.uniform:UniformSampler",
    "halton": "breed.sampling.qmc:HaltonSampler",
    "lhs": "breed.sampling.qmc:LHSSampler",
    "sobol": "breed.sampling.qmc:SobolSampler",
    "breed": "breed.sampling.breed:BreedSampler",
}


def make_sampler(cfg: dict[str, Any]) -> Sampler:
    """The sampler of a validated run config (``breed.config.validate`` fills every key)."""
    try:
        opts = cfg["sampler"]
        name = opts["name"]
        budget, bounds, seed = cfg["study"]["simulations"], cfg["solver"]["bounds"], cfg["seed"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"make_sampler: config lacks {exc}; pass a validated config") from None
    try:
        module, cls = SAMPLERS[name].split(":")
    except KeyError:
        raise ValueError(f"sampler.name: unknown sampler {name!r} "
                         f"(one of {sorted(SAMPLERS)})") from None
    factory = getattr(importlib.import_module(module), cls)
    if name == "breed":
        return factory(budget, tuple(bounds), seed, DIM, steps=cfg["solver"]["steps"],
                       **opts["breed"])
    return factory(budget, tuple(bounds), seed, DIM)


__all__ = ["DIM", "SAMPLERS", "Draw", "Sampler", "make_sampler"]
