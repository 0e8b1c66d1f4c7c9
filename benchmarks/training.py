"""Training speed: images per second of one optimisation step, ours against Diffusers, same model config and loop.

Ours: ``ddpm.UNet2DModel`` + ``ddpm.DDPMScheduler`` + the step the trainer runs
(:func:`ddpm.training.trainer.optimisation_step`: L_simple, backward, global-norm clip 1.0, Adam, float32 EMA).
Diffusers: ``diffusers.UNet2DModel`` (same config, same initial weights) + ``diffusers.DDPMScheduler.add_noise``, the
loop of Diffusers' ``train_unconditional.py`` example (``F.mse_loss(out.float(), noise.float())``, backward,
``clip_grad_norm_(1.0)``, Adam, ``EMAModel.step``). Same batch, precision (autocast for bf16), optimizer, seeds.
Timed interleaved (``benchmarks._report.time_pair``); then each side's peak memory during one step is measured on
its own (``benchmarks._report.peak_memory``). Run::

    .venv/bin/python -m benchmarks.training                 # CPU: 32x32, channels 32/64, batch 16, fp32
    .venv/bin/python -m benchmarks.training --device cuda   # CIFAR-10 preset (35.7M), batch 128, fp32 and bf16

TFLOP/s = images/s x 3 x (forward FLOPs per image) (backward ~ 2x forward), with 11.76 GFLOP per CIFAR-10 image
(``benchmarks.flops.unet_forward_flops``).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

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

SMALL = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    norm_eps=1e-6, dropout=0.1,
)  # fmt: skip


def _cifar10() -> dict:
    from ddpm.training.config import resolve_config

    return resolve_config("cifar10").unet_config()


def build(config: dict, device: str, batch: int, precision: str):
    import diffusers
    from diffusers.training_utils import EMAModel

    from ddpm import DDPMScheduler, UNet2DModel
    from ddpm.training.ema import EMA
    from ddpm.training.trainer import optimisation_step

    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**config).to(device).train()
    ours = UNet2DModel(**config).to(device).train()
    ours.load_state_dict(theirs.state_dict())
    sched_kw = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    our_sched = DDPMScheduler(**sched_kw)
    their_sched = diffusers.DDPMScheduler(**sched_kw)
    autocast = {"fp32": None, "bf16": torch.bfloat16}[precision]

    our_opt = torch.optim.Adam(ours.parameters(), lr=2e-4, **({"fused": True} if device == "cuda" else {}))
    their_opt = torch.optim.Adam(theirs.parameters(), lr=2e-4, **({"fused": True} if device == "cuda" else {}))
    our_ema = EMA(ours, decay=0.9999)
    their_ema = EMAModel(theirs.parameters(), decay=0.9999, use_ema_warmup=False)
    their_ema.to(device)

    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand((batch, 3, config["sample_size"], config["sample_size"]), generator=g, device=device) * 2 - 1

    def draw():
        t = torch.randint(0, 1000, (batch,), generator=g, device=device)
        return t, torch.randn(x0.shape, generator=g, device=device)

    def ours_step():
        t, noise = draw()
        optimisation_step(ours, our_sched, our_opt, x0, noise, t, lr=2e-4, grad_clip=1.0, autocast_dtype=autocast,
                          ema=our_ema)  # fmt: skip

    def theirs_step():
        t, noise = draw()
        noisy = their_sched.add_noise(x0, noise, t)
        if autocast is not None:
            with torch.autocast(device_type=device, dtype=autocast):
                out = theirs(noisy, t).sample
        else:
            out = theirs(noisy, t).sample
        loss = F.mse_loss(out.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        their_opt.step()
        their_opt.zero_grad(set_to_none=True)
        their_ema.step(theirs.parameters())

    return ours_step, theirs_step


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per side (default 7 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side before timing (default 3)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 16 on CPU, 128 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory steps")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks")
    return parser


def collect(args: argparse.Namespace) -> Section:
    """Time one optimisation step of both loops for every case; the section for docs/benchmarks.md."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from benchmarks.flops import unet_forward_flops

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device available")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        batch = args.batch or 128
        cases = [("cifar10 (35.7M)", _cifar10(), batch, "fp32"), ("cifar10 (35.7M)", _cifar10(), batch, "bf16")]
        repeats = args.repeats or 20
    else:
        cases = [("small 32x32, 32/64 ch", dict(SMALL), args.batch or 16, "fp32")]
        repeats = args.repeats or 7
    lines, rows = [], []
    for name, config, batch, precision in cases:
        ours, theirs = build(config, args.device, batch, precision)
        t_ours, t_theirs = time_pair(ours, theirs, repeats=repeats, warmup=args.warmup, device=args.device)
        peak_ours = peak_theirs = None
        if not args.no_memory:
            peak_ours = peak_memory(ours, args.device)
            peak_theirs = peak_memory(theirs, args.device)
        del ours, theirs
        if args.device == "cuda":
            torch.cuda.empty_cache()
        flops = 3 * unet_forward_flops(config, batch_size=1)
        entry = {
            "case": f"{name.split()[0]}_{precision}_batch{batch}", "model": name, "batch": batch,
            "precision": precision, "device": args.device,
            "ours_s": t_ours, "diffusers_s": t_theirs, "ratio": t_theirs / t_ours,
            "ours_s_per_step": t_ours, "diffusers_s_per_step": t_theirs,
            "ours_images_per_s": batch / t_ours, "diffusers_images_per_s": batch / t_theirs,
            "ours_tflops": batch / t_ours * flops / 1e12, "diffusers_tflops": batch / t_theirs * flops / 1e12,
            "train_flops_per_image": flops,
            "ours_peak_mib": mib(peak_ours), "diffusers_peak_mib": mib(peak_theirs),
        }  # fmt: skip
        rows.append(entry)
        lines.append(
            f"| {name} | {args.device} | {batch} | {precision} | {entry['ours_images_per_s']:.1f} | "
            f"{entry['diffusers_images_per_s']:.1f} | {entry['ratio']:.2f} | {entry['ours_tflops']:.3f} | "
            f"{entry['diffusers_tflops']:.3f} | {fmt_mib(peak_ours)} | {fmt_mib(peak_theirs)} |"
        )
        print(lines[-1], flush=True)
    table = (
        "| model | device | batch | precision | ours img/s | Diffusers img/s | ratio | ours TFLOP/s "
        "| Diffusers TFLOP/s | ours peak (MiB) | Diffusers peak (MiB) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines)
    )
    notes = (
        "One optimisation step each (loss, backward, clip 1.0, Adam, EMA 0.9999), same initial weights, same batch; "
        f"median of {repeats} interleaved steps after {args.warmup} warm-up step(s). "
        "TFLOP/s counts 3x the forward FLOPs per image (`benchmarks.flops`)."
    )
    if not args.no_memory:
        notes += f" Peak memory: one step per side, measured separately after the timing: {memory_method(args.device)}."
    return Section("training" if args.device == "cpu" else "training_cuda", "Training speed", table, rows, notes)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device", file=sys.stderr)
        return 1
    section = collect(args)
    if not args.no_write:
        section.command = command_line("python -m benchmarks.training", argv if argv is not None else sys.argv[1:])
        write_section(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
