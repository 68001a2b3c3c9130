"""Slurm backend: ``sbatch --parsable`` a generated script, ``squeue``/``sacct``/``scontrol``
to follow it, ``scancel`` to stop it.

Options: the ``launcher.slurm`` section (nodes, cpus_per_task, time, partition, account, mpi,
extra_args, sacct) plus ``mpiexec`` (``launcher.mpiexec``, used when ``mpi: mpiexec``) and the
cluster options of :mod:`breed.launcher.cluster`.

Secrets (``JobSpec.env``: the run token) travel in the environment of the ``sbatch`` process,
which ``--export=ALL`` hands to the job; they are never in the script or on a command line.

Following a job: one ``squeue`` call for every unfinished job per poll. squeue has no exit
codes, so a job it shows finished is read once with ``scontrol`` (while slurmctld remembers it,
``MinJobAge``, 300 s by default); a job squeue no longer shows is looked up with ``sacct`` (one
call for all of them). Without accounting (``sacct`` reports it disabled, is missing, or
``sacct: false``) such a job has no record at all, and after ``forget_grace`` seconds it is
reported FAILED with that reason rather than running forever.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from breed.launcher.backend import JobSpec, JobStatus
from breed.launcher.cluster import ClusterBackend, resolve_mpiexec
from breed.launcher.scheduler_text import (
    SchedulerError,
    SchedulerOutputError,
    first_error_line,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_job,
    parse_squeue,
    sacct_argv,
    sacct_disabled,
    sbatch_argv,
    scontrol_argv,
    slurm_job_script,
    slurm_status,
    squeue_argv,
    squeue_unknown_jobs,
)

log = logging.getLogger(__name__)


class SlurmBackend(ClusterBackend):
    name = "slurm"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.mpi = str(self.options.get("mpi", "srun"))
        if self.mpi not in ("srun", "mpiexec"):
            raise ValueError(f"launcher.slurm.mpi: {self.mpi!r} is not one of ['srun', 'mpiexec']")
        self.use_sacct = bool(self.options.get("sacct", True))

    def script(self, spec: JobSpec) -> str:
        mpiexec = resolve_mpiexec(str(self.options.get("mpiexec", "mpiexec")))
        return slurm_job_script(spec, self.mpi, mpiexec, int(self.options.get("cpus_per_task", 1)))

    def _submit(self, spec: JobSpec) -> str:
        # absolute paths: slurmd reads a relative --output from the job's --chdir, not from
        # where sbatch ran (`breed run --output run` would log to run/run/logs)
        spec = dataclasses.replace(
            spec,
            workdir=Path(spec.workdir).resolve(),
            log_path=None if spec.log_path is None else Path(spec.log_path).resolve(),
        )
        if spec.log_path is not None:  # slurmd does not make missing directories
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        res = self.run(
            sbatch_argv(spec, self.options), input=self.script(spec), env={**os.environ, **spec.env}
        )
        return parse_sbatch_parsable(self.check(res, "sbatch"))

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        res = self.run(squeue_argv(job_ids))
        if res.returncode != 0 and not squeue_unknown_jobs(res.stderr):
            raise SchedulerError(
                f"squeue failed (exit {res.returncode}): {first_error_line(res.stderr, res.stdout)}"
            )
        listed = parse_squeue(res.stdout) if res.returncode == 0 else {}
        out: dict[str, JobStatus | None] = {}
        gone: list[str] = []
        for job_id in job_ids:
            record = listed.get(job_id)
            if record is None:
                gone.append(job_id)
                continue
            status = slurm_status(record)
            if status.state.finished:  # the exit code is in scontrol, not squeue
                status = self._scontrol(job_id) or status
            out[job_id] = status
        if gone:
            try:
                out.update(self._sacct(gone))
            except SchedulerError as e:  # slurmdbd busy or down: these stay as they were
                log.warning("slurm: %s", e)
        return out

    def _scontrol(self, job_id: str) -> JobStatus | None:
        res = self.run(scontrol_argv(job_id))
        if res.returncode != 0:
            return None
        try:
            return slurm_status(parse_scontrol_job(res.stdout))
        except SchedulerOutputError as e:
            log.warning("slurm: %s", e)
            return None

    def _sacct(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        """Records of jobs squeue forgot; None for those accounting has no record of either."""
        nothing: dict[str, JobStatus | None] = dict.fromkeys(job_ids)
        if not self.use_sacct:
            return nothing
        try:
            res = self.run(sacct_argv(job_ids))
        except SchedulerError as e:
            if "not found" in str(e):
                log.info("slurm: no sacct on this machine, following jobs with squeue only")
                self.use_sacct = False
                return nothing
            raise
        if res.returncode != 0:
            if sacct_disabled(res.stderr):
                log.info("slurm: accounting is disabled, following jobs with squeue only")
                self.use_sacct = False
                return nothing
            raise SchedulerError(
                f"sacct failed (exit {res.returncode}): {first_error_line(res.stderr, res.stdout)}"
            )
        records = parse_sacct(res.stdout)
        return {j: slurm_status(records[j]) if j in records else None for j in job_ids}

    def _cancel(self, job_ids: list[str]) -> None:
        res = self.run(["scancel", *job_ids])
        if res.returncode != 0 and "already completing or completed" not in res.stderr:
            raise SchedulerError(
                f"scancel failed (exit {res.returncode}): "
                f"{first_error_line(res.stderr, res.stdout)}"
            )
