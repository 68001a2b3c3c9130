"""``breed show RUN_DIR...``: what happened in a run, on one screen, without opening a CSV.

One run: its problem, sampler and budget, the training's length and final validation (mean,
p99, max), its simulations (done, retried, given up), Breed's generations (r, proposal share),
the server's messages and rejections, resumes; a failed run says why and what it holds.
Several runs (or a folder of them, a study's results): one row each, side by side. What is
read, and from which file: :mod:`breed.study.runview`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from breed import rundir
from breed.cli import OneLineParser, describe
from breed.study.runview import Generation, RunView, ShowError, read_run, run_dirs

MAX_GENERATION_ROWS = 8  # a longer Breed history shows its first and last rows


def _g(value: Any, fmt: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if isinstance(value, int | float) else str(value)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def _generation_rows(view: RunView) -> list[str]:
    gens = view.generations
    lines = ["    gen  iteration     K     r  proposal (of K)  simulations (proposal)"]
    shown: list[Generation | None] = list(gens)
    if len(gens) > MAX_GENERATION_ROWS:
        half = MAX_GENERATION_ROWS // 2
        shown = [*gens[:half], None, *gens[-half:]]
    for g in shown:
        if g is None:
            lines.append(f"    ... {len(gens) - 2 * (MAX_GENERATION_ROWS // 2)} more")
            continue
        share = "-" if g.proposal_share is None else f"{100 * g.proposal_share:.0f} %"
        lines.append(
            f"    {g.generation:3d}  {_g(g.iteration):>9s}  {_g(g.K):>4s}  {_g(g.r, '.2f'):>4s}"
            f"  {share:>15s}  {g.simulations:>5d} ({g.proposal})"
        )
    return lines


def render(view: RunView) -> str:
    """One run on one screen: the numbers a user came for first."""
    v = view
    budget = f"{_g(v.simulations_budget)} simulations"
    budget += (
        f", {v.iterations_budget} iterations (training.iterations)"
        if v.iterations_budget
        else ", training until every sample is used"
    )
    lines = [f"{v.path}  [{v.state}]"]
    if v.reason:
        lines.append(f"  {'why' if v.state != 'running' else 'launcher':12s}{v.reason}")
    params = ", ".join(v.parameters[:6]) + (" ..." if len(v.parameters) > 6 else "")
    lines.append(f"  {'problem':12s}{v.problem}" + (f" (λ: {params})" if params else ""))
    lines.append(
        f"  {'sampler':12s}{v.sampler}" + (f" ({v.sampler_settings})" if v.sampler_settings else "")
    )
    lines.append(f"  {'budget':12s}{budget}")
    lines.append(
        f"  {'training':12s}{_g(v.iterations)} iterations in {_g(v.wall_time, '.1f')} s"
        + (" (so far)" if v.state != "finished" else "")
    )
    if v.validation:
        val = v.validation
        lines.append(
            f"  {'validation':12s}at iteration {_g(v.validation_iteration)}: mean (MSE) "
            f"{_g(val.get('val_mse'))}, p99 {_g(val.get('traj_err_p99'))}, "
            f"max {_g(val.get('traj_err_max'))}"
        )
    else:
        lines.append(f"  {'validation':12s}none yet")
    if v.sims_rows or v.sims_done is not None:
        others = {k: n for k, n in v.statuses.items() if k not in ("done", "lost")}
        lines.append(
            f"  {'simulations':12s}{_g(v.sims_done)} done of {_g(v.simulations_budget)}; "
            f"{v.sims_retried} retried ({v.extra_attempts} extra attempts); "
            f"{v.sims_lost} given up"
            + (f" ({v.give_up})" if v.sims_lost else "")
            + (f"; {_counts(others)}" if others else "")
        )
    else:
        lines.append(f"  {'simulations':12s}no {rundir.SAMPLES} yet (written when the run ends)")
    if v.generations:
        n = len([g for g in v.generations if g.generation > 0])
        share = v.proposal_total / v.sims_rows if v.sims_rows else float("nan")
        lines.append(
            f"  {'Breed':12s}{n} resampling{'s' * (n != 1)}; {v.proposal_total} of {v.sims_rows} simulations "
            f"from the proposal ({_g(100 * share, '.0f')} %)"
        )
        lines += _generation_rows(v)
    if v.messages:
        lines.append(f"  {'messages':12s}{_counts(v.messages)}")
    if v.state == "finished" or v.rejected:
        lines.append(f"  {'rejected':12s}{_counts(v.rejected)}")
    if v.resumes or v.server_resumes:
        lines.append(
            f"  {'resumed':12s}{len(v.resumes)} launcher resume(s)"
            + (f" ({'; '.join(v.resumes)})" if v.resumes else "")
            + f"; the server started {v.server_resumes} time(s) from a checkpoint"
        )
    for item in v.present:
        lines.append(f"  {'holds':12s}{item}")
    if v.state == "failed / incomplete":
        lines.append(f"  {'next':12s}breed run --resume {v.path}")
    for note in v.notes:
        lines.append(f"  {'note':12s}{note}")
    return "\n".join(lines)


TABLE_COLUMNS = (
    ("state", lambda v: v.state),
    ("sampler", lambda v: v.sampler),
    ("sims", lambda v: f"{_g(v.sims_done)}/{_g(v.simulations_budget)}"),
    ("retried", lambda v: str(v.sims_retried)),
    ("iterations", lambda v: _g(v.iterations)),
    ("wall s", lambda v: _g(v.wall_time, ".1f")),
    ("val mean", lambda v: _g(v.validation.get("val_mse"))),
    ("val p99", lambda v: _g(v.validation.get("traj_err_p99"))),
    ("val max", lambda v: _g(v.validation.get("traj_err_max"))),
    ("gens", lambda v: str(max((g.generation for g in v.generations), default=0))),
    (
        "proposal",
        lambda v: f"{100 * v.proposal_total / v.sims_rows:.0f} %" if v.sims_rows else "-",
    ),
    ("rejected", lambda v: str(sum(v.rejected.values()))),
)


def side_by_side(views: list[RunView]) -> str:
    """Several runs, one row each (names relative to their common folder)."""
    paths = [str(v.path) for v in views]
    common = os.path.commonpath([os.path.abspath(p) for p in paths]) if len(paths) > 1 else ""
    names = [os.path.relpath(os.path.abspath(p), common) if common else p for p in paths]
    names = [Path(p).name if n == "." else n for n, p in zip(names, paths, strict=True)]
    header = ["run", *(c for c, _ in TABLE_COLUMNS)]
    rows = [[n, *(f(v) for _, f in TABLE_COLUMNS)] for n, v in zip(names, views, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = [f"runs in {common}" if common else ""]
    for r in [header, *rows]:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    for n, v in zip(names, views, strict=True):
        if v.state != "finished" and v.reason:
            out.append(f"{n}: {v.state}: {v.reason}")
    return "\n".join(x for x in out if x)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="breed show",
        description=describe("show"),
        epilog="A folder of run directories (a study's results) stands for all of them.",
    )
    parser.add_argument("run_dir", nargs="+", type=Path, help="run directories")
    parser.add_argument(
        "--each", action="store_true", help="with several runs, also each one's summary"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        views = [read_run(p) for p in run_dirs(args.run_dir)]
    except ShowError as exc:
        print(f"breed show: {exc}", file=sys.stderr)
        return 2
    if len(views) == 1 or args.each:
        print("\n\n".join(render(v) for v in views))
    if len(views) > 1:
        print(("\n" if args.each else "") + side_by_side(views))
    return 0
