"""A run directory read for a person (``breed show``, ``breed plot``): :class:`RunView`.

Reads the run directory only (its files are named by :mod:`breed.rundir`): the resolved config
(problem, sampler, budget), ``summary.json`` (iterations, wall time, final validation, the
server's message counts and rejections), ``samples.csv`` (simulations done, retried, given
up; Breed's generations and proposal share), ``metrics.jsonl`` (its ``resample`` records when
the server wrote them: K, r and proposal share of each resampling; else r from the sampler's
schedule) and the logs (resumes, server restarts, the server's last error). A run without
``summary.json`` is running (a live launcher holds its lock) or failed / incomplete.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from breed import rundir
from breed.config import ConfigError

RESUME_LINE = re.compile(r" INFO resume: (.*)$")  # the runner's launcher.log line
SERVER_RESUMED = "resumed from "  # the server's log line after loading a checkpoint


class ShowError(ConfigError):
    """A path that is not a run directory (one line, exit 2)."""


@dataclass
class Generation:
    """One Breed generation: its simulations (samples.csv) and, when logged, its resampling."""

    generation: int
    simulations: int = 0
    proposal: int = 0
    iteration: int | None = None
    K: int | None = None
    r: float | None = None
    proposal_share: float | None = None  # of the K redrawn (resample record)


@dataclass
class RunView:
    """What ``breed show`` reports of one run directory."""

    path: Path
    state: str  # finished | running | failed / incomplete
    problem: str = "?"
    parameters: list[str] = field(default_factory=list)
    sampler: str = "?"
    sampler_settings: str = ""
    give_up: str = ""  # launcher.on_give_up: what a simulation given up became
    simulations_budget: int | None = None
    iterations_budget: int | None = None
    iterations: int | None = None
    wall_time: float | None = None
    validation: dict[str, float] = field(default_factory=dict)
    validation_iteration: int | None = None
    sims_done: int | None = None
    sims_rows: int = 0
    sims_retried: int = 0
    extra_attempts: int = 0
    sims_lost: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    generations: list[Generation] = field(default_factory=list)
    messages: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    resumes: list[str] = field(default_factory=list)
    server_resumes: int = 0
    reason: str | None = None
    present: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def proposal_total(self) -> int:
        return sum(g.proposal for g in self.generations)


def _read_json(path: Path, view: RunView) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError:
        return {}
    except (ValueError, UnicodeDecodeError):
        view.notes.append(f"{path.name} is not JSON: ignored")
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(path: Path, view: RunView) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a torn last line (a killed server) is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return rows
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    if text.strip() and not rows:
        view.notes.append(f"{path.name} holds no JSON rows: ignored")
    return rows


def _read_samples(path: Path, view: RunView) -> list[dict[str, str]]:
    try:
        with open(path, newline="", errors="replace") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []
    except csv.Error as exc:
        view.notes.append(f"{path.name}: {exc}")
        return []


def _int(text: Any, default: int = 0) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return default


def _log_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def check_run_dir(path: Path) -> None:
    """Refuse (:class:`ShowError`) what is not a run directory."""
    if not path.exists():
        raise ShowError(f"{path}: no such file or directory")
    if not path.is_dir():
        raise ShowError(f"{path}: not a directory (give a run directory)")
    if not (path / rundir.CONFIG).is_file():
        raise ShowError(f"{path}: not a run directory (no {rundir.CONFIG})")


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run directories behind ``paths``: each one itself, or, for a directory that holds
    run directories (a study's results), every one of them."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir() and not (path / rundir.CONFIG).exists():
            inner = sorted(p for p in path.iterdir() if (p / rundir.CONFIG).is_file())
            if inner:
                out += inner
                continue
        check_run_dir(path)
        out.append(path)
    return out


def read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load((path / rundir.CONFIG).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ShowError(f"{path / rundir.CONFIG}: not a readable config ({exc})") from None
    if not isinstance(cfg, dict):
        raise ShowError(f"{path / rundir.CONFIG}: not a mapping of keys")
    return cfg


def _sampler(cfg: dict[str, Any], view: RunView) -> None:
    sampler = cfg.get("sampler") or {}
    view.sampler = str(sampler.get("name", "?"))
    b = sampler.get("breed") or {}
    if view.sampler == "breed" and b:
        view.sampler_settings = (
            f"σ {b.get('sigma')}, P {b.get('period')}, N {b.get('window')}, "
            f"r {b.get('r_start')} -> {b.get('r_end')} over {b.get('r_ramp')} generations"
        )


def _problem(cfg: dict[str, Any], view: RunView) -> None:
    try:
        from breed.problems import problem_of

        problem = problem_of(cfg)
        view.problem, view.parameters = problem.name, list(problem.names)
    except Exception as exc:  # a config of another version: show the rest anyway
        spec = cfg.get("problem", "heat2d")
        view.problem = spec if isinstance(spec, str) else str(spec.get("name", "?"))
        view.notes.append(f"problem not read ({exc})")


def _generations(rows: list[dict[str, str]], metrics: list[dict[str, Any]], cfg: dict[str, Any]):
    by_gen: dict[int, Generation] = {}
    for row in rows:
        g = _int(row.get("generation"), 0)
        gen = by_gen.setdefault(g, Generation(g))
        gen.simulations += 1
        gen.proposal += row.get("source") == "proposal"
    for rec in metrics:
        if rec.get("kind") != "resample":
            continue
        g = _int(rec.get("generation"), -1)
        gen = by_gen.setdefault(g, Generation(g))
        gen.iteration = _int(rec.get("iteration"), 0)
        gen.K = _int(rec.get("K"), 0)
        gen.r = float(rec["r"]) if isinstance(rec.get("r"), int | float) else None
        share = rec.get("proposal_share")
        gen.proposal_share = float(share) if isinstance(share, int | float) else None
    b = (cfg.get("sampler") or {}).get("breed") or {}
    unknown = [g for g in by_gen.values() if g.r is None and g.generation > 0]
    if b and unknown:  # no resample records (older runs): r from the sampler's schedule
        from breed.sampling.breed import mixing_ratio

        for gen in unknown:
            gen.r = mixing_ratio(
                gen.generation - 1,
                float(b.get("r_start", 0.5)),
                float(b.get("r_end", 0.9)),
                float(b.get("r_ramp", 3)),
            )
    return [by_gen[g] for g in sorted(by_gen)]


def _resumes(path: Path, view: RunView) -> None:
    for line in _log_lines(path / rundir.LOGS / rundir.LAUNCHER_LOG):
        hit = RESUME_LINE.search(line)
        if hit:
            view.resumes.append(hit.group(1))
    server_log = _log_lines(path / rundir.LOGS / rundir.SERVER_LOG)
    view.server_resumes = sum(SERVER_RESUMED in line for line in server_log)


def _what_is_there(path: Path, view: RunView, metrics: list[dict[str, Any]]) -> None:
    """A run without summary.json: its state, the server's last error, the files it holds."""
    lock = rundir.RunLock(path, rundir.LAUNCHER_LOCK, "breed run")
    if lock.held_elsewhere():
        view.state = "running"
        view.reason = f"held by {lock.holder()}"
    else:
        view.state = "failed / incomplete"
        from breed.launcher.console import RUN_FAILED
        from breed.launcher.serverproc import last_error_line

        error = last_error_line(path / rundir.LOGS / rundir.SERVER_LOG, "breed server: ")
        marker = f" ERROR {RUN_FAILED}"
        launcher = [
            x.split(marker, 1)[1]
            for x in _log_lines(path / rundir.LOGS / rundir.LAUNCHER_LOG)
            if marker in x
        ]
        view.reason = (
            f"server: {error}"
            if error
            else f"launcher: {launcher[-1]}"
            if launcher
            else f"no error line in {rundir.LOGS}/{rundir.SERVER_LOG} (killed, or stopped "
            "by the launcher?)"
        )
    train = [m for m in metrics if m.get("kind") == "train"]
    if metrics:
        last = max(_int(m.get("iteration")) for m in metrics)
        received = train[-1].get("samples_received") if train else None
        view.present.append(
            f"{rundir.METRICS} up to iteration {last}"
            + (f" ({received} samples received)" if received is not None else "")
        )
    checkpoint = path / rundir.CHECKPOINTS / rundir.CHECKPOINT
    if checkpoint.is_file():
        view.present.append(f"{rundir.CHECKPOINTS}/{rundir.CHECKPOINT}")
    jobs = _read_samples(path / rundir.JOBS, view)
    if jobs:
        states = Counter(j.get("state", "?") for j in jobs)
        view.present.append(
            f"{rundir.JOBS}: {len(jobs)} jobs ("
            + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + ")"
        )
    missing = [n for n in rundir.RESULTS if not (path / n).exists()]
    if missing:
        view.present.append(f"missing: {', '.join(missing)} (written when a run ends)")


