"""The ``breed`` command line: one sub-command per entry point, each in its own module.

Sub-commands import their module lazily so ``breed --help`` stays fast and a missing optional
dependency only hurts the command that needs it. The help text is the user's (``ABOUT`` and
``COMMANDS``); this docstring is the developer's.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

ABOUT = (
    "breed: on-line training of neural-network surrogates of PDE solvers from simulations "
    "streamed into a training server, steered by the Breed active-learning sampler."
)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("breed.launcher.runner", "Run one on-line training study from a YAML config."),
    "show": ("breed.study.show", "Summarise one or several run directories (one screen each)."),
    "plot": ("breed.study.plot", "Draw the paper's figures of one or several run directories."),
    "server": (
        "breed.server.server",
        "Start the training server (normally started by `breed run`).",
    ),
    "client": (
        "breed.problems.heat2d_client",
        "Run the heat-equation solver as a streaming client.",
    ),
    "make-validation": (
        "breed.launcher.make_validation",
        "Compute the fixed Halton validation set.",
    ),
}
EXAMPLES = """examples:
  breed run config/examples/quick-run.yaml --output results/quick-run
  breed run --resume results/quick-run
  breed show results/quick-run
  breed plot results/quick-run            # figures in results/quick-run/figures"""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other bad
    input (argparse itself prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def describe(name: str) -> str:
    """The one-line description of ``breed NAME`` (its ``-h`` shows the same as ``breed -h``)."""
    return COMMANDS[name][1]


def version() -> str:
    """``breed X.Y.Z`` and, from a git checkout, its revision (one quick ``git`` call)."""
    from importlib import metadata

    from breed import __version__
    from breed.runlog import git_revision

    try:
        number = metadata.version("breed")
    except metadata.PackageNotFoundError:
        number = __version__
    rev = git_revision()
    return f"breed {number}" + (
        f" (git {rev[:12]}{'+dirty' * rev.endswith('+dirty')})" if rev else ""
    )


def usage() -> str:
    width = max(len(n) for n in COMMANDS) + 2
    lines = [
        "usage: breed COMMAND [ARGS...]    (breed COMMAND -h: its options)",
        "",
        *textwrap.wrap(ABOUT, 95),
        "",
        "commands:",
        *(f"  {name:{width}s}{text}" for name, (_, text) in COMMANDS.items()),
        "",
        "options:",
        "  -h, --help     show this help and exit",
        "  -V, --version  show the version (and git revision) and exit",
        "",
        EXAMPLES,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    if argv[0] not in COMMANDS:
        what = "option" if argv[0].startswith("-") else "command"
        print(
            f"breed: error: unknown {what} {argv[0]!r} (commands: {', '.join(COMMANDS)}; "
            "see breed -h)",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
