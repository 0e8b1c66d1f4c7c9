"""The sampling options every command that samples shares: ``--sampler``, ``--num-inference-steps`` (old spelling
``--steps``, deprecated) and ``--eta``, their checks before any model is loaded, and how they set up a pipeline.
"""

from __future__ import annotations

import argparse
import sys

from ddpm.cli import UsageError


class _DeprecatedAlias(argparse.Action):
    """An older spelling of an option: stores into the new option's destination, with a deprecation warning."""

    def __init__(self, option_strings, dest, new_name: str = "", **kwargs):
        self.new_name = new_name
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_sampler_arguments(p: argparse.ArgumentParser, steps: bool = True) -> None:
    """``--sampler``, ``--num-inference-steps`` (old spelling ``--steps``; ``steps=False`` when the command adds it
    itself) and ``--eta``: the same options in every command that samples."""
    from ddpm.schedulers.vocabulary import SAMPLERS

    p.add_argument(
        "--sampler",
        default=None,
        choices=SAMPLERS,
        help="how to sample: ddpm (ancestral, the paper), ddim, dpm-solver++, analytic-ddpm / analytic-ddim "
        "(need the model's analytic_dpm.json; make it with ddpm analytic-dpm); None: the model's recommended "
        "sampler (ddpm.json in its folder), else ddpm",
    )
    if steps:
        _add_steps(p)
    p.add_argument(
        "--eta",
        type=float,
        default=None,
        help="DDIM-family samplers (ddim, analytic-ddim): step noise scale, 0 deterministic .. 1 DDPM-like; None: 0",
    )


STEPS_HELP = (
    "denoising steps (network calls), 1..num_train_timesteps; None: the model's recommendation for the sampler "
    "(ddpm.json), else the sampler's default (ddpm: 1000, ddim: 50, dpm-solver++: 25, analytic-ddpm: 100, "
    "analytic-ddim: 50)"
)


def _add_steps(p: argparse.ArgumentParser, help: str = STEPS_HELP) -> None:
    p.add_argument("--num-inference-steps", type=int, default=None, metavar="N", help=help)
    p.add_argument(
        "--steps",
        dest="num_inference_steps",
        type=int,
        action=_DeprecatedAlias,
        new_name="--num-inference-steps",
        help=argparse.SUPPRESS,
    )


def check_sampler_arguments(args: argparse.Namespace) -> str | None:
    """An error message for bad sampler options (before any model is loaded), else None."""
    import math as _math

    from ddpm.schedulers.samplers import ETA_SAMPLERS

    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        return f"--num-inference-steps must be >= 1, got {args.num_inference_steps}"
    if args.eta is not None:
        if not _math.isfinite(args.eta) or args.eta < 0:
            return f"--eta must be a finite number >= 0, got {args.eta}"
        if args.sampler is not None and args.sampler not in ETA_SAMPLERS:
            return f"--eta applies to --sampler {' / '.join(ETA_SAMPLERS)} only, not {args.sampler}"
    return None


def setup_sampler(pipe, args: argparse.Namespace) -> tuple[str, int]:
    """Swap the chosen sampler (and its ``--eta``) into ``pipe``; returns (sampler, steps). A ``UsageError`` or
    ``ValueError`` for a value the model cannot take (steps above its num_train_timesteps, a missing Analytic-DPM
    table, ...)."""
    from ddpm.schedulers.samplers import ETA_SAMPLERS

    sampler = args.sampler or pipe.default_sampler()
    if args.eta is not None and sampler not in ETA_SAMPLERS:
        raise UsageError(f"--eta applies to --sampler {' / '.join(ETA_SAMPLERS)} only, not {sampler}")
    pipe.set_sampler(sampler, eta=args.eta)
    num_train = pipe.scheduler.config.num_train_timesteps
    if args.num_inference_steps is None:  # the model's recommendation (ddpm.json) or the sampler's default
        steps = pipe.default_steps(sampler)
        if not 1 <= steps <= num_train:
            raise ValueError(
                f"the model's recommended {steps} steps for {sampler} (its ddpm.json) are not in [1, {num_train}]; "
                "give --num-inference-steps"
            )
        return sampler, steps
    steps = args.num_inference_steps
    if not 1 <= steps <= num_train:
        raise UsageError(f"--num-inference-steps must be <= {num_train} (the model's num_train_timesteps), got {steps}")
    return sampler, steps
