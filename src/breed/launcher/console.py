"""What ``breed run`` tells people while it runs: the progress bar labelled with the server's
phase, one line per phase change and per Breed resampling, the server's warnings, and the
final line; and the launcher.log line that says why a run failed (``breed show`` reads it)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from breed import rundir
from breed.launcher.launcher import ServerStatus

log = logging.getLogger("breed.run")
RUN_FAILED = "run failed: "  # launcher.log's line of why a run failed (breed show reads it)


class Progress:
    """The console's story of a run, fed by server pongs: a progress bar over finished
    simulations (tqdm) labelled with the server's phase, one line per phase change and per
    Breed resampling, the server's warnings when they start and end."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = None
        self.warnings: dict[str, str] = {}  # shown on the console, by topic
        self.phase: str | None = None
        self.resamplings: int | None = None  # None: not heard yet (a resume starts later)
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="sim", file=sys.stderr, dynamic_ncols=True)

    def say(self, text: str) -> None:
        """A warning: on the console in any case, and in launcher.log."""
        log.warning(text)
        if self.bar is not None:
            self.bar.write(f"breed run: {text}", file=sys.stderr)
        else:
            print(f"breed run: {text}", file=sys.stderr)

    def tell(self, text: str) -> None:
        """A line of the run's story: above the bar on an interactive console; with the bar
        off (``training.progress: false``: scripts, Snakemake, tests) in launcher.log only,
        so stderr holds nothing but warnings, errors and the final line."""
        log.info(text)
        if self.bar is not None:
            self.bar.write(f"breed run: {text}", file=sys.stderr)

    def __call__(self, status: ServerStatus) -> None:
        """Show the server's warnings once when they start and once when they end (a failing
        checkpoint write, say), and the progress."""
        now = status.get("warnings") or {}
        for topic, text in now.items():
            if topic not in self.warnings:
                self.say(f"warning: {text}")
        for topic in set(self.warnings) - set(now):
            self.say(f"resolved: {topic} ({self.warnings[topic].split(';')[0]})")
        self.warnings = dict(now)
        phase = status.get("phase")
        if phase is not None and phase != self.phase:
            self.phase = phase
            self.tell(f"{phase} (iteration {status.get('iteration', 0)})")
        self._resampled(status)
        if self.bar is None:
            return
        self.bar.total = status.get("target", self.bar.total)
        self.bar.n = status.get("sims_done", 0)
        if phase is not None:
            self.bar.set_description(phase, refresh=False)
        self.bar.set_postfix(it=status.get("iteration", 0), refresh=False)
        self.bar.refresh()

    def _resampled(self, status: ServerStatus) -> None:
        """One line per resampling the server made since the last pong (the last one's
        numbers; pongs are a second apart, Breed resamples every P iterations)."""
        count, last = status.get("resamplings", 0), status.get("last_resampling")
        if self.resamplings is not None and count > self.resamplings and last:
            more = count - self.resamplings
            self.tell(
                f"Breed resampling {last.get('generation', count)} at iteration "
                f"{last.get('iteration', '?')}: {last.get('K', 0)} pending λ redrawn, "
                f"r = {last.get('r', float('nan')):.2f}, "
                f"{last.get('proposal', 0)} from the proposal"
                + (f" ({more - 1} more since the last report)" if more > 1 else "")
            )
        self.resamplings = count

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def final_line(run_dir: Path, seconds: float) -> str:
    """The console's last line of a finished run: where the results are, the final
    validation error (summary.json, the file that marks a run finished) and ``seconds``, the
    launcher's wall time (the server's own starts after its validation set)."""
    try:
        summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    except (OSError, ValueError):
        return f"finished; results in {run_dir}"
    val = summary.get("final_validation") or {}
    error = (
        f"validation MSE {val['val_mse']:.3g} (p99 {val.get('traj_err_p99', float('nan')):.3g})"
        if isinstance(val.get("val_mse"), int | float)
        else "no validation"
    )
    return (
        f"finished in {seconds:.1f} s: "
        f"{summary.get('sims_done')} simulations, {summary.get('iterations')} iterations, "
        f"{error}; results in {run_dir}"
    )
