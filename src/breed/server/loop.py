"""The training loop of one server rank: batches from the reservoir until the run's end rule
holds (every simulation in and every sample seen, and the iteration budget spent), losses to
the sampler, and rank 0's records of it (metrics.jsonl and TensorBoard, per_sample_loss.csv).

Split from :mod:`breed.server.server`, which wires the parts and answers the launcher: this
module is only what happens between two iterations.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from breed import rundir
from breed.learning.budget import iteration_budget
from breed.runlog import PER_SAMPLE_COLUMNS, CsvLog, JsonLines, MetricsLog
from breed.sampling.base import Sampler
from breed.sampling.deviation import batch_moments

if TYPE_CHECKING:
    from breed.server.server import Server

log = logging.getLogger("breed.server")


class LoopClock:
    """Where the loop's time went: waiting for data, training, since the first batch."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.waited = 0
        self.wait_s = 0.0
        self.train_s = 0.0
        self.samples = 0
        self.last_validated = -1

    def starved(self, seconds: float, after_start: bool) -> None:
        if after_start:
            self.wait_s += seconds

    def batch(self, waited: float) -> None:
        if self.first is None:
            self.first = time.monotonic()
        if waited > 1e-3:
            self.waited += 1
            self.wait_s += waited

    def trained(self, seconds: float, samples: int) -> None:
        self.train_s += seconds
        self.samples += samples

    def elapsed(self) -> float:
        return 0.0 if self.first is None else time.monotonic() - self.first

    def metrics(self) -> dict[str, float]:
        return {
            "samples_per_s": self.samples / max(self.elapsed(), 1e-9),
            "waited": self.waited,
            "wait_s": self.wait_s,
            "train_s": self.train_s,
        }

    def summary(self, iterations: int) -> dict[str, float]:
        return {
            "train_loop_s": self.elapsed(),
            "samples_trained": self.samples,
            "waiting_fraction": self.waited / max(iterations, 1),
            "waited_iterations": self.waited,
            **self.metrics(),
        }