def read_run(path: Path) -> RunView:
    """Everything ``breed show`` says of one run directory."""
    check_run_dir(path)
    view = RunView(path=path, state="finished")
    cfg = read_config(path)
    _problem(cfg, view)
    _sampler(cfg, view)
    view.simulations_budget = (cfg.get("study") or {}).get("simulations")
    view.iterations_budget = (cfg.get("training") or {}).get("iterations")
    view.give_up = {"resample": "new λ drawn for each", "drop": "dropped from the budget"}.get(
        str((cfg.get("launcher") or {}).get("on_give_up")), ""
    )
    metrics = read_metrics(path / rundir.METRICS, view)
    summary = _read_json(path / rundir.SUMMARY, view)
    if summary:
        view.iterations = summary.get("iterations")
        view.wall_time = summary.get("wall_time")
        view.sims_done = summary.get("sims_done")
        view.messages = dict(summary.get("messages") or {})
        view.rejected = {k: v for k, v in (summary.get("rejected") or {}).items() if v}
        if "messages" not in summary:  # before the split: 'rejected' held every counter
            view.messages, view.rejected = {}, {}
            from breed.server.datapath import split_counts

            view.messages, view.rejected = split_counts(Counter(summary.get("rejected") or {}))
            view.rejected = {k: v for k, v in view.rejected.items() if v}
        val = summary.get("final_validation") or {}
    else:
        _what_is_there(path, view, metrics)
        vals = [m for m in metrics if m.get("kind") == "validation"]
        val = vals[-1] if vals else {}
        view.iterations = max((_int(m.get("iteration")) for m in metrics), default=None)
        view.wall_time = max((float(m.get("time", 0)) for m in metrics), default=None)
    view.validation = {k: float(v) for k, v in val.items() if isinstance(v, int | float)}
    view.validation_iteration = _int(val.get("iteration"), 0) if val else None
    rows = _read_samples(path / rundir.SAMPLES, view)
    view.sims_rows = len(rows)
    view.statuses = dict(Counter(r.get("status", "?") for r in rows))
    attempts = [_int(r.get("attempts"), 1) for r in rows]
    view.sims_retried = sum(a > 1 for a in attempts)
    view.extra_attempts = sum(a - 1 for a in attempts if a > 1)
    view.sims_lost = view.statuses.get("lost", 0)
    if view.sims_done is None and rows:
        view.sims_done = view.statuses.get("done", 0)
    if view.sampler == "breed" or any(r.get("source") == "proposal" for r in rows):
        view.generations = _generations(rows, metrics, cfg)
    _resumes(path, view)
    return view
