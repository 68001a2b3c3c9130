"""OAR backend: ``oarsub`` a generated script, ``oarstat`` to follow it, ``oardel`` to stop it.

Options: the ``launcher.oar`` section (nodes, cores, walltime, queue, project, extra_args,
submit_user) plus ``mpiexec`` (``launcher.mpiexec``) and the cluster options of
:mod:`breed.launcher.cluster`.

OAR does not forward the submitter's environment to the job, so ``JobSpec.env`` (the run token
included) is written to ``WORKDIR/.breed-oar/NAME.env``, mode 0600 in a mode-0700 directory,
both owned by the job's user, and the job script (``NAME.sh`` beside it) sources it: the token
is never on a command line nor in the script.

Submitting user: OAR refuses jobs from root (an admission rule). When this process runs as root
and ``submit_user`` (or the environment variable ``BREED_OAR_SUBMIT_USER``) names a user, every
``oarsub``/``oardel`` runs as that user (``runuser -u USER``) and the job's files and log are
given to that user; the run directory must be readable by it. Without root, ``submit_user`` can
only name the current user. On a real cluster leave it unset and run as yourself.

Following a job: one ``oarstat --full --json`` call for every unfinished job per poll; OAR keeps
finished jobs in its database, so a job it has no record of for ``forget_grace`` seconds never
existed (or the database was reset) and is reported FAILED.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from breed.launcher.backend import JobSpec, JobStatus
from breed.launcher.cluster import ClusterBackend, resolve_mpiexec
from breed.launcher.scheduler_text import (
    SchedulerError,
    first_error_line,
    oar_env_file,
    oar_job_script,
    oarstat_argv,
    oarsub_argv,
    parse_oarstat,
    parse_oarsub,
)


def _write_private(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to a file created with ``mode`` (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # an existing file keeps its old mode through O_CREAT


class OarBackend(ClusterBackend):
    name = "oar"

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.user: pwd.struct_passwd | None = None
        name = self.options.get("submit_user") or os.environ.get("BREED_OAR_SUBMIT_USER")
        if name:
            try:
                entry = pwd.getpwnam(str(name))
            except KeyError:
                raise ValueError(
                    f"launcher.oar.submit_user: no user {name!r} on this machine"
                ) from None
            if os.geteuid() == 0:
                self.user = entry
            elif entry.pw_uid != os.geteuid():
                raise ValueError(
                    f"launcher.oar.submit_user: submitting as {name!r} needs "
                    f"root (this process runs as uid {os.geteuid()})"
                )

    def as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["runuser", "-u", self.user.pw_name, "--", *argv]

    def _give(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def job_files(self, spec: JobSpec) -> tuple[Path, Path]:
        """Write the env file and the job script of ``spec``; return (env file, script)."""
        if not spec.name or "/" in spec.name or spec.name.startswith("."):
            raise ValueError(f"job name {spec.name!r} cannot name a file")
        jobdir = Path(spec.workdir) / ".breed-oar"
        jobdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(jobdir, 0o700)
        self._give(jobdir)
        env_file, script = jobdir / f"{spec.name}.env", jobdir / f"{spec.name}.sh"
        _write_private(env_file, oar_env_file(spec.env), 0o600)
        mpiexec = resolve_mpiexec(str(self.options.get("mpiexec", "mpiexec")))
        _write_private(script, oar_job_script(spec, env_file, mpiexec), 0o700)
        for path in (env_file, script):
            self._give(path)
        return env_file, script

    def _submit(self, spec: JobSpec) -> str:
        workdir = Path(spec.workdir).resolve()
        log_path = Path(spec.log_path).resolve() if spec.log_path is not None else None
        spec = dataclasses.replace(spec, workdir=workdir, log_path=log_path)
        _, script = self.job_files(spec)
        if log_path is not None:  # OAR appends to it as the job's user
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.touch()
            self._give(log_path)
        res = self.run(
            self.as_user(oarsub_argv(spec, self.options, script)), cwd=workdir, label="oarsub"
        )
        if res.returncode != 0:
            raise SchedulerError(
                f"oarsub failed (exit {res.returncode}): {first_error_line(res.stderr, res.stdout)}"
            )
        return parse_oarsub(res.stdout)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus | None]:
        res = self.run(oarstat_argv(job_ids))
        statuses = parse_oarstat(self.check(res, "oarstat"))
        return {j: statuses.get(j) for j in job_ids}

    def _cancel(self, job_ids: list[str]) -> None:
        res = self.run(self.as_user(["oardel", *job_ids]), label="oardel")
        # oardel exits non-zero for jobs that already ended ("already killed"): no error
        if res.returncode != 0 and "already" not in res.stdout + res.stderr:
            raise SchedulerError(
                f"oardel failed (exit {res.returncode}): {first_error_line(res.stderr, res.stdout)}"
            )
