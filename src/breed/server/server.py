"""The training server: receiver thread + training loop (paper Section 2.2, Appendix A).

``breed server --run-dir DIR`` reads ``DIR/config.resolved.yaml`` and ``DIR/token`` (written by
``breed run``), binds its sockets, writes ``DIR/server.json`` and trains until every simulation
of the budget has been received and every sample in the buffer has been trained on at least
once (or ``training.max_iterations``). Losses of every batch go to the sampler (Breed's
statistics) and to the run log.
"""

from __future__ import annotations

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

from breed import cores, rundir
from breed.cli import OneLineParser, describe
from breed.client import mpi_world
from breed.learning.budget import deterministic, iteration_budget, per_simulation
from breed.learning.buffer import SampleBuffer
from breed.learning.reservoir import buffer_from_config
from breed.learning.trainer import Trainer, resolve_device
from breed.learning.validation import (
    ValidationSet,
    compute_validation,
    load_validation,
    save_validation,
)
from breed.netaddr import resolve_host
from breed.problems import problem_of
from breed.protocol import token_from_hex
from breed.sampling import make_sampler
from breed.sampling.base import Sampler
from breed.security import TOKEN_FILE, load_curve_secret
from breed.server.checkpoint import Checkpointer
from breed.server.checkpoint import load as load_checkpoint
from breed.server.collect import TrajectoryStore
from breed.server.collective import Collective
from breed.server.guard import raise_fd_limit
from breed.server.loop import TrainingLoop
from breed.server.order import OrderedIngest, Pace, StagedIntake, use_deterministic_torch
from breed.server.receiver import Receiver, ReceiverOptions
from breed.server.recovery import capture, restore, truncate_logs
from breed.server.results import ResultsNotWritten, write_collection, write_results
from breed.server.shard import RankLink, RemoteTable, ShardedTable
from breed.server.simtable import SimTable, StepTable
from breed.server.sink import Buffer

log = logging.getLogger("breed.server")
# files the server writes atomically (a kill mid-write leaves a partial file to clean up)
SERVER_WRITES = (
    rundir.SERVER_INFO,
    rundir.SAMPLES,
    rundir.SUMMARY,
    rundir.MODEL,
    rundir.VALIDATION,
    rundir.METRICS,
    rundir.PER_SAMPLE,
)


