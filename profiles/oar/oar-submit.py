#!/usr/bin/env python3
"""Submit command of the oar profile: ``oar-submit.py JOBSCRIPT`` prints the OAR job id.

Snakemake's cluster-generic executor appends the job script; resources come from the
``# properties = {...}`` line Snakemake writes into every job script (threads -> /core=,
runtime minutes -> walltime). oarsub prints ``[ADMISSION RULE]`` lines before
``OAR_JOB_ID=<id>``, so the id is searched for, not taken from the first line. Standard library
only: this runs with whatever python3 the submit host has.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys

JOB_ID = re.compile(r"^\s*OAR_JOB_ID\s*=\s*(\d+)\s*$", re.MULTILINE)
DEFAULT_RUNTIME_MIN = 60


def read_properties(jobscript: str) -> dict:
    with open(jobscript) as fh:
        for line in fh:
            if line.startswith("# properties = "):
                return json.loads(line.split("=", 1)[1])
    raise ValueError(f"{jobscript}: no '# properties = ' line (not a Snakemake job script?)")


def walltime(minutes: float) -> str:
    total = max(1, int(round(float(minutes))))
    return f"{total // 60}:{total % 60:02d}:00"


def oarsub_argv(props: dict, jobscript: str, workdir: str, logdir: str) -> list[str]:
    res = props.get("resources", {})
    cores = max(1, int(props.get("threads", 1)))
    name = f"smk-{props.get('rule') or props.get('groupid') or 'job'}"
    argv = [
        "oarsub",
        "--name",
        name[:60],
        "--directory",
        workdir,
        "-l",
        f"/nodes=1/core={cores},walltime={walltime(res.get('runtime', DEFAULT_RUNTIME_MIN))}",
        "--stdout",
        os.path.join(logdir, "%jobid%.out"),
        "--stderr",
        os.path.join(logdir, "%jobid%.err"),
    ]
    for key, flag in (
        ("oar_queue", "--queue"),
        ("oar_project", "--project"),
        ("oar_properties", "--property"),
    ):
        if res.get(key):
            argv += [flag, str(res[key])]
    if res.get("oar_extra"):
        argv += shlex.split(str(res["oar_extra"]))
    return [*argv, jobscript]


def parse_job_id(output: str) -> str:
    match = JOB_ID.search(output)
    if match is None:
        raise ValueError("oarsub printed no OAR_JOB_ID= line: " + " | ".join(output.splitlines()))
    return match.group(1)


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: oar-submit.py JOBSCRIPT", file=sys.stderr)
        return 2
    jobscript = os.path.abspath(argv[-1])
    workdir = os.getcwd()
    logdir = os.path.join(workdir, ".snakemake", "oar_logs")
    os.makedirs(logdir, exist_ok=True)
    cmd = oarsub_argv(read_properties(jobscript), jobscript, workdir, logdir)
    if shutil.which(cmd[0]) is None:  # one line, not a FileNotFoundError traceback
        print(
            f"oar-submit.py: {cmd[0]} not found on PATH (not an OAR submit host?)", file=sys.stderr
        )
        return 2
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(
            f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
        return proc.returncode
    try:
        print(parse_job_id(proc.stdout))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
