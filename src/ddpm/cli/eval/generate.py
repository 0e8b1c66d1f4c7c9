"""``ddpm eval generate``: many samples into one ``.npz`` for FID, sharded over the processes of ``torchrun``."""

from __future__ import annotations

import time

from .common import STEPS_RECOMMENDED, HelpFormatter, add_model_options, command, load_model, need


def add_generate(sub, name: str) -> None:
    from ddpm.cli.speed import add_speed_arguments

    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="generate many samples into one .npz (for FID), shardable",
        description="Generate --num-samples images into one .npz (uint8 NHWC under 'images'). Image i uses a "
        "generator seeded from (seed, i), so the result does not depend on --batch-size or on the number of "
        "processes. Under torchrun each rank generates a disjoint index range and rank 0 gathers the shards, "
        "e.g.\n  torchrun --nproc-per-node 8 -m ddpm eval generate --model M --num-samples 50000 --out s.npz",
    )
    add_model_options(
        p,
        steps_default=STEPS_RECOMMENDED,
        batch=("--batch-size", 64, "images per forward pass (per process)"),
        sampler=True,
    )
    p.add_argument("--num-samples", type=int, default=50000, help="number of images")
    p.add_argument("--out", required=True, help="output .npz")
    add_speed_arguments(p)
    p.set_defaults(func=command(name, run_generate))


def run_generate(args) -> int:
    from ddpm import distributed as ddist
    from ddpm.cli import UsageError
    from ddpm.cli import speed as ddpm_speed
    from ddpm.evaluation.generate import generate_to_npz

    need(args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    if (message := ddpm_speed.check_speed_arguments(args)) is not None:
        raise UsageError(message)
    need(args.out.endswith(".npz"), "--out", args.out, "a path ending in .npz")
    ddpm_speed.set_threads(args.threads)
    try:
        info = ddist.init_distributed(args.device)  # joins torchrun's process group (WORLD_SIZE > 1)
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    if info.distributed:
        args.device = str(info.device)
    try:
        start = time.perf_counter()
        pipeline = load_model(args)
        speed = ddpm_speed.plan(pipeline.device, args.channels_last, args.compile)
        ddpm_speed.apply(pipeline, pipeline.device, speed)
        out = generate_to_npz(
            pipeline,
            args.num_samples,
            args.out,
            seed=args.seed,
            batch_size=args.model_batch_size,
            num_inference_steps=args.num_inference_steps,
            progress=True,
        )
        if out is not None:
            how = f", {speed.describe()}" if speed.describe() else ""
            print(f"wrote {args.num_samples} images to {out} ({time.perf_counter() - start:.1f} s{how})")
    finally:
        ddist.shutdown(info)
    return 0
