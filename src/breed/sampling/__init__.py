"""Samplers: the server asks for the parameters of the next simulation (one module per sampler)."""

from __future__ import annotations

import importlib
from typing import Any

from breed.sampling.base import Draw, Sampler

SAMPLERS: dict[str, str] = {
    "uniform": "breed.sampling.uniform:UniformSampler",
    "halton": "breed.sampling.qmc:HaltonSampler",
    "lhs": "breed.sampling.qmc:LHSSampler",
    "sobol": "breed.sampling.qmc:SobolSampler",
    "breed": "breed.sampling.breed:BreedSampler",
    "validation": "breed.sampling.qmc:ValidationDesign",  # training.mode: collect
}


def make_sampler(cfg: dict[str, Any]) -> Sampler:
    """The sampler of a validated run config (``breed.config.validate`` fills every key)."""
    from breed.problems import problem_of

    try:
        opts = cfg["sampler"]
        name = opts["name"]
        budget, seed = cfg["study"]["simulations"], cfg["seed"]
        problem = problem_of(cfg)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"make_sampler: config lacks {exc}; pass a validated config") from None
    bounds, dim = (problem.lower, problem.upper), problem.dim
    try:
        module, cls = SAMPLERS[name].split(":")
    except KeyError:
        raise ValueError(
            f"sampler.name: unknown sampler {name!r} (one of {sorted(SAMPLERS)})"
        ) from None
    factory = getattr(importlib.import_module(module), cls)
    if name == "breed":
        return factory(budget, bounds, seed, dim, steps=problem.steps, **opts["breed"])
    if name == "validation":
        return factory(budget, bounds, cfg["validation"]["seed"], dim)
    return factory(budget, bounds, seed, dim)


__all__ = ["SAMPLERS", "Draw", "Sampler", "make_sampler"]
