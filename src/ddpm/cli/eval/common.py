"""What the ``ddpm eval`` sub-commands share: the options that name and drive a model (one helper, so an option
added there reaches every sub-command that samples or scores with a model), their checks, and the one error path.

A sub-command is a function ``run(args) -> exit code`` wrapped by :func:`command`, which checks the shared options
and reports errors as every ``ddpm`` command does (:func:`ddpm.cli.run_guarded`): a bad value is one line naming the
option and what is allowed, exit code 2 (raise :class:`~ddpm.cli.UsageError`); a failure while running is one line,
exit code 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from ddpm.cli import HelpFormatter, UsageError, run_guarded

__all__ = [
    "SOURCE_HELP",
    "HelpFormatter",
    "UsageError",
    "add_model_options",
    "command",
    "float_list",
    "int_list",
    "load_model",
    "need",
    "write_json",
]

SOURCE_HELP = (
    "an image folder, an .npz of uint8 images or of FID statistics (mu, sigma), a named data set (fashion-mnist, "
    "cifar10[:PATH]; append @test for the test split), or a pipeline folder to sample from (needs --num-samples)"
)

#: Help of --num-inference-steps by what its default means for the sub-command.
STEPS_RECOMMENDED = "the model's recommended number, else the full chain"
STEPS_FULL_CHAIN = "the full chain"


def add_model_options(
    p: argparse.ArgumentParser,
    *,
    model: str = "required",
    when: str = "",
    seed_help: str = "random seed (>= 0)",
    steps_default: str | None = None,
    batch: tuple[str, int, str] | None = None,
    sampler: bool = False,
) -> None:
    """The options that name and drive a model: ``--model`` (``model``: "required", "optional" — needed ``when`` —,
    or "source" when a positional source may name a pipeline instead), ``--device``, ``--seed``, and where the
    sub-command samples or batches model calls, ``--num-inference-steps`` (``steps_default`` says what its default
    means), the batch size ``batch = (flag, default, help)``, and with ``sampler`` the sampling options
    (``--sampler``, ``--eta``: :mod:`ddpm.cli.sampler_options`). Checked by :func:`command`."""
    if model not in ("required", "optional", "source"):
        raise ValueError(f"model={model!r}: expected 'required', 'optional' or 'source'")
    if model != "source":
        p.add_argument(
            "--model",
            required=model == "required",
            default=None,
            help="pipeline folder (model_index.json, unet/, scheduler/) or Hub id" + (f" ({when})" if when else ""),
        )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    if steps_default is not None:
        p.add_argument("--num-inference-steps", type=int, default=None, help=f"reverse steps; default: {steps_default}")
    if sampler:
        from ddpm.cli.sampler_options import add_sampler_arguments

        add_sampler_arguments(p, steps=False)
    if batch is not None:
        flag, default, text = batch
        metavar = flag.lstrip("-").upper().replace("-", "_")
        p.add_argument(flag, dest="model_batch_size", metavar=metavar, type=int, default=default, help=text)
        p.set_defaults(model_batch_flag=flag)


def need(ok: bool, option: str, value, allowed: str) -> None:
    """:class:`~ddpm.cli.UsageError` ``"OPTION must be ALLOWED, got VALUE"`` unless ``ok``."""
    if not ok:
        raise UsageError(f"{option} must be {allowed}, got {value}")


def _check_model_options(args: argparse.Namespace) -> None:
    if hasattr(args, "seed"):
        need(args.seed >= 0, "--seed", args.seed, ">= 0")
    steps = getattr(args, "num_inference_steps", None)
    need(steps is None or steps >= 1, "--num-inference-steps", steps, ">= 1")
    batch = getattr(args, "model_batch_size", None)
    need(batch is None or batch >= 1, getattr(args, "model_batch_flag", "--batch-size"), batch, ">= 1")
    if hasattr(args, "sampler"):
        from ddpm.cli.sampler_options import check_sampler_arguments

        if (message := check_sampler_arguments(args)) is not None:
            raise UsageError(message)


def command(name: str, run: Callable[[argparse.Namespace], int | None]) -> Callable[[argparse.Namespace], int]:
    """The ``func`` of ``ddpm eval NAME``: checks the shared options, then ``run(args)``, through the one error
    path (:func:`ddpm.cli.run_guarded`)."""

    def checked(args: argparse.Namespace) -> int | None:
        _check_model_options(args)
        return run(args)

    def func(args: argparse.Namespace) -> int:
        return run_guarded(f"ddpm eval {name}", checked, args)

    return func


def load_model(args: argparse.Namespace):
    """The pipeline of ``--model`` on ``--device`` (eval mode, progress bar off), with the ``--sampler`` and
    ``--eta`` of a sub-command that has them."""
    from ddpm.evaluation.generate import load_pipeline

    pipeline = load_pipeline(args.model, device=args.device)
    if hasattr(args, "sampler"):
        from ddpm.cli.sampler_options import setup_sampler

        setup_sampler(pipeline, args)
    return pipeline


def write_json(path: str, result: dict) -> None:
    from ddpm.io import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]