class TrainingLoop:
    """One rank's iterations over ``server``'s reservoir, trainer and sampler."""

    def __init__(self, server: Server) -> None:
        self.srv = server
        self.clock = LoopClock()
        # a resumed run logged its earlier resamplings already
        self.resamples_logged = len(server.sampler.history) if server.sampler is not None else 0

    def run(self) -> None:
        """Train to the end, then validate the final model once more (rank 0)."""
        srv, tc = self.srv, self.srv.cfg["training"]
        tb_dir = srv.run_dir / rundir.TENSORBOARD if tc["tensorboard"] else None
        metrics = MetricsLog(srv.run_dir / rundir.METRICS, tb_dir) if srv.root else None
        per_sample = (
            CsvLog(srv.run_dir / rundir.PER_SAMPLE, PER_SAMPLE_COLUMNS)
            if tc["per_sample_log"] and srv.root
            else None
        )
        try:
            self._iterate(metrics, per_sample)
            if metrics is not None and srv.iteration and srv.iteration != self.clock.last_validated:
                srv.phase = "final validation"
                self.validate(metrics)
            srv.phase = "writing results"
        finally:
            if metrics is not None:
                metrics.close()
            if per_sample is not None:
                per_sample.close()

    def _iterate(self, metrics: JsonLines | None, per_sample: CsvLog | None) -> None:
        srv, clock = self.srv, self.clock
        tc, size = srv.cfg["training"], srv.coll.size
        batch_size = srv.cfg["model"]["batch_size"]
        max_it, budget = tc["max_iterations"], iteration_budget(srv.cfg)
        while True:
            if srv.root and srv.link is not None:
                for sim_id in srv.sharded().collect_completions():
                    srv.on_sim_done(sim_id)
            t0 = time.monotonic()
            if self._hold():
                clock.starved(time.monotonic() - t0, srv.iteration > 0)
                continue
            # with a budget the reservoir recycles after the stream: "all seen" is read before
            # the draw, so a batch holding the last unseen samples is trained, never dropped
            seen_before = budget is not None and srv.buffer.finished()
            batch = srv.buffer.sample_batch(batch_size, timeout=0.05 if size == 1 else 0.002)
            ag = srv.coll.agree(
                samples=0 if batch is None else len(batch),
                all_seen=seen_before
                if budget is not None
                else batch is None and srv.buffer.finished(),  # a drawn batch is trained
                data_finished=srv.root
                and (srv.sims.finished() if srv.order is None else srv.order.drained),
                stop=max_it is not None and srv.iteration >= max_it,
            )
            if ag.data_finished and not srv.buffer.closed:
                srv.buffer.close()  # end of stream: the reservoir stops recycling samples
            spent = budget is None or srv.iteration >= budget  # the same on every rank
            if ag.stop or (ag.data_finished and ag.all_seen and spent):
                return
            if ag.samples == 0:
                clock.starved(time.monotonic() - t0, srv.iteration > 0)
                continue
            clock.batch(batch.waited if batch is not None else 0.0)
            srv.phase = "training"
            t1 = time.monotonic()
            # DDP averages gradients over ranks: weight each rank by its share of the global
            # batch so the step is the global batch's MSE; a rank without data steps with 0
            weight = size * (0 if batch is None else len(batch)) / ag.samples
            if batch is not None:
                mine = (batch.sim_ids, batch.steps, srv.trainer.step(batch, weight=weight).losses)
            else:
                srv.trainer.idle_step()
                mine = (np.empty(0), np.empty(0), np.empty(0))
            clock.trained(time.monotonic() - t1, ag.samples)
            ids, steps, losses = srv.coll.gather_losses(*mine, batch_size)
            if not srv.root:
                continue
            assert metrics is not None  # rank 0 logs
            with srv.sampler_lock:
                sampler = srv.root_sampler()
                deltas = sampler.on_losses(srv.iteration, ids, steps, losses)
                sampler.on_iteration(srv.iteration)
                self._log_resamplings(metrics, sampler)
            if srv.iteration % tc["log_interval"] == 0:
                srv.watch_launcher()
                mu, sigma = batch_moments(losses)
                metrics.write(
                    {
                        "kind": "train",
                        "iteration": srv.iteration,
                        "time": time.time() - srv.start,
                        "batch_loss": mu,
                        "batch_loss_std": sigma,
                        **self._buffer_metrics(),
                        **clock.metrics(),
                    }
                )
                if per_sample is not None:
                    self._log_samples(per_sample, ids, steps, losses, deltas, mu)
            if srv.iteration % tc["validation_interval"] == 0:
                self.validate(metrics)
                clock.last_validated = srv.iteration
            if srv.checkpointer.due(srv.iteration):
                srv.save_checkpoint()

    def _hold(self) -> bool:
        """Wait for the next simulation instead of training (the pace of
        ``iterations_per_simulation``; deterministic mode: ingest in id order)."""
        srv = self.srv
        if srv.order is not None and not srv.order.advance(srv.iteration):
            srv.order.wait(0.05)
            return True
        if srv.pace is not None and srv.pace.hold(srv.iteration):
            time.sleep(0.01)
            return True
        return False

    def _log_resamplings(self, metrics: JsonLines, sampler: Sampler) -> None:
        """One ``resample`` row per new record of the sampler's history (metrics.jsonl and
        TensorBoard: generation, K, r(s), proposal share, window Q quantiles, sigma, ESS)."""
        for record in sampler.history[self.resamples_logged :]:
            row = {"kind": "resample", "time": time.time() - self.srv.start, **record}
            row["iteration"] = record.get("iteration", self.srv.iteration)
            metrics.write(row)
            log.info(
                "resampling %d at iteration %d: %d pending, r = %.2f, %d from the proposal",
                record.get("generation", 0),
                row["iteration"],
                record.get("K", 0),
                record.get("r", float("nan")),
                record.get("proposal", 0),
            )
        self.resamples_logged = len(sampler.history)

    def _buffer_metrics(self) -> dict[str, Any]:
        stats = self.srv.buffer.stats()
        receiver = self.srv.receiver
        return {
            "samples_received": stats["received"],
            "buffer_fill": stats["fill"],
            "receiver_paused_s": receiver.paused_s,
            "receiver_longest_pause_s": receiver.active.longest_stop,
        }

    def validate(self, metrics: JsonLines) -> None:
        srv = self.srv
        assert srv.validation is not None  # rank 0 of a training run
        vals = srv.trainer.evaluate(srv.validation)
        srv.last_validation = {"iteration": srv.iteration, **vals}
        metrics.write(
            {
                "kind": "validation",
                "iteration": srv.iteration,
                "time": time.time() - srv.start,
                **vals,
            }
        )
        log.info("iteration %d: validation MSE %.4g", srv.iteration, vals["val_mse"])

    def _log_samples(
        self,
        out: CsvLog,
        ids: np.ndarray,
        steps: np.ndarray,
        losses: np.ndarray,
        deltas: np.ndarray | None,
        batch_loss: float,
    ) -> None:
        srv = self.srv
        with srv.sampler_lock:
            qs = srv.root_sampler().qualities(ids)
        uniform = [srv.sims.records[int(s)].source == "uniform" for s in ids]
        out.write_rows(
            [
                [
                    srv.iteration,
                    int(ids[k]),
                    int(steps[k]),
                    float(losses[k]),
                    batch_loss,
                    None if deltas is None else float(deltas[k]),
                    None if np.isnan(qs[k]) else float(qs[k]),
                    int(uniform[k]),
                ]
                for k in range(len(ids))
            ]
        )
