"""``ddpm eval generate``: many samples into one ``.npz`` for FID, sharded over the processes of ``torchrun``,
crash-safe: finished batches are kept in ``OUT.partial/`` and a rerun of the same command continues from them."""

from __future__ import annotations

import time

from .common import (
    STEPS_RECOMMENDED,
    HelpFormatter,
    UsageError,
    add_model_options,
    add_work_dir,
    command,
    load_model,
    need,
)


def add_generate(sub, name: str) -> None:
    from ddpm.cli.options import add_num_samples

    p = sub.add_parser(
        name,
        formatter_class=HelpFormatter,
        help="generate many samples into one .npz (for FID), shardable, resumable",
        description="Generate --num-samples images into one .npz (uint8 NHWC under 'images'). Image i uses a "
        "generator seeded from (seed, i), so the result does not depend on --batch-size or on the number of "
        "processes. Under torchrun each rank generates a disjoint index range and rank 0 gathers the shards, "
        "e.g.\n  torchrun --nproc-per-node 8 -m ddpm eval generate --model M --num-samples 50000 --out s.npz\n\n"
        "Finished batches are kept in OUT.partial/ (with a manifest of the settings); if the run is killed, the "
        "same command continues where it stopped. A rerun with other settings is refused, naming the setting.",
    )
    add_model_options(
        p,
        steps_default=STEPS_RECOMMENDED,
        batch=("--batch-size", 64, "images per forward pass (per process)"),
        sampler=True,
        speed=True,
    )
    add_num_samples(p, 50000, "number of images")
    p.add_argument("--out", required=True, help="output .npz")
    add_work_dir(p, "OUT.partial beside --out")
    p.set_defaults(func=command(name, run_generate))


def run_generate(args) -> int:
    from ddpm import distributed as ddist
    from ddpm.cli import speed as ddpm_speed
    from ddpm.cli.options import check_batch_fits, check_output, check_room, free_disk_bytes, image_bytes
    from ddpm.evaluation.generate import generate_to_npz, work_folder_for

    need(args.num_samples >= 1, "--num-samples", args.num_samples, ">= 1")
    if (message := ddpm_speed.check_speed_arguments(args)) is not None:
        raise UsageError(message)
    need(args.out.endswith(".npz"), "--out", args.out, "a path ending in .npz")
    check_output("--out", args.out)
    work = args.work_dir or str(work_folder_for(args.out))
    check_output("--work-dir" if args.work_dir else "--out", work, "folder")
    try:
        info = ddist.init_distributed(args.device)  # joins torchrun's process group (WORLD_SIZE > 1)
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    if info.distributed:
        args.device = str(info.device)
    try:
        start = time.perf_counter()
        pipeline = load_model(args)
        # the shards and the final .npz are on disk together for a moment
        need_bytes = 2 * args.num_samples * image_bytes(pipeline)
        where = f"free disk under {work}"
        check_room("--num-samples", args.num_samples, need_bytes, where, free_disk_bytes(work), "the images")
        check_batch_fits(args.model_batch_flag, min(args.model_batch_size, args.num_samples), pipeline, pipeline.device)
        speed = ddpm_speed.plan(pipeline.device, args.channels_last, args.compile)
        ddpm_speed.apply(pipeline, pipeline.device, speed)
        out = generate_to_npz(
            pipeline,
            args.num_samples,
            args.out,
            seed=args.seed,
            batch_size=args.model_batch_size,
            num_inference_steps=args.num_inference_steps,
            progress=not args.no_progress,
            work_dir=work,
        )
        if out is not None:
            how = f", {speed.describe()}" if speed.describe() else ""
            what = f"{args.sampler} {args.num_inference_steps} steps, seed {args.seed}"
            print(f"wrote {args.num_samples} images to {out} ({what}; {time.perf_counter() - start:.1f} s{how})")
    finally:
        ddist.shutdown(info)
    return 0
