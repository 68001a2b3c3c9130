"""The ``breed`` command line as a user meets it: ``--version``, ``--help`` in user words (no
developer docstring, no RST markup), each sub-command's ``-h``, unknown commands, and
``breed run --set`` with several pairs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from breed import __version__
from breed.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def breed(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "breed", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.timeout(60)
def test_version_names_the_package_version_and_git_revision() -> None:
    proc = breed("--version")
    assert proc.returncode == 0, proc.stderr
    rev = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    assert proc.stdout.startswith(f"breed {__version__}")
    assert (f"(git {rev[:12]}" in proc.stdout) == bool(rev), proc.stdout
    assert breed("-V").stdout == proc.stdout


@pytest.mark.timeout(60)
def test_help_is_user_text_listing_every_command(capsys) -> None:
    proc = breed("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    text = proc.stdout
    assert text.startswith("usage: breed COMMAND")
    assert "``" not in text and "sub-command per entry point" not in text
    for name, (_, description) in COMMANDS.items():
        assert f"  {name}" in text and description in text
    assert main([]) == 0 and capsys.readouterr().out == text  # no arguments: the same help
    for name in ("run", "show", "plot", "make-validation"):  # in-process: no torch import
        try:
            code = main([name, "-h"])
        except SystemExit as exc:  # argparse's -h exits; make-validation returns
            code = int(exc.code or 0)
        sub = capsys.readouterr().out
        assert code == 0 and "``" not in sub and COMMANDS[name][1] in sub, sub


@pytest.mark.timeout(60)
def test_unknown_command_is_one_line_exit_2() -> None:
    for arg in ("nope", "--nope"):
        proc = breed(arg)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("breed: error: unknown")


@pytest.mark.timeout(60)
def test_set_takes_several_pairs_and_repeats(tmp_path: Path) -> None:
    """Each pair reaches the config: a bad value in any position is the one named."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"study": {"simulations": 4}}))
    out = str(tmp_path / "run")
    cases = [
        (["--set", "model.hidden=8", "model.layers=-1"], "model.layers"),
        (["--set", "model.layers=1", "--set", "model.hidden=-3"], "model.hidden"),
        (["--set", "model.hidden=8", "training.log_interval=0", "--set", "seed=1"], "log_interval"),
    ]
    for args, key in cases:
        proc = breed("run", str(cfg), *args, "--output", out)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert key in proc.stderr, proc.stderr
    # a config after --set is taken for a pair: the error says where it goes
    proc = breed("run", "--set", "model.hidden=8", str(cfg), "--output", out)
    assert proc.returncode == 2 and "goes before --set" in proc.stderr, proc.stderr
    assert not Path(out).exists()
