#!/usr/bin/env python3
"""Status command of the oar profile: ``oar-status.py JOBID`` prints running, success or failed.

Asks ``oarstat -f -j JOBID -J`` (JSON) and falls back to the text form. A Terminated job
succeeded only with exit code 0 (OAR reports the raw wait status: ``256 (1,0,0)`` is exit 1).
Which OAR states are still active is breed's table (``breed.launcher.scheduler_text``, the
one the launcher follows its client jobs with), so this script runs with the python3 of
breed's environment, the one Snakemake runs in; oar-submit.py needs only the standard library.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

try:
    from breed.launcher.scheduler_text import OAR_STATES
except ImportError:
    sys.exit(
        "oar-status.py: breed is not importable by this python3; run Snakemake from "
        "breed's environment"
    )

ACTIVE = {name for name, state in OAR_STATES.items() if not state.finished}
ATTEMPTS, PAUSE_S = 3, 2.0


def _fields(text: str) -> dict:
    """state and exit_code of one job, from oarstat's JSON or text output."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        job = next(iter(data.values()), {}) if "state" not in data else data
        if isinstance(job, dict):
            return {"state": job.get("state"), "exit_code": job.get("exit_code")}
    state = re.search(r"^\s*state\s*=\s*(\w+)", text, re.MULTILINE)
    code = re.search(r"^\s*exit_code\s*=\s*(-?\d+)", text, re.MULTILINE)
    return {
        "state": state.group(1) if state else None,
        "exit_code": int(code.group(1)) if code else None,
    }


def parse_status(text: str) -> str:
    fields = _fields(text)
    state, code = fields["state"], fields["exit_code"]
    if state is None:
        raise ValueError("no job state in oarstat output: " + " | ".join(text.splitlines()[:5]))
    if state in ACTIVE:
        return "running"
    if state == "Terminated":
        return "success" if code in (None, "", 0, "0") else "failed"
    return "failed"  # Error, or a state this script does not know


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: oar-status.py JOBID", file=sys.stderr)
        return 2
    error = ""
    for attempt in range(ATTEMPTS):
        for cmd in (["oarstat", "-f", "-j", argv[0], "-J"], ["oarstat", "-f", "-j", argv[0]]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout.strip():
                try:
                    print(parse_status(proc.stdout))
                    return 0
                except ValueError as exc:
                    error = str(exc)
            else:
                error = f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}"
        if attempt + 1 < ATTEMPTS:
            time.sleep(PAUSE_S)
    print(error, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
