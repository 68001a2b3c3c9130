"""A collection run: the problem's own client on the validation design, through the launcher.

How a problem without an in-process solver gets its validation set (``breed make-validation``,
or ``breed run`` without ``validation.file``): a ``training.mode: collect`` run over the design
(:class:`breed.sampling.qmc.ValidationDesign`), whose server keeps whole trajectories
(:class:`breed.server.collect.TrajectoryStore`) instead of training.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

from breed import rundir
from breed.learning.validation import ValidationSet, load_validation


def collection_config(cfg: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The run config of the collection of ``cfg``'s validation set."""
    from breed.config import validate

    out = copy.deepcopy(cfg)
    out["output"] = str(run_dir)
    out["study"] = {**out["study"], "simulations": cfg["validation"]["size"]}
    out["sampler"] = {**out["sampler"], "name": "validation"}
    out["training"] = {
        **out["training"],
        "mode": "collect",
        "progress": False,
        "tensorboard": False,
        "per_sample_log": False,
    }
    out["launcher"] = {**out["launcher"], "on_give_up": "drop", "server_ranks": 1}
    out["validation"] = {**out["validation"], "file": None}
    return validate(out)


def collect_validation(cfg: dict[str, Any], output: str | Path) -> ValidationSet:
    """Run the problem's client on the validation design in ``OUTPUT.collect`` (removed once
    it succeeded); returns the validation set (the caller saves it). RuntimeError (one line)
    if the collection fails."""
    from breed.launcher import runner  # runner -> collection at run time: import here

    output = Path(output)
    run_dir = output.with_name(output.name + ".collect")
    ccfg = collection_config(cfg, run_dir)
    backend = runner.check_runtime(ccfg)
    rundir.create(run_dir, overwrite=True)  # a failed earlier attempt is moved aside
    with rundir.RunLock(run_dir, rundir.LAUNCHER_LOCK, "breed run (validation)"):
        code = runner.run(
            ccfg, run_dir, ["make-validation", "--output", str(output)], backend=backend
        )
    if code != 0:
        raise RuntimeError(
            f"collecting the validation set failed (exit {code}); see {run_dir / rundir.LOGS}"
        )
    vset = load_validation(run_dir / rundir.TRAJECTORIES)
    shutil.rmtree(run_dir, ignore_errors=True)  # in memory now; a failed one stays, for its logs
    return vset
