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
    "add_work_dir",
    "command",
    "finish_work_dir",
    "float_list",
    "int_list",
    "load_checked",
    "load_model",
    "need",
    "work_dir",
    "write_json",
]

SOURCE_HELP = (
    "an image folder, an .npz of uint8 images or of FID statistics (mu, sigma), a named data set (fashion-mnist, "
    "cifar10[:PATH]; append @test for the test split), or a pipeline folder to sample from (needs --num-samples)"
)

#: Help of --num-inference-steps by what its default means for the sub-command.
STEPS_RECOMMENDED = "the model's recommendation for the sampler (ddpm.json), else the sampler's default"
STEPS_FULL_CHAIN = "the full chain"


def add_model_options(
    p: argparse.ArgumentParser,
    *,
    model: str = "required",
    when: str = "",
    seed_help: str = "random seed, 0 <= seed < 2**63",
    steps_default: str | None = None,
    batch: tuple[str, int, str] | None = None,
    sampler: bool = False,
    speed: bool = False,
) -> None:
    """The options that name and drive a model: ``--model`` (``model``: "required", "optional" — needed ``when`` —,
    or "source" when a positional source may name a pipeline instead), ``--device`` (default ``auto``), ``--seed``,
    ``--threads`` (with ``speed`` also ``--channels-last`` and ``--compile``: :mod:`ddpm.cli.speed`),
    ``--no-progress``, and where the sub-command samples or batches model calls, ``--num-inference-steps`` (old
    spelling ``--steps``; ``steps_default`` says what its default means), the batch size ``batch = (flag, default,
    help)``, and with ``sampler`` the sampling options (``--sampler``, ``--eta``: :mod:`ddpm.cli.sampler_options`).
    Checked by :func:`command`."""
    from ddpm.cli.options import add_device, add_progress, count

    if model not in ("required", "optional", "source"):
        raise ValueError(f"model={model!r}: expected 'required', 'optional' or 'source'")
    if model != "source":
        p.add_argument(
            "--model",
            required=model == "required",
            default=None,
            help="pipeline folder (model_index.json, unet/, scheduler/) or Hub id" + (f" ({when})" if when else ""),
        )
    add_device(p)
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    if steps_default is not None:
        from ddpm.cli.sampler_options import _add_steps

        _add_steps(p, help=f"denoising steps (network calls), 1..num_train_timesteps; None: {steps_default}")
    if sampler:
        from ddpm.cli.sampler_options import add_sampler_arguments

        add_sampler_arguments(p, steps=False)
    if batch is not None:
        flag, default, text = batch
        metavar = flag.lstrip("-").upper().replace("-", "_")
        p.add_argument(flag, dest="model_batch_size", metavar=metavar, type=count, default=default, help=text)
        p.set_defaults(model_batch_flag=flag)
    if speed:
        from ddpm.cli.speed import add_speed_arguments

        add_speed_arguments(p)
    else:
        p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    add_progress(p)


def add_work_dir(p: argparse.ArgumentParser, default: str) -> None:
    """``--work-dir``: where a long run keeps its finished batches so that, killed, it continues when rerun."""
    p.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="folder keeping finished batches while the command runs: rerun the same command after a crash and it "
        f"continues where it stopped (removed once the result is written); default: {default}",
    )


def need(ok: bool, option: str, value, allowed: str) -> None:
    """:class:`~ddpm.cli.UsageError` ``"OPTION must be ALLOWED, got VALUE"`` unless ``ok``."""
    if not ok:
        raise UsageError(f"{option} must be {allowed}, got {value}")


def _check_model_options(args: argparse.Namespace) -> None:
    if hasattr(args, "device"):
        from ddpm.cli.options import resolve_device

        args.device = str(resolve_device(args.device))
    if hasattr(args, "threads"):
        from ddpm.threads import check_threads

        if (message := check_threads(args.threads)) is not None:
            raise UsageError(message)
    if hasattr(args, "seed"):
        from ddpm.cli.options import check_seed

        check_seed(args.seed)
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
        if hasattr(args, "threads"):  # None: the cores other processes leave idle (ddpm.threads)
            from ddpm.cli.speed import set_threads

            set_threads(args.threads)
        return run(args)

    def func(args: argparse.Namespace) -> int:
        return run_guarded(f"ddpm eval {name}", checked, args)

    return func


def load_model(args: argparse.Namespace):
    """The pipeline of ``--model`` on ``--device`` (eval mode, progress bar off), with the ``--sampler`` and
    ``--eta`` of a sub-command that has them; weights holding NaN or infinity are an error naming the tensor."""
    pipeline = load_checked(args.model, args.device)
    if hasattr(args, "sampler"):
        from ddpm.cli.sampler_options import setup_sampler

        # the resolved sampler and steps (the model's recommendation when not given), for every later use
        args.sampler, args.num_inference_steps = setup_sampler(pipeline, args)
    return pipeline


def load_checked(model, device):
    """The pipeline of ``model`` on ``device`` (:func:`ddpm.evaluation.generate.load_pipeline`), its weights checked
    finite (:func:`ddpm.cli.options.check_finite_weights`): the one loader of every ``ddpm eval`` sub-command."""
    from ddpm.cli.options import check_finite_weights
    from ddpm.evaluation.generate import load_pipeline

    pipeline = load_pipeline(model, device=device)
    check_finite_weights(pipeline.unet, model)
    return pipeline


def work_dir(args: argparse.Namespace, out: str | None, name: str, key: dict) -> str:
    """The work folder of a long run: ``--work-dir``, else ``OUT.partial`` beside the output ``out``, else
    ``ddpm-NAME-HASH.partial`` in the current folder (HASH from the run's settings ``key``)."""
    import hashlib

    if getattr(args, "work_dir", None):
        return args.work_dir
    if out:
        return str(out) + ".partial"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"ddpm-{name}-{digest}.partial"


def finish_work_dir(path: str) -> None:
    """Remove a finished run's work folder."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def write_json(path: str, result: dict) -> None:
    from ddpm.io import atomic_write_text

    atomic_write_text(path, json.dumps(result, indent=2) + "\n")


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]
