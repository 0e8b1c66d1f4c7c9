"""The ``ddpm`` command. Thin: each sub-command lives in its own module here, parses its options and calls the
library. Sub-commands are registered in ``COMMANDS`` as ``name -> "module:add_parser"``; a module's
``add_parser(subparsers)`` adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "sample": "ddpm.cli.sample:add_parser",
    "train": "ddpm.cli.train:add_parser",
    "eval": "ddpm.cli.eval:add_parser",
    "analytic-dpm": "ddpm.cli.analytic:add_parser",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default in --help and keeps description paragraphs as written."""


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
