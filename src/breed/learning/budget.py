"""The training budget: how many iterations a run trains, and how fast it may spend them.

One owner of ``training.iterations``, ``training.iterations_per_simulation`` and
``training.deterministic`` as facts: the server asks :func:`iteration_budget` when training
stops, the reservoir whether to recycle samples after the stream, and :func:`check_budget`
refuses contradictory settings before a run starts (one line naming the key, exit 2).
"""

from __future__ import annotations

from typing import Any

from breed.config import ConfigError


def iteration_budget(cfg: dict[str, Any]) -> int | None:
    """Iterations the run trains in all: ``training.iterations``, or n per simulation of the
    study (``iterations_per_simulation`` x ``study.simulations``); None: until the data is
    seen (timing-dependent)."""
    tc = cfg["training"]
    if tc.get("iterations") is not None:
        return int(tc["iterations"])
    per = tc.get("iterations_per_simulation")
    return None if per is None else int(per) * int(cfg["study"]["simulations"])


def per_simulation(cfg: dict[str, Any]) -> int | None:
    """n, the iterations per received simulation (None: no pace)."""
    per = cfg["training"].get("iterations_per_simulation")
    return None if per is None else int(per)


def deterministic(cfg: dict[str, Any]) -> bool:
    return bool(cfg["training"].get("deterministic", False))


def check_budget(cfg: dict[str, Any]) -> None:
    """Settings the schema cannot relate to each other; :class:`ConfigError` on a
    contradiction."""
    tc, per = cfg["training"], per_simulation(cfg)
    budget, sims = iteration_budget(cfg), int(cfg["study"]["simulations"])
    key = (
        "training.iterations"
        if tc["iterations"] is not None
        else ("training.iterations_per_simulation")
    )
    if deterministic(cfg) and per is None:
        raise ConfigError(
            "training.deterministic: needs training.iterations_per_simulation (the fixed "
            "number of iterations trained per ingested simulation)"
        )
    if budget is None:
        return
    if cfg["buffer"]["kind"] != "reservoir":
        raise ConfigError(
            f"{key}: a budget is spent on the reservoir after "
            "the stream; buffer.kind fifo trains on each sample once"
        )
    if tc["max_iterations"] is not None and tc["max_iterations"] < budget:
        raise ConfigError(
            f"{key}: {budget} is more than training.max_iterations {tc['max_iterations']}"
        )
    if per is not None and tc["iterations"] is not None and tc["iterations"] < per * sims:
        raise ConfigError(
            f"training.iterations: {tc['iterations']} is less than "
            f"training.iterations_per_simulation {per} x study.simulations {sims} = {per * sims}"
        )
    ranks = cfg.get("launcher", {}).get("server_ranks", 1)
    if per is not None and ranks > 1:
        flag = "deterministic" if deterministic(cfg) else "iterations_per_simulation"
        raise ConfigError(
            f"training.{flag}: needs launcher.server_ranks 1 (the pace is rank 0's; got {ranks})"
        )
