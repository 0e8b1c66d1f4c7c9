"""``ddpm sample``: generate images with a pipeline folder, a Hub id or the bundled model.

Image ``i`` of a run is drawn with its own CPU generator seeded from ``(seed, i)``
(:func:`ddpm.pipeline.image_seed`: ``SeedSequence([seed, i])``), so a given seed gives the same images whatever
``--batch-size`` is, and on any device up to floating-point differences.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ddpm.cli import UsageError as _UsageError
from ddpm.cli import run_guarded
from ddpm.cli.options import add_device, add_num_samples, check_output, check_seed, count
from ddpm.cli.sampler_options import add_sampler_arguments, check_sampler_arguments, setup_sampler

DTYPES = ("float32", "bfloat16", "float16")


def add_parser(subparsers) -> None:
    from ddpm.cli import HelpFormatter
    from ddpm.cli.speed import add_speed_arguments

    p = subparsers.add_parser(
        "sample",
        help="generate images",
        description=(
            "Generate images with a DDPM pipeline (a folder in Diffusers' layout, a Hugging Face Hub id, or the "
            "model bundled with ddpm).\n\nImage i is drawn with a CPU generator seeded from (seed, i), so the "
            "images for a seed do not depend on --batch-size."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="FOLDER_OR_HUB_ID",
        help="pipeline folder (model_index.json, unet/, scheduler/) or Hub id, or a training checkpoint file or run "
        "folder (its newest intact checkpoint); None: the model bundled with ddpm",
    )
    p.add_argument(
        "--weights",
        default=None,
        choices=("ema", "raw"),
        help="with a checkpoint or run folder as --model: its EMA or raw weights; None: ema (a pipeline folder holds "
        "one set of weights)",
    )
    add_num_samples(p, 16, "number of images to generate (old spelling --num-images, deprecated)")
    p.add_argument(
        "--batch-size",
        type=count,
        default=16,
        metavar="B",
        help="images per forward pass; one above --num-samples is clamped to it (a batch that cannot fit the "
        "device's memory is refused)",
    )
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="random seed, 0 <= seed < 2**63")
    add_device(p)
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="UNet precision")
    p.add_argument(
        "--out",
        default="samples.png",
        metavar="PATH",
        help="*.png: one near-square grid; *.npz: uint8 NHWC images under key 'images'; "
        "a folder (or a path without suffix): one PNG per image",
    )
    p.add_argument(
        "--scale",
        default="auto",
        metavar="N",
        help="a .png grid enlarged N times (nearest neighbour; 1: raw pixels); auto: long side >= 512 px",
    )
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    add_speed_arguments(p)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.num_samples < 1:
        raise _UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.batch_size < 1:
        raise _UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (message := check_sampler_arguments(args)) is not None:
        raise _UsageError(message)
    check_seed(args.seed)
    from ddpm.cli.speed import check_speed_arguments

    if (message := check_speed_arguments(args)) is not None:
        raise _UsageError(message)
    _check_weights(args)
    from ddpm.images import MAX_SCALE, check_scale

    try:
        scale = check_scale(args.scale)
    except ValueError:
        raise _UsageError(f"--scale must be 'auto' or an integer in 1..{MAX_SCALE}, got {args.scale}") from None
    out = Path(args.out)
    if scale != "auto" and out.suffix.lower() != ".png":
        raise _UsageError(f"--scale {args.scale} applies to a .png grid only; --out {args.out} keeps the raw pixels")
    if out.suffix.lower() not in ("", ".png", ".npz") and not out.is_dir():
        raise _UsageError(f"--out must end in .png or .npz or name a folder, got {args.out}")
    if out.suffix.lower() in (".png", ".npz") and out.is_dir():
        raise _UsageError(f"--out {args.out} is an existing folder; a {out.suffix} file was expected")
    check_output("--out", out, "folder" if _as_folder(out) else "file")


def _as_folder(out: Path) -> bool:
    return out.suffix == "" or out.is_dir()


def _check_weights(args: argparse.Namespace) -> None:
    if args.weights is None:
        return
    from ddpm.training.export import looks_like_checkpoint_source

    if args.model is None or not looks_like_checkpoint_source(args.model):
        what = "the bundled model" if args.model is None else args.model
        raise _UsageError(
            f"--weights {args.weights}: {what} is not a training checkpoint or run folder; a pipeline folder or Hub id "
            "holds one set of weights (make a pipeline with other weights with ddpm export --weights)"
        )


def _load_pipeline(args: argparse.Namespace, dtype):
    """The pipeline of ``--model``: a pipeline folder, Hub id or the bundled model, or a training checkpoint's
    ``--weights`` (:mod:`ddpm.training.export`); its weights checked finite."""
    from ddpm.cli.options import check_finite_weights

    pipe = _load_any_pipeline(args, dtype)
    check_finite_weights(pipe.unet, args.model)
    return pipe


def _load_any_pipeline(args: argparse.Namespace, dtype):
    from ddpm.pipeline import DDPMPipeline, NoBundledModelError

    if args.model is not None:
        from ddpm.training import export

        if export.looks_like_checkpoint_source(args.model):
            weights = args.weights or "ema"
            try:
                loaded = export.load_training_checkpoint(args.model)
                pipe = export.pipeline_from_checkpoint(loaded, weights)
            except export.CheckpointSourceError as err:
                raise _UsageError(f"--model: {err}") from None
            if weights == "ema" and (note := export.young_ema_note(loaded.ema_initial_share(), loaded.step)):
                print(f"ddpm sample: note: {note}", file=sys.stderr)
            return pipe.to(dtype=dtype)
    try:
        return DDPMPipeline.from_pretrained(args.model, dtype=dtype)
    except NoBundledModelError as err:
        raise NoBundledModelError(f"{err} (use --model FOLDER_OR_HUB_ID)") from None


def _check_sizes(args: argparse.Namespace, pipe, device, as_folder: bool) -> None:
    """Before sampling: a .npz or grid is built in memory, so its images must fit; the batch must fit the device."""
    from ddpm.cli.options import check_batch_fits, check_room, image_bytes, memory_bytes

    if not as_folder:
        need = args.num_samples * image_bytes(pipe) * (2 if Path(args.out).suffix.lower() == ".npz" else 3)
        what = "the images (held in memory until the file is written)"
        check_room("--num-samples", args.num_samples, need, "this machine's memory", memory_bytes(), what)
    check_batch_fits("--batch-size", min(args.batch_size, args.num_samples), pipe, device)


def run(args: argparse.Namespace) -> int:
    return run_guarded("ddpm sample", _run, args)


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    from ddpm.cli.options import resolve_device

    device = resolve_device(args.device)

    import torch
    from tqdm.auto import tqdm

    from ddpm import images as ddpm_images
    from ddpm.cli import speed as ddpm_speed
    from ddpm.pipeline import image_generators

    ddpm_speed.set_threads(args.threads)
    pipe = _load_pipeline(args, getattr(torch, args.dtype))
    pipe.to(device)
    sampler, steps = setup_sampler(pipe, args)
    speed = ddpm_speed.plan(device, args.channels_last, args.compile)
    ddpm_speed.apply(pipe, device, speed)

    out = Path(args.out)
    as_folder = _as_folder(out)
    n = args.num_samples
    _check_sizes(args, pipe, device, as_folder)
    batch_size = min(args.batch_size, n)
    batches = (range(s, min(s + batch_size, n)) for s in range(0, n, batch_size))  # lazy: n may be huge
    bar = tqdm(
        total=-(-n // batch_size) * steps,
        unit="step",
        desc=f"sampling {n} image(s)",
        disable=args.no_progress,
        file=sys.stderr,
    )

    def advance(i, t, sample, x0):
        bar.update(1)

    collected = []
    try:
        for index in batches:
            result = pipe(
                batch_size=len(index),
                generator=image_generators(args.seed, index),
                num_inference_steps=steps,
                output_type="pt",
                callback=advance,
                progress=False,
            ).images
            arrays = ddpm_images.to_uint8(result)
            if as_folder:
                ddpm_images.save_images(arrays, out, start=index.start)
            else:
                collected.append(arrays)
            bar.set_postfix(images=index.stop)
    finally:
        bar.close()

    if out.suffix.lower() == ".npz":
        import numpy as np

        ddpm_images.save_npz(np.concatenate(collected), out)
    elif not as_folder:
        import numpy as np

        ddpm_images.save_grid(np.concatenate(collected), out, nrow=math.ceil(math.sqrt(n)), scale=args.scale)
    what = f"{n} image(s), {sampler} {steps} steps, seed {args.seed}, {device}, {args.dtype}"
    what += f", {speed.describe()}" if speed.describe() else ""
    print(f"wrote {out}{'/' if as_folder else ''} ({what})", file=sys.stderr)
    return 0
