"""``breed`` command line: one sub-command per entry point, each in its own module.

Sub-commands import their module lazily so ``breed --help`` stays fast and a missing optional
dependency only hurts the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("breed.launcher.runner", "Run one on-line training study from a YAML config."),
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


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2, like every other bad
    input (argparse itself prints the whole usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = OneLineParser(prog="breed", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=sorted(COMMANDS), help="sub-command")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (see breed CMD -h)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        for name, (_, text) in sorted(COMMANDS.items()):
            print(f"  {name:16s} {text}")
        return 0
    ns = parser.parse_args(argv[:1])
    module = importlib.import_module(COMMANDS[ns.command][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