class Server:
    """Wires sampler, simulation table, buffer, receiver and trainer for one run directory."""

    def __init__(
        self, run_dir: Path, resume: bool = False, collective: Collective | None = None
    ) -> None:
        self.run_dir = run_dir
        comm = mpi_world() if collective is None else None
        root = (
            collective.is_root if collective is not None else (comm is None or comm.Get_rank() == 0)
        )
        # one server per run directory, for its whole life (rank 0 speaks for all ranks);
        # taken before anything else, so a second server changes nothing
        self.lock = (
            rundir.RunLock(run_dir, rundir.SERVER_LOCK, "breed server").acquire() if root else None
        )
        self.cfg: dict[str, Any] = yaml.safe_load((run_dir / rundir.CONFIG).read_text())
        cfg, lc = self.cfg, self.cfg["launcher"]
        self.token = token_from_hex(
            os.environ.get("BREED_TOKEN") or (run_dir / TOKEN_FILE).read_text()
        )
        soft, hard = raise_fd_limit()  # a stranger's idle connections cost descriptors
        log.info("file descriptor limit %d (hard %d)", soft, hard)
        seed = cfg["seed"]
        torch.manual_seed(seed)
        if cfg["training"]["threads"]:
            torch.set_num_threads(cfg["training"]["threads"])
        ranks = collective.size if collective is not None else (comm.Get_size() if comm else 1)
        self.cores = cores.plan(cfg) if ranks == 1 else None  # one-rank servers only
        if self.cores is not None:  # what this thread starts from here on inherits the others
            cores.bind(self.cores.others)
            torch.set_num_threads(cores.trainer_threads(cfg))
        if deterministic(cfg):
            use_deterministic_torch(cfg["training"]["threads"])
        self.coll = collective or Collective(
            comm, resolve_host(lc["host"]), resolve_device(cfg["model"]["device"]).type
        )
        self.root = self.coll.is_root
        if self.root:
            removed = rundir.remove_partial_writes(
                run_dir / rundir.CHECKPOINTS, (rundir.CHECKPOINT,)
            )
            removed += rundir.remove_partial_writes(run_dir, SERVER_WRITES)
            if removed:
                log.info(
                    "removed %d partial files of writes killed half-way: %s",
                    len(removed),
                    ", ".join(p.name for p in removed),
                )
        self.problem = problem_of(cfg)
        self.sampler_lock = threading.Lock()
        # one sampler and one simulation table, on rank 0 (Breed needs every rank's losses)
        self.sampler = make_sampler(cfg) if self.root else None
        self.link = None
        if self.coll.size > 1:
            self.link = RankLink(self.coll.rank, self.coll.size, resolve_host(lc["host"]))
            self.link.connect(self.coll.allgather(self.link.address))
        self.table: StepTable
        if self.sampler is None:
            assert self.link is not None
            self.table = RemoteTable(self.link)
        else:
            table_args = (
                cfg["study"]["simulations"],
                self.sampler,
                self.sampler_lock,
                lc["max_retries"],
                lc["on_give_up"],
            )
            self.table = (
                SimTable(*table_args, problem=self.problem)
                if self.link is None
                else ShardedTable(*table_args, problem=self.problem, link=self.link)
            )
        self.trainer = Trainer(cfg, seed=seed)  # wrapped in DDP when ranks > 1
        # collect: whole trajectories for a validation set (breed.server.collect), no training
        self.collecting = cfg["training"]["mode"] == "collect"
        self.store = (
            TrajectoryStore(self.problem, cfg["study"]["simulations"]) if self.collecting else None
        )
        self._buffer = (
            None if self.collecting else buffer_from_config(cfg, self.trainer.normalisation)
        )
        self.intake: Buffer = self.store or self.buffer  # where the receiver puts samples
        # deterministic mode: ingest in id order at a fixed pace (breed.server.order)
        self.order, self.pace = self._ordering()
        self.validation = self._validation_set() if self.root and not self.collecting else None
        self.finished = threading.Event()
        self.failure: str | None = None  # why the run ended without its results
        self.released = threading.Event()  # the launcher saw the end: no need to linger
        self.start = time.time()
        self.last_ping: float | None = None  # the launcher's last ping (none yet: by hand)
        self.launcher_lost = False
        self.failed_jobs_seen: set[str] = set()
        self.job_map: dict[str, str] = {}  # launcher job name -> scheduler job id
        self.last_validation: dict[str, Any] | None = None
        self.phase = "waiting for data"  # what the console shows (status)
        self.receiver = Receiver(
            token=self.token,
            host=lc["host"],
            table=self.table,
            buffer=self.intake,
            problem=self.problem,
            status=self.status,
            on_sim_done=self.on_sim_done,
            on_launcher=self._on_launcher,
            options=ReceiverOptions(
                simulation_timeout=lc["simulation_timeout"],
                control=self.root,
                max_message=lc["max_message_bytes"],
                batch_steps=lc["batch_steps"],
                batch_linger=lc["batch_linger"],
                curve_secret=load_curve_secret(run_dir) if lc["curve"] else None,
                ingest=lc["ingest"] if self.coll.size == 1 else "thread",
                # every client rank may connect at once (a start, a restart); strangers beyond
                connection_limit=2 * lc["max_jobs"] * self.problem.client.ranks + 64,
            ),
        )
        # rank r receives the simulations with sim_id % R == r
        self.receiver.data_addresses = self.coll.allgather(self.receiver.data_address)
        self.checkpoint_path = run_dir / rundir.CHECKPOINTS / rundir.CHECKPOINT
        self.checkpointer = Checkpointer(
            self.checkpoint_path, cfg["training"]["checkpoint_interval"]
        )
        if resume and self.checkpoint_path.exists():
            self._load_checkpoint()
        elif resume and self.root:  # died before its first checkpoint: start over
            truncate_logs(run_dir, 0)

    # -- set-up -------------------------------------------------------------------------
    def _ordering(self) -> tuple[OrderedIngest | None, Pace | None]:
        per = per_simulation(self.cfg)
        if per is None or self.collecting or not self.root:
            return None, None
        if not deterministic(self.cfg):
            return None, Pace(per, self.sims, self.buffer)
        staged = StagedIntake(self.buffer, self.problem.steps + 1)
        self.intake = staged
        order = OrderedIngest(
            staged,
            self.sims,
            self.root_sampler(),
            self.sampler_lock,
            per,
            self.cfg["sampler"]["lag"],
        )
        return order, None

    def _validation_set(self) -> ValidationSet:
        """The run's validation set: the configured file, or the run's own (the heat preset
        makes it here; other problems' are collected by the launcher before we start)."""
        vc = self.cfg["validation"]
        path = Path(vc["file"]) if vc["file"] else self.run_dir / rundir.VALIDATION
        if not path.exists() and self.problem.name == "heat2d":
            log.info("making the validation set (%d trajectories) in %s", vc["size"], path)
            save_validation(compute_validation(self.problem, vc["size"], vc["seed"]), path)
        return load_validation(
            path, expect_problem=self.problem.identity(), expect_design=(vc["size"], vc["seed"])
        )

    # -- callbacks from the receiver thread ---------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "finished": self.finished.is_set(),
            "failed": self.failure,
            "iteration": self.iteration,
            "sims_done": self.sims.done_count(),
            "sims_assigned": self.sims.drawn,
            "in_flight": self.sims.in_flight(),
            "target": self.sims.target,
            "wanted_clients": self.sims.wanted_clients(self.cfg["launcher"]["max_jobs"]),
            "buffer": self.intake.stats(),
            **self.receiver.message_counts(),
            "warnings": {k: w for k, w in (("checkpoint", self.checkpointer.warning()),) if w},
            "phase": self.phase,
            **self._resampling_status(),
        }

    def _resampling_status(self) -> dict[str, Any]:
        """How many times the sampler resampled and the last record (for the console)."""
        history = self.sampler.history if self.sampler is not None else []
        return (
            {"resamplings": len(history), "last_resampling": dict(history[-1])} if history else {}
        )

    def on_sim_done(self, sim_id: int) -> None:
        if self.sampler is None or self.order is not None:
            return  # rank r > 0 hears of it through the link; in order: told at ingest
        with self.sampler_lock:
            self.sampler.on_simulation_done(sim_id, self.problem.steps + 1)

    def _on_launcher(self, body: dict[str, Any]) -> None:
        self.last_ping = time.monotonic()
        if body.get("shutdown"):
            self.released.set()
        self.job_map.update(body.get("jobs", {}))
        for job_id in body.get("failed_jobs", []):
            if job_id not in self.failed_jobs_seen:
                self.failed_jobs_seen.add(job_id)
                ids = self.sims.fail_job(str(job_id), "client job failed")
                if ids:
                    log.warning("job %s failed; simulations %s handed out again", job_id, ids)

    # -- training loop ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.receiver.start()
        if self.root:
            assert self.receiver.control_address is not None  # rank 0 answers control
            rundir.ServerInfo(
                control=self.receiver.control_address,
                data=self.receiver.data_addresses,
                pid=os.getpid(),
                ranks=self.coll.size,
                host=self.cfg["launcher"]["host"],
            ).write(self.run_dir)
        if self.collecting:
            return write_collection(self)
        loop = TrainingLoop(self)
        if self.cores is not None:  # receiver, ingest and ZeroMQ threads stay on the others
            cores.bind(self.cores.trainer)
            log.info("cores: %s", self.cores.describe())
        loop.run()
        if self.receiver.ingest is not None:  # the worker's latest rejection counters
            self.receiver.ingest.poll_counts()
            self.receiver.merge_worker_counts()
        buffers = self.coll.allgather(self.buffer.stats())
        budget = iteration_budget(self.cfg)
        summary = {
            "iterations": self.iteration,
            "wall_time": time.time() - self.start,
            "iteration_budget": budget,  # over it: the data outlasted the budget
            "budget_exceeded": budget is not None and self.iteration > budget,
            "ranks": self.coll.size,
            **loop.clock.summary(self.iteration),
            "sims_done": self.sims.done_count() if self.root else None,
            "target": self.sims.target if self.root else None,
            **self.receiver.message_counts(),
            "buffer": buffers[0],
            "buffers": buffers,
            "final_validation": self.last_validation,
            "validation_fingerprint": self.validation.fingerprint
            if self.validation is not None
            else None,
            "problem": self.problem.name,
        }
        if self.root:
            try:
                write_results(self, summary)
            except ResultsNotWritten as exc:  # the launcher must stop, not restart us
                self.failure = str(exc)
                self.finished.set()
                raise
        self.finished.set()
        return summary

    @property
    def buffer(self) -> SampleBuffer:
        """The training buffer (a collection run has a TrajectoryStore instead)."""
        assert self._buffer is not None, "training runs only"
        return self._buffer

    @property
    def sims(self) -> SimTable:
        """Rank 0's simulation table (the other ranks hold a RemoteTable view of it)."""
        assert isinstance(self.table, SimTable), "rank 0 only"
        return self.table

    def sharded(self) -> ShardedTable:
        assert isinstance(self.table, ShardedTable), "multi-rank rank 0 only"
        return self.table

    def root_sampler(self) -> Sampler:
        assert self.sampler is not None, "rank 0 only"
        return self.sampler

    @property
    def iteration(self) -> int:
        """Training iterations so far: the trainer counts its steps, the one counter."""
        return self.trainer.iteration

    def watch_launcher(self) -> None:
        """The other direction of the liveness pings: a launcher silent for ping_timeout is
        presumed dead; training goes on (clients still stream) but a checkpoint is taken at
        once, so `breed run --resume` loses nothing."""
        timeout = self.cfg["launcher"]["ping_timeout"]
        silent = self.last_ping is not None and time.monotonic() - self.last_ping > timeout
        if silent and not self.launcher_lost:
            log.warning(
                "no ping from the launcher for %g s: checkpointing; resume it with "
                "`breed run --resume %s`",
                timeout,
                self.run_dir,
            )
            self.save_checkpoint()
        elif self.launcher_lost and not silent:
            log.info("the launcher is back")
        self.launcher_lost = silent

    # -- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self) -> bool:
        """Write a checkpoint now; False if the write failed (it is retried, see
        :class:`~breed.server.checkpoint.Checkpointer`)."""
        return self.checkpointer.write(
            lambda: {
                "trainer": self.trainer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(),
                **self._receiver_state(),
            },
            self.iteration,
        )

    def _load_checkpoint(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        self.trainer.load_state_dict(state["trainer"])  # the iteration is the trainer's
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        if self.root:  # multi-rank: the other ranks' ledgers and buffers are not saved yet
            restore(
                state,
                ledger=self.receiver.ledger,
                table=self.sims,
                sampler=self.root_sampler(),
                buffer=self.buffer,
                counts=self.receiver.counts,
            )
            if self.order is not None and "order" in state:
                self.order.load_state_dict(state["order"])
            truncate_logs(self.run_dir, self.iteration)
            log.info(
                "resumed from %s at iteration %d (%d simulations done, %d steps received)",
                self.checkpoint_path,
                self.iteration,
                self.sims.done_count(),
                self.receiver.ledger.total(),
            )

    def _receiver_state(self) -> dict[str, Any]:
        """Table, sampler, received-steps ledger and buffer samples in one consistent cut
        (breed.server.recovery): what a restart needs to lose and duplicate nothing (in
        deterministic mode also the simulations staged for ingest, in the same cut)."""
        with self.receiver.ingest_lock:
            state = capture(
                ingest_lock=self.receiver.ingest_lock,
                ledger=self.receiver.ledger,
                table=self.sims,
                buffer=self.buffer,
                counts=self.receiver.counts,
            )
            if self.order is not None:
                state["order"] = self.order.state_dict()
            return state

    def close(self, linger: float = 0.0) -> None:
        """Keep answering (STOP to clients, pongs) until the launcher releases us or
        ``linger`` s pass, then stop the receiver."""
        self.released.wait(linger)
        self.receiver.stop_event.set()
        self.receiver.join(timeout=5)
        if self.link is not None:
            self.link.close()
        self.coll.close()
        if self.lock is not None:
            self.lock.release()


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="breed server", description=describe("server"))
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument(
        "--linger", type=float, default=5.0, help="seconds to keep answering after training ends"
    )
    args = parser.parse_args(argv)
    (args.run_dir / rundir.LOGS).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = Server(args.run_dir, resume=args.resume)
    except (OSError, ValueError, KeyError) as exc:
        print(f"breed server: {first_line(exc)}", file=sys.stderr)
        return 2
    try:
        server.run()
    except ResultsNotWritten as exc:
        print(f"breed server: {exc}", file=sys.stderr)
        return 1
    finally:
        server.close(args.linger)
    return 0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
