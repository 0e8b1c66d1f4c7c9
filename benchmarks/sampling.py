"""Sampling speed: images per second of a whole ``pipe(...)`` run, ours against Diffusers' ``DDPMPipeline``.

Both pipelines get the same weights (Diffusers' UNet state dict loaded into ours), the same scheduler config and
the same seed, and are timed interleaved (``benchmarks._report.time_pair``). After the timing, each side's peak
memory during one run is measured on its own (``benchmarks._report.peak_memory``). Run::

    .venv/bin/python -m benchmarks.sampling                 # CPU, small 32x32 UNet, batch 1 and 16
    .venv/bin/python -m benchmarks.sampling --device cuda   # CIFAR-10 UNet (35.7M), batch 1, 64, 256, float32
    .venv/bin/python -m benchmarks.sampling --batch-sizes 1 16 64 --batch-steps 64=10   # fewer steps at batch 64
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks._report import (
    Section,
    command_line,
    fmt_mib,
    memory_method,
    mib,
    peak_memory,
    time_pair,
    write_section,
)

# Small CPU config: 32x32, two levels (32, 64), attention at 16x16, DDPM flags.
SMALL = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
)

# google/ddpm-cifar10-32 (diffusers-ddpm.md section 3.5).
CIFAR10 = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
    act_fn="silu",
    center_input_sample=False,
    mid_block_scale_factor=1,
    time_embedding_type="positional",
)


VARIANTS = ("ours", "nchw", "compiled", "bfloat16")
LABELS = {"ours": "ours", "nchw": "ours, NCHW", "compiled": "ours, compiled", "bfloat16": "ours, bfloat16"}


def variant(ours, name: str):
    """A pipeline sharing nothing mutable with ``ours`` set up as variant ``name`` (see ``--variants``)."""
    import copy

    import ddpm

    pipe = ddpm.DDPMPipeline(copy.deepcopy(ours.unet), ours.scheduler)
    pipe.set_progress_bar_config(disable=True)
    if name == "nchw":
        pipe.set_fast_paths(channels_last=False)
    elif name == "compiled":
        pipe.compile()
    elif name == "bfloat16":
        pipe.to(torch.bfloat16)
    return pipe


def build(config: dict, device: str, variance_type: str):
    import diffusers

    import ddpm

    torch.manual_seed(0)
    their_unet = diffusers.UNet2DModel(**config).eval()
    our_unet = ddpm.UNet2DModel(**config).eval()
    our_unet.load_state_dict(their_unet.state_dict())
    sched = {"variance_type": variance_type}
    theirs = diffusers.DDPMPipeline(unet=their_unet.to(device), scheduler=diffusers.DDPMScheduler(**sched))
    ours = ddpm.DDPMPipeline(unet=our_unet.to(device), scheduler=ddpm.DDPMScheduler(**sched))
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    return ours, theirs


def _batch_steps(item: str) -> tuple[int, int]:
    batch, sep, steps = item.partition("=")
    if not sep or not batch.isdigit() or not steps.isdigit() or int(batch) < 1 or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"expected BATCH=STEPS (positive integers), got {item!r}")
    return int(batch), int(steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: 50 on CPU, 100 on CUDA)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 16 (CPU), 1 64 256")
    parser.add_argument(
        "--batch-steps",
        nargs="+",
        type=_batch_steps,
        default=[],
        metavar="BATCH=STEPS",
        help="denoising steps for some batch sizes instead of --steps, e.g. 64=10 256=10 (images/s scales as 1/steps)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side before timing (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["ours"],
        choices=VARIANTS,
        help="our pipelines to time against Diffusers: ours (the defaults: channels-last on CPU), nchw (the plain "
        "NCHW path, pipe.set_fast_paths(channels_last=False)), compiled (pipe.compile(); compilation untimed, "
        "reported), bfloat16",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks")
    return parser


def collect(args: argparse.Namespace) -> Section:
    """Time whole sampling runs of both pipelines at every batch size; the section for docs/benchmarks.md."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device available")
    config, name = (CIFAR10, "CIFAR-10 UNet (35.7M params)") if cuda else (SMALL, "small UNet 32x32 (32, 64)")
    default_steps = args.steps or (100 if cuda else 50)
    steps_for = dict(args.batch_steps)
    batch_sizes = args.batch_sizes or ([1, 64, 256] if cuda else [1, 16])
    ours, theirs = build(config, args.device, "fixed_large")

    variants = [(LABELS[v], ours if v == "ours" else variant(ours, v), v) for v in dict.fromkeys(args.variants)]

    lines, rows = [], []
    for batch in batch_sizes:
        steps = steps_for.get(batch, default_steps)

        def run(pipe, batch=batch, steps=steps):
            return pipe(
                batch_size=batch,
                generator=torch.Generator().manual_seed(0),
                num_inference_steps=steps,
                output_type="np",
            ).images

        reference = run(theirs)
        peak_theirs = None
        for label, pipe, kind in variants:
            t0 = time.perf_counter()
            max_diff = float(np.abs(run(pipe) - reference).max())
            first_s = time.perf_counter() - t0  # includes the compilation for "compiled"
            t_ours, t_theirs = time_pair(
                lambda pipe=pipe: run(pipe),
                lambda: run(theirs),
                repeats=args.repeats,
                warmup=args.warmup,
                device=args.device,
            )
            peak_ours = None
            if not args.no_memory:
                peak_ours = peak_memory(lambda pipe=pipe: run(pipe), args.device)
                if peak_theirs is None:
                    peak_theirs = peak_memory(lambda: run(theirs), args.device)
            ips_ours, ips_theirs = batch / t_ours, batch / t_theirs
            ratio = t_theirs / t_ours
            rows.append(
                {
                    "case": f"{label.replace(', ', '_')}_batch{batch}_steps{steps}",
                    "device": args.device,
                    "model": name,
                    "variant": label,
                    "dtype": "bfloat16" if kind == "bfloat16" else "float32",
                    "first_call_s": first_s,
                    "steps": steps,
                    "batch_size": batch,
                    "ours_s": t_ours,
                    "diffusers_s": t_theirs,
                    "ours_images_per_s": ips_ours,
                    "diffusers_images_per_s": ips_theirs,
                    "ratio": ratio,
                    "max_abs_diff": max_diff,
                    "ours_peak_mib": mib(peak_ours),
                    "diffusers_peak_mib": mib(peak_theirs),
                }
            )
            lines.append(
                f"| {args.device} | {name} | {label} | {steps} | {batch} | {ips_ours:.3g} | {ips_theirs:.3g} "
                f"| {ratio:.2f}x | {fmt_mib(peak_ours)} | {fmt_mib(peak_theirs)} | {max_diff:.1e} |"
            )
            print(lines[-1], flush=True)

    table = (
        "| device | model | ours | steps | batch | ours (images/s) | Diffusers (images/s) | ratio "
        "| ours peak (MiB) | Diffusers peak (MiB) | max abs diff |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)
    )
    step_counts = sorted({row["steps"] for row in rows})
    notes = (
        f"Whole `pipe(batch_size=B, generator=torch.Generator().manual_seed(0), num_inference_steps=S, "
        f"output_type='np')` runs (S = {', '.join(map(str, step_counts))}, per row), float32, same weights and seed; "
        f"median of {args.repeats} interleaved runs after {args.warmup} warm-up run(s); "
        f"{torch.get_num_threads()} torch thread(s). Ratio = Diffusers time / our time; images/s scales as 1/steps. "
        "Max abs diff: largest difference between the two pipelines' images (in [0, 1])."
    )
    if not args.no_memory:
        notes += f" Peak memory: one run per side, measured separately after the timing: {memory_method(args.device)}."
    notes += (
        " `ours`: the defaults (on CPU the pipeline runs the UNet channels-last); `ours, NCHW`: "
        "`pipe.set_fast_paths(channels_last=False)`, the plain NCHW path at every batch size; `ours, compiled`: "
        "`pipe.compile()` (frozen weights on CPU), timed after its compilation, whose cost is `first_call_s` in the "
        "JSON; `ours, bfloat16`: `pipe.to(torch.bfloat16)` (max abs diff then measures the precision loss, not a bug)."
    )
    return Section(f"sampling-{args.device}", f"Sampling ({args.device})", table, rows, notes)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.sampling: --device cuda but no CUDA device is available", file=sys.stderr)
        return 1
    section = collect(args)
    if not args.no_write:
        section.command = command_line("python -m benchmarks.sampling", argv if argv is not None else sys.argv[1:])
        write_section(section)
    print(section.table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
