"""The ``napari-medsam`` command line: export-model, models, bench, segment, eval, embed, adapt,
serve.

One module per command, each with ``add_parser(subparsers)`` and ``run(args)``; what they
share (exit codes, the one-line error, Ctrl-C, progress, common options) is in
:mod:`._common`. The console script is ``napari_medsam.cli:main``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from . import adapt, bench, embed, evaluate, export, models, segment, serve
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, CliError, run_command

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "CliError", "build_parser",
           "main"]

#: The commands, in the order ``napari-medsam --help`` lists them.
COMMANDS = (export, models, bench, segment, evaluate, embed, adapt, serve)


def build_parser() -> argparse.ArgumentParser:
    """The ``napari-medsam`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="napari-medsam",
                                     description="Interactive CT/MRI segmentation tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``napari-medsam`` with ``argv`` (default: the command line); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    return run_command(args.command, lambda: args.func(args))
