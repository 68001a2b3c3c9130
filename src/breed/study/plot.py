"""``breed plot RUN_DIR... [--out DIR]``: the paper's figures of one or several run directories,
drawn by the same code as the Snakemake pipeline's (:mod:`breed.study.figures`, from the same
tables, :data:`breed.study.TABLES`), as PNG and PDF.

Any run directories will do, not only a study's: each is described from its own resolved
config as a study would describe it (method, model, Breed settings, seed), so runs that differ
only in their seed are drawn as seeds of one configuration and a Random and a Breed run of the
same model and seed are paired. Figures that need what the runs lack (a Breed run, a finished
run's ``samples.csv``) are skipped with a line saying why; a failed run still has its curves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from breed import rundir
from breed.cli import OneLineParser, describe
from breed.study.runview import ShowError, read_config, run_dirs

# name -> (what it shows, the figure of breed.study.figures, the tables it reads after runs)
PLOTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "curves": ("validation and training curves (Fig. 3a)", "fig3a", ("curves",)),
    "deviation": ("input deviation, uniform vs proposal (Fig. 4)", "fig4", ("inputs",)),
    "correlations": ("per-sample loss correlations (Fig. 6)", "fig6", ("correlations",)),
    "lambda_pairs": ("λ draws on pairs of parameters by generation", "lambda", ("inputs",)),
}


def spec_of(run_dir: Path, root: Path) -> Any:
    """A :class:`~breed.study.RunSpec` for a run directory, named by its path under ``root``."""
    from breed.study import BREED_KEYS, PARAMS, RunSpec, get_dotted, make_run_id, method_of
    from breed.study import pair_id as pair_of

    cfg = read_config(run_dir)
    run_id = os.path.relpath(run_dir.resolve(), root)
    try:
        config_id = make_run_id(cfg).rsplit("-", 1)[0]
        params: dict[str, Any] = {
            "study": root.name,
            "run_id": run_id,
            "config_id": config_id,
            "pair_id": pair_of(cfg),
            "seed": int(cfg["seed"]),
            "method": method_of(cfg),
            "centre": True,
        }
        for key, col in PARAMS.items():
            breed_only = key in BREED_KEYS and params["method"] != "breed"
            params[col] = None if breed_only else get_dotted(cfg, key)
    except (KeyError, TypeError, ValueError) as exc:
        raise ShowError(f"{run_dir / rundir.CONFIG}: not a run config ({exc})") from None
    return RunSpec(root.name, run_id, cfg, params, reference=True)


def tables_of(dirs: list[Path]) -> tuple[dict[str, Any], list[str]]:
    """The study tables of these runs (as the pipeline makes them) and notes on runs left out
    of the tables that need a finished run's files."""
    from breed.study import TABLES

    root = Path(os.path.commonpath([d.resolve() for d in dirs]))
    if len(dirs) == 1:
        root = root.parent
    specs = [spec_of(d, root) for d in dirs]
    notes: list[str] = []
    tables = {"runs": TABLES["runs"](specs, root)}
    curves = []
    for s in specs:
        try:
            curves.append(TABLES["curves"]([s], root))
        except KeyError:  # stopped before its first validation: no val_mse column yet
            notes.append(f"{s.run_id}: no validation row in {rundir.METRICS}: no curves")
    if curves:
        import pandas as pd

        tables["curves"] = pd.concat(curves, ignore_index=True)
    finished = [s for s in specs if (root / s.run_id / rundir.SAMPLES).is_file()]
    for s in specs:
        if s not in finished:
            notes.append(f"{s.run_id}: no {rundir.SAMPLES} (unfinished): curves only")
    for name in ("inputs", "correlations"):
        if finished:
            tables[name] = TABLES[name](finished, root)
    return tables, notes


def draw_all(dirs: list[Path], out: Path) -> tuple[list[Path], list[str]]:
    """Every figure the runs allow, as ``out/<name>.png`` and ``.pdf``; returns the files
    written and a line per figure skipped (and why)."""
    from breed.study import figures as F

    draws: dict[str, Callable[..., Any]] = {"lambda": F.fig_lambda_pairs}
    tables, notes = tables_of(dirs)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (what, figure, needs) in PLOTS.items():
        if any(t not in tables for t in needs):
            lacking = "a validation row" if "curves" in needs else "a finished run"
            notes.append(f"{name}: skipped ({what}: no run has {lacking})")
            continue
        args = [tables["runs"], *(tables[t] for t in needs)]
        try:
            fig = draws[figure](*args) if figure in draws else F.FIGURES[figure].draw(*args)
        except (F.FigureError, ValueError, KeyError) as exc:
            notes.append(f"{name}: skipped ({what}: {exc})")
            continue
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        F.save(fig, png, pdf)
        written += [png, pdf]
    return written, notes


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="breed plot",
        description=describe("plot"),
        epilog="Figures: " + "; ".join(f"{n}: {w}" for n, (w, _, _) in PLOTS.items()) + ".",
    )
    parser.add_argument("run_dir", nargs="+", type=Path, help="run directories")
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        help="folder for the PNG and PDF files (default: RUN_DIR/figures for one run; "
        "required for several)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        dirs = run_dirs(args.run_dir)
        if args.out is None and len(dirs) > 1:
            raise ShowError(f"{len(dirs)} runs: say where their figures go with --out DIR")
        out = args.out if args.out is not None else dirs[0] / "figures"
        if out.exists() and not out.is_dir():
            raise ShowError(f"--out: {out} exists and is not a directory")
        written, notes = draw_all(dirs, out)
    except ShowError as exc:
        print(f"breed plot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"breed plot: cannot write the figures: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"breed plot: {note}", file=sys.stderr)
    if not written:
        print("breed plot: no figure drawn", file=sys.stderr)
        return 1
    names = sorted({p.stem for p in written}, key=list(PLOTS).index)
    print(f"{out}: {', '.join(names)} (PNG and PDF)")
    return 0
