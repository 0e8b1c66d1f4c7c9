"""The ``ddpm`` command. Thin: each sub-command lives in its own module here, parses its options and calls the
library. Sub-commands are registered in ``COMMANDS`` as ``name -> "module:add_parser"``; a module's
``add_parser(subparsers)`` adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).

Errors are reported the same way by every sub-command (:func:`run_guarded`): a bad option value is one line naming the
option and what is allowed, exit code 2; a failure while running (a missing file, bad data) is one line, exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

COMMANDS = {
    "sample": "ddpm.cli.sample:add_parser",
    "train": "ddpm.cli.train:add_parser",
    "eval": "ddpm.cli.eval:add_parser",
    "analytic-dpm": "ddpm.cli.analytic:add_parser",
    "export": "ddpm.cli.export:add_parser",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default in --help and keeps description paragraphs as written."""


class UsageError(Exception):
    """A bad option value; the message names the option, the value and what is allowed (exit code 2)."""


def run_guarded(prog: str, run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """``run(args)`` with the commands' one error path: a :class:`UsageError` prints ``PROG: error: MESSAGE`` and
    returns 2; an ``OSError``, ``ValueError`` or ``RuntimeError`` prints the same one line (whitespace folded) and
    returns 1."""
    try:
        return int(run(args) or 0)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    from ddpm import __version__

    parser = argparse.ArgumentParser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models: sample, train and evaluate.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for target in COMMANDS.values():
        module_name, func_name = target.split(":")
        getattr(importlib.import_module(module_name), func_name)(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
