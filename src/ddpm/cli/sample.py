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
        help="pipeline folder (model_index.json, unet/, scheduler/) or Hub id; None: the model bundled with ddpm",
    )
    p.add_argument("--num-images", type=int, default=16, metavar="N", help="number of images to generate")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per forward pass")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when available")
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
    if args.num_images < 1:
        raise _UsageError(f"--num-images must be >= 1, got {args.num_images}")
    if args.batch_size < 1:
        raise _UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (message := check_sampler_arguments(args)) is not None:
        raise _UsageError(message)
    if args.seed < 0:
        raise _UsageError(f"--seed must be >= 0, got {args.seed}")
    from ddpm.cli.speed import check_speed_arguments

    if (message := check_speed_arguments(args)) is not None:
        raise _UsageError(message)
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


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    return run_guarded("ddpm sample", _run, args)


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    device = _resolve_device(args.device)

    import torch
    from tqdm.auto import tqdm

    from ddpm import images as ddpm_images
    from ddpm.cli import speed as ddpm_speed
    from ddpm.pipeline import DDPMPipeline, NoBundledModelError, image_generators

    ddpm_speed.set_threads(args.threads)
    try:
        pipe = DDPMPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    except NoBundledModelError as err:
        raise NoBundledModelError(f"{err} (use --model FOLDER_OR_HUB_ID)") from None
    pipe.to(device)
    sampler, steps = setup_sampler(pipe, args)
    speed = ddpm_speed.plan(device, args.channels_last, args.compile)
    ddpm_speed.apply(pipe, device, speed)

    out = Path(args.out)
    as_folder = out.suffix == "" or out.is_dir()
    batches = [range(s, min(s + args.batch_size, args.num_images)) for s in range(0, args.num_images, args.batch_size)]
    bar = tqdm(
        total=len(batches) * steps,
        unit="step",
        desc=f"sampling {args.num_images} image(s)",
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

        ddpm_images.save_grid(
            np.concatenate(collected), out, nrow=math.ceil(math.sqrt(args.num_images)), scale=args.scale
        )
    what = f"{args.num_images} image(s), {sampler} {steps} steps, seed {args.seed}, {device}, {args.dtype}"
    what += f", {speed.describe()}" if speed.describe() else ""
    print(f"wrote {out}{'/' if as_folder else ''} ({what})", file=sys.stderr)
    return 0
