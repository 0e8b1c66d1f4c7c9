"""``ddpm sample``: generate images with a pipeline (placeholder until the pipeline issue lands)."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter

    p = subparsers.add_parser("sample", help="generate images", formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the bundled model)")
    p.add_argument("--num-images", type=int, default=16, help="number of images")
    p.add_argument("--out", default="samples.png", help="output path")
    p.set_defaults(func=run)


def run(args) -> int:
    print("ddpm sample: no model is bundled yet and the pipeline is not built yet.", file=sys.stderr)
    return 1
