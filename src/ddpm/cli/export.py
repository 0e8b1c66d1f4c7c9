"""``ddpm export``: a Diffusers-format pipeline folder from a training checkpoint, with its EMA or its raw weights.

A run's ``pipeline/`` holds the EMA weights of its last checkpoint. ``ddpm export`` makes a pipeline from any
checkpoint, with either set of weights (:mod:`ddpm.training.export`); the folder loads in ``ddpm sample``, in
``ddpm.DDPMPipeline.from_pretrained`` and in Diffusers' ``DDPMPipeline.from_pretrained``.
"""

from __future__ import annotations

import argparse
import sys

from ddpm.cli import UsageError, run_guarded

EPILOG = """\
examples:
  ddpm export --checkpoint runs/cifar10 --out exports/cifar10-ema            # the run's newest intact checkpoint
  ddpm export --checkpoint runs/cifar10/checkpoints/checkpoint-000300000.pt --weights raw --out exports/raw
"""


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter
    from ddpm.training.export import WEIGHTS

    p = subparsers.add_parser(
        "export",
        help="write a pipeline folder (Diffusers layout) from a training checkpoint",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="a checkpoint-<step>.pt file, or a run folder (its newest intact checkpoint in checkpoints/)",
    )
    p.add_argument(
        "--weights",
        default="ema",
        choices=WEIGHTS,
        help="ema: the exponential moving average (what a run's pipeline/ holds); raw: the optimiser's weights",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="the pipeline folder to write (created atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is a non-empty pipeline folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_guarded("ddpm export", _run, args)


def _run(args: argparse.Namespace) -> int:
    from ddpm.training.export import (
        CheckpointSourceError,
        ExportTargetError,
        check_export_target,
        load_training_checkpoint,
        pipeline_from_checkpoint,
        save_pipeline_folder,
        young_ema_note,
    )

    try:
        check_export_target(args.out, args.overwrite)
    except ExportTargetError as err:
        raise UsageError(f"--out: {err}") from None
    try:
        loaded = load_training_checkpoint(args.checkpoint)
        pipe = pipeline_from_checkpoint(loaded, args.weights)
    except CheckpointSourceError as err:
        raise UsageError(f"--checkpoint: {err}") from None
    folder = save_pipeline_folder(pipe, args.out, overwrite=args.overwrite)
    if args.weights == "ema" and (note := young_ema_note(loaded.ema_initial_share(), loaded.step)):
        print(f"ddpm export: note: {note}", file=sys.stderr)
    sampler, steps = pipe.recommended_sampler, pipe.recommended_num_inference_steps
    print(
        f"wrote {folder}/ ({args.weights} weights of step {loaded.step} from {loaded.path}; ddpm.json recommends "
        f"{sampler}, {steps} steps)",
        file=sys.stderr,
    )
    return 0
