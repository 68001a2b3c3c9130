"""A run's results, written once at its end (rank 0): the final checkpoint, ``model.pt``,
``samples.csv`` and ``summary.json`` — last, because it marks the run finished — or, for a
collection run, the trajectories as a validation set.

Writes that fail (a full disk) are retried while the receiver keeps answering; when they keep
failing, :class:`ResultsNotWritten` tells the launcher to stop rather than restart a server
that would fail the same way, with the last checkpoint kept for ``breed run --resume``.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from breed import rundir
from breed.fsio import atomic_write_json
from breed.learning.validation import save_validation
from breed.runlog import write_table
from breed.server.checkpoint import Checkpointer

if TYPE_CHECKING:
    from breed.server.server import Server

log = logging.getLogger("breed.server")
FINAL_WRITE_S = 120.0  # how long the final writes are retried (someone may free the disk)


class ResultsNotWritten(RuntimeError):
    """The run trained to its end, but its results could not be written."""

    def __init__(self, reason: str | None, checkpointer: Checkpointer) -> None:
        kept = (
            "no checkpoint was written"
            if checkpointer.last_iteration is None
            else f"the checkpoint of iteration {checkpointer.last_iteration} is kept"
        )
        super().__init__(
            f"the final results could not be written ({reason}); {kept}: make "
            "room and run `breed run --resume RUN_DIR`"
        )


def write_samples(server: Server) -> None:
    """``samples.csv``, one row per simulation, with the scheduler's job ids (so users can
    find a simulation's job and its log)."""
    rows = server.sims.rows()
    for row in rows:
        row["job_id"] = server.job_map.get(row["job_id"], row["job_id"])
    write_table(server.run_dir / rundir.SAMPLES, rows, server.sims.columns)


def write_results(server: Server, summary: dict[str, Any], patience: float = FINAL_WRITE_S) -> None:
    """Final checkpoint, model, samples and summary, each retried for ``patience`` s."""
    deadline, delay = time.monotonic() + patience, 1.0
    while not server.save_checkpoint():
        if time.monotonic() + delay > deadline:
            raise ResultsNotWritten(server.checkpointer.last_error, server.checkpointer)
        time.sleep(delay)
        delay = min(2 * delay, 30.0)
    summary["checkpoint"] = server.checkpointer.summary()
    while True:
        try:
            server.trainer.save_model(server.run_dir / rundir.MODEL)
            write_samples(server)
            atomic_write_json(server.run_dir / rundir.SUMMARY, summary)
            return
        except OSError as exc:
            log.error(
                "final results not written (%s); retrying in %g s", exc.strerror or exc, delay
            )
            if time.monotonic() + delay > deadline:
                raise ResultsNotWritten(exc.strerror or str(exc), server.checkpointer) from None
            time.sleep(delay)
            delay = min(2 * delay, 30.0)


def write_collection(server: Server) -> dict[str, Any]:
    """Collection run: wait for every simulation, write them as a validation set."""
    sims = server.sims
    while not sims.finished():
        server.finished.wait(0.05)
    rows = {r.sim_id: r for r in sims.records.values() if r.status == "done"}
    summary = {
        "mode": "collect",
        "wall_time": time.time() - server.start,
        "sims_done": len(rows),
        "target": server.cfg["study"]["simulations"],
        **server.receiver.message_counts(),
        "problem": server.problem.name,
    }
    try:
        assert server.store is not None
        params = np.array([rows[j].params for j in range(server.store.size)])
        vset = server.store.validation_set(params, server.cfg["validation"]["seed"])
    except (KeyError, RuntimeError) as exc:
        server.failure = f"collection incomplete: {exc}"
        server.finished.set()
        raise ResultsNotWritten(server.failure, server.checkpointer) from None
    save_validation(vset, server.run_dir / rundir.TRAJECTORIES)
    write_samples(server)
    summary["validation_fingerprint"] = vset.fingerprint
    atomic_write_json(server.run_dir / rundir.SUMMARY, summary)
    server.finished.set()
    return summary
