"""The training server: receiver thread + training loop (paper Section 2.2, Appendix A).

``breed server --run-dir DIR`` reads ``DIR/config.resolved.yaml`` and ``DIR/token`` (written by
``breed run``), binds its sockets, writes ``DIR/server.json`` and trains until every simulation
of the budget has been received and every sample in the buffer has been trained on at least
once (or ``training.max_iterations``). Losses of every batch go to the sampler (Breed's
statistics) and to the run log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from breed.protocol import token_from_hex
from breed.receiver import Receiver
from breed.reservoir import buffer_from_config
from breed.runlog import (
    PER_SAMPLE_COLUMNS,
    CsvLog,
    JsonLines,
    atomic_write_bytes,
    atomic_write_json,
    write_table,
)
from breed.sampling import make_sampler
from breed.simtable import COLUMNS, SimTable
from breed.trainer import Trainer
from breed.validation import load_validation, make_validation

log = logging.getLogger("breed.server")


class Server:
    """Wires sampler, simulation table, buffer, receiver and trainer for one run directory."""

    def __init__(self, run_dir: Path, resume: bool = False) -> None:
        self.run_dir = run_dir
        self.cfg: dict[str, Any] = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
        cfg = self.cfg
        self.token = token_from_hex(os.environ.get("BREED_TOKEN")
                                    or (run_dir / "token").read_text())
        seed = cfg["seed"]
        torch.manual_seed(seed)
        if cfg["training"]["threads"]:
            torch.set_num_threads(cfg["training"]["threads"])
        self.solver = {k: cfg["solver"][k] for k in
                       ("grid", "steps", "dt", "alpha", "length", "dtype")}
        self.sampler_lock = threading.Lock()
        self.sampler = make_sampler(cfg)
        lc = cfg["launcher"]
        self.table = SimTable(cfg["study"]["simulations"], self.sampler, self.sampler_lock,
                              lc["max_retries"], lc["on_give_up"])
        self.trainer = Trainer(cfg, seed=seed)
        self.buffer = buffer_from_config(cfg, self.trainer.normalisation)
        self.validation = self._validation_set()
        self.iteration = 0
        self.finished = threading.Event()
        self.released = threading.Event()  # the launcher saw the end: no need to linger
        self.start = time.time()
        self.last_ping = time.monotonic()
        self.failed_jobs_seen: set[str] = set()
        self.job_map: dict[str, str] = {}  # launcher job name -> scheduler job id
        self.last_validation: dict[str, Any] | None = None
        self.receiver = Receiver(
            token=self.token, host=lc["host"], table=self.table, buffer=self.buffer,
            solver=self.solver, status=self.status, on_sim_done=self._on_sim_done,
            on_launcher=self._on_launcher, simulation_timeout=lc["simulation_timeout"])
        self.checkpoint_path = run_dir / "checkpoints" / "checkpoint.pt"
        if resume and self.checkpoint_path.exists():
            self._load_checkpoint()

    # -- set-up -------------------------------------------------------------------------
    def _validation_set(self) -> dict[str, Any]:
        vc, sc = self.cfg["validation"], self.cfg["solver"]
        path = Path(vc["file"]) if vc["file"] else self.run_dir / "validation.npz"
        if not path.exists():
            log.info("making the validation set (%d trajectories) in %s", vc["size"], path)
            make_validation(path, size=vc["size"], seed=vc["seed"], grid=sc["grid"],
                            steps=sc["steps"], dt=sc["dt"], alpha=sc["alpha"],
                            length=sc["length"], bounds=tuple(sc["bounds"]))
        return load_validation(path, expect_solver=sc)

    # -- callbacks from the receiver thread ---------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"finished": self.finished.is_set(), "iteration": self.iteration,
                "sims_done": self.table.done_count(), "sims_assigned": self.table.drawn,
                "in_flight": self.table.in_flight(), "target": self.table.target,
                "wanted_clients": self.table.wanted_clients(
                    self.cfg["launcher"]["max_jobs"]),
                "buffer": self.buffer.stats(), "rejected": dict(self.receiver.counts)}

    def _on_sim_done(self, sim_id: int) -> None:
        with self.sampler_lock:
            self.sampler.on_simulation_done(sim_id, self.cfg["solver"]["steps"] + 1)

    def _on_launcher(self, body: dict[str, Any]) -> None:
        self.last_ping = time.monotonic()
        if body.get("shutdown"):
            self.released.set()
        self.job_map.update(body.get("jobs", {}))
        for job_id in body.get("failed_jobs", []):
            if job_id not in self.failed_jobs_seen:
                self.failed_jobs_seen.add(job_id)
                ids = self.table.fail_job(str(job_id), "client job failed")
                if ids:
                    log.warning("job %s failed; simulations %s handed out again", job_id, ids)

    # -- training loop ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.receiver.start()
        atomic_write_json(self.run_dir / "server.json", {
            "control": self.receiver.control_address, "data": self.receiver.data_addresses,
            "pid": os.getpid(), "host": self.cfg["launcher"]["host"]})
        tc = self.cfg["training"]
        metrics = JsonLines(self.run_dir / "metrics.jsonl")
        per_sample = (CsvLog(self.run_dir / "per_sample_loss.csv", PER_SAMPLE_COLUMNS)
                      if tc["per_sample_log"] else None)
        batch_size = self.cfg["model"]["batch_size"]
        waited_iters, wait_s, train_s = 0, 0.0, 0.0
        t_ready = None
        try:
            while not self._data_finished() and not self.buffer.ready():
                time.sleep(0.01)
            t_ready = time.monotonic()
            received_at_ready = self.buffer.stats()["received"]
            while not self._should_stop():
                t0 = time.monotonic()
                batch = self.buffer.sample_batch(batch_size, timeout=0.5)
                waited = time.monotonic() - t0
                if batch is None:  # FIFO starved, or end of stream
                    wait_s += waited
                    if self._data_finished():
                        self.buffer.close()
                    continue
                if waited > 1e-3:
                    waited_iters += 1
                    wait_s += waited
                t1 = time.monotonic()
                result = self.trainer.step(batch)
                train_s += time.monotonic() - t1
                self.iteration += 1
                with self.sampler_lock:
                    deltas = self.sampler.on_losses(self.iteration, batch.sim_ids, batch.steps,
                                                    result.losses)
                    self.sampler.on_iteration(self.iteration)
                if self.iteration % tc["log_interval"] == 0:
                    stats = self.buffer.stats()
                    elapsed = time.monotonic() - t_ready
                    metrics.write({
                        "kind": "train", "iteration": self.iteration,
                        "time": time.time() - self.start, "batch_loss": result.loss,
                        "batch_loss_std": result.std, "samples_received": stats["received"],
                        "samples_per_s": self.iteration * batch_size / max(elapsed, 1e-9),
                        "received_per_s": (stats["received"] - received_at_ready)
                        / max(elapsed, 1e-9),
                        "buffer_fill": stats["fill"], "waited": waited_iters,
                        "wait_s": wait_s, "train_s": train_s,
                        "receiver_paused_s": self.receiver.paused_s})
                    if per_sample is not None:
                        self._log_samples(per_sample, batch, result, deltas)
                if self.iteration % tc["validation_interval"] == 0:
                    self._validate(metrics)
                if self.iteration % tc["checkpoint_interval"] == 0:
                    self.save_checkpoint()
            if self.iteration and self.iteration % tc["validation_interval"] != 0:
                self._validate(metrics)
        finally:
            metrics.close()
            if per_sample is not None:
                per_sample.close()
        self.save_checkpoint()
        self.trainer.save_model(self.run_dir / "model.pt")
        self.write_samples()
        summary = {"iterations": self.iteration, "wall_time": time.time() - self.start,
                   "train_s": train_s, "wait_s": wait_s, "waited_iterations": waited_iters,
                   "waiting_fraction": waited_iters / max(self.iteration, 1),
                   "sims_done": self.table.done_count(), "target": self.table.target,
                   "rejected": dict(self.receiver.counts), "buffer": self.buffer.stats(),
                   "final_validation": self.last_validation}
        atomic_write_json(self.run_dir / "summary.json", summary)
        self.finished.set()
        return summary

    def _data_finished(self) -> bool:
        return self.table.finished()

    def _should_stop(self) -> bool:
        max_it = self.cfg["training"]["max_iterations"]
        if max_it is not None and self.iteration >= max_it:
            return True
        return self._data_finished() and self.buffer.all_seen()

    def _validate(self, metrics: JsonLines) -> None:
        vals = self.trainer.evaluate(self.validation)
        self.last_validation = {"iteration": self.iteration, **vals}
        metrics.write({"kind": "validation", "iteration": self.iteration,
                       "time": time.time() - self.start, **vals})
        log.info("iteration %d: validation MSE %.4g", self.iteration, vals["val_mse"])

    def _log_samples(self, out: CsvLog, batch: Any, result: Any, deltas: Any) -> None:
        rows = []
        with self.sampler_lock:
            qs = [self.sampler.quality(int(s)) for s in batch.sim_ids]
        sources = {int(s): self.table.records[int(s)].source for s in set(batch.sim_ids)}
        for k, (sim, step) in enumerate(zip(batch.sim_ids, batch.steps, strict=True)):
            rows.append([self.iteration, int(sim), int(step), float(result.losses[k]),
                         result.loss, None if deltas is None else float(deltas[k]), qs[k],
                         int(sources[int(sim)] == "uniform")])
        out.write_rows(rows)

    def write_samples(self) -> None:
        rows = self.table.rows()
        for row in rows:  # scheduler ids, so users can find a simulation's job and its log
            row["job_id"] = self.job_map.get(row["job_id"], row["job_id"])
        write_table(self.run_dir / "samples.csv", rows, COLUMNS)

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        import io

        with self.sampler_lock:
            sampler_state = self.sampler.state_dict()
        state = {"iteration": self.iteration, "trainer": self.trainer.state_dict(),
                 "sampler": sampler_state, "table": self.table.state_dict(),
                 "buffer": self.buffer.state_dict(), "torch_rng": torch.get_rng_state(),
                 "numpy_rng": np.random.get_state()}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def _load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, weights_only=False)
        self.iteration = state["iteration"]
        self.trainer.load_state_dict(state["trainer"])
        self.sampler.load_state_dict(state["sampler"])
        self.table.load_state_dict(state["table"])
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        log.info("resumed from %s at iteration %d", self.checkpoint_path, self.iteration)

    def close(self, linger: float = 0.0) -> None:
        """Keep answering (STOP to clients, pongs) until the launcher releases us or
        ``linger`` s pass, then stop the receiver."""
        self.released.wait(linger)
        self.receiver.stop_event.set()
        self.receiver.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="breed server", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--linger", type=float, default=5.0,
                        help="seconds to keep answering after training ends")
    args = parser.parse_args(argv)
    (args.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = Server(args.run_dir, resume=args.resume)
    except (OSError, ValueError, KeyError) as exc:
        print(f"breed server: {exc}", file=sys.stderr)
        return 2
    try:
        server.run()
    finally:
        server.close(args.linger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
