"""``python -m gradclip`` and the ``gradclip`` console script: the command line.

Each command is a module with ``HELP`` (its line in ``--help``), ``add_arguments(parser)``
and ``run(args) -> exit status``; this module lists them and dispatches. A command's module
imports nothing beyond NumPy and gradclip at import time, so ``--version`` and ``--help``
work on an install without any extra, and a command that needs one says which.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["COMMANDS", "main"]

#: command name -> the module that implements it
COMMANDS = {"demo": "gradclip.demo.cli"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradclip",
        description=(
            "gradclip's command-line tools. The library itself is used from Python "
            "(import gradclip); these commands show it at work."
        ),
        epilog="'gradclip COMMAND --help' describes a command and its options.",
    )
    parser.add_argument("--version", action="version", version=f"gradclip {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m gradclip`` and the ``gradclip`` console script: parses
    ``argv`` (default ``sys.argv[1:]``) and returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # no command: say what there is
        parser.print_help(sys.stderr)
        return 2
    status: int = args.run(args)
    return status
