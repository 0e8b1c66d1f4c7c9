"""UNet2DModel forward: ours against Diffusers, same weights, same inputs, the CIFAR-10 DDPM config.

    .venv/bin/python -m benchmarks.unet_forward                 # CPU, batch 1 and 16, float32
    .venv/bin/python -m benchmarks.unet_forward --device cuda   # GPU, batch 1, 64, 256 in float32 and bfloat16

Both models run under ``torch.inference_mode()``; times are medians of interleaved repetitions (``time_pair``).
Achieved TFLOP/s use :func:`benchmarks.flops.unet_forward_flops` (11.76 GFLOP per 32x32 image: convolutions and the
attention products, 2 FLOPs per multiply-add).
"""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from benchmarks._report import Section, command_line, time_pair, write_section
from benchmarks.flops import unet_forward_flops
from ddpm import UNet2DModel

CIFAR10 = dict(
    sample_size=32,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(device: str, dtype: torch.dtype):
    from diffusers import UNet2DModel as DiffusersUNet
    from diffusers.utils import logging as diffusers_logging

    torch.manual_seed(0)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # silence "modules that should be kept in float32" on .to(dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = DiffusersUNet(**CIFAR10).eval()
        ours = UNet2DModel(**CIFAR10).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        return ours.to(device, dtype), theirs.to(device, dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 16 (cpu), 1 64 256 (cuda)")
    parser.add_argument("--dtypes", nargs="+", default=None, choices=sorted(DTYPES), help="default: float32 (cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 7 on cpu, 20 on cuda)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per side (default 2 on cpu, 3 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--channels-last", action="store_true", help="both models and inputs in channels-last memory format"
    )
    parser.add_argument("--note", default="", help="extra text for the results section (e.g. machine load)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    return parser


def collect(args: argparse.Namespace) -> Section:
    """Time both forwards at every dtype and batch; the section for docs/benchmarks.md."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    batches = args.batches or ([1, 64, 256] if cuda else [1, 16])
    dtypes = args.dtypes or (["float32", "bfloat16"] if cuda else ["float32"])
    repeats = args.repeats or (20 if cuda else 7)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 2)
    if cuda:
        torch.backends.cudnn.benchmark = True

    lines, rows = [], []
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        ours, theirs = build(args.device, dtype)
        layout = torch.channels_last if args.channels_last else torch.contiguous_format
        ours, theirs = ours.to(memory_format=layout), theirs.to(memory_format=layout)
        for batch in batches:
            gen = torch.Generator().manual_seed(batch)
            x = torch.randn(batch, 3, 32, 32, generator=gen).to(args.device, dtype, memory_format=layout)
            t = torch.randint(0, 1000, (batch,), generator=gen).to(args.device)
            with torch.inference_mode():
                err = (ours(x, t).sample.float() - theirs(x, t).sample.float()).abs().max().item()
                ours_s, theirs_s = time_pair(
                    lambda m=ours, x=x, t=t: m(x, t),
                    lambda m=theirs, x=x, t=t: m(x, t),
                    repeats=repeats,
                    warmup=warmup,
                    inner=5 if cuda and batch == 1 else 1,
                    device=args.device,
                )
            flops = unet_forward_flops(CIFAR10, batch_size=batch)
            entry = {
                "case": f"{args.device}_{dtype_name}_batch{batch}",
                "device": args.device,
                "dtype": dtype_name,
                "batch": batch,
                "channels_last": args.channels_last,
                "ours_s": ours_s,
                "diffusers_s": theirs_s,
                "ratio": theirs_s / ours_s,
                "ours_tflops": flops / ours_s / 1e12,
                "diffusers_tflops": flops / theirs_s / 1e12,
                "max_abs_diff": err,
            }
            rows.append(entry)
            lines.append(
                f"| {args.device} | {dtype_name} | {batch} | {ours_s * 1e3:.1f} | {theirs_s * 1e3:.1f} | "
                f"**{entry['ratio']:.2f}x** | {entry['ours_tflops']:.3f} | {entry['diffusers_tflops']:.3f} |"
            )
            print(lines[-1], f"max|diff|={err:.2e}", flush=True)
        del ours, theirs
        if cuda:
            torch.cuda.empty_cache()

    table = (
        "| device | dtype | batch | ours (ms) | Diffusers (ms) | ratio | ours TFLOP/s | Diffusers TFLOP/s |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(lines)
    )
    notes = (
        "CIFAR-10 DDPM UNet (35.7M parameters), one forward at 32x32 under `torch.inference_mode()`, the same random "
        "weights in both. FLOPs per image: 11.76 GFLOP (convolutions + attention products, 2 FLOPs per multiply-add; "
        "`benchmarks.flops.unet_forward_flops`). Ratio = Diffusers time / our time. On CPU, from batch 4 on our "
        "forward runs on channels-last activations (oneDNN convolutions are faster on NHWC); Diffusers runs as is."
    )
    if cuda:
        notes += " GPU: cuDNN benchmark mode on, NCHW unless `--channels-last`."
    if args.note:
        notes += "\n\n" + args.note
    name = ("unet_forward" if not cuda else "unet_forward_cuda") + ("_channels_last" if args.channels_last else "")
    title = "UNet2DModel forward (CIFAR-10 config)" + (" on GPU" if cuda else " on CPU")
    return Section(name, title, table, rows, notes)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    section = collect(args)
    if not args.no_write:
        shown, skip = [], False
        for arg in argv if argv is not None else sys.argv[1:]:
            if skip or arg.startswith("--note"):
                skip = arg == "--note"
                continue
            shown.append(arg)
        section.command = command_line("python -m benchmarks.unet_forward", shown)
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
