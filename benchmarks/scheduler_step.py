"""Scheduler steps, ours against Diffusers, in the same run (CPU, float32).

* One DDPMScheduler.step(): after set_timesteps(1000), a timestep t > 0 taken from ``scheduler.timesteps`` (as a
  pipeline does), noise drawn from a seeded torch.Generator.
* A whole 25-step pass of each sampler's scheduler (DDPM, DDIM with eta 0 and 1, DPM-Solver++ 2M and its SDE
  form): ``set_timesteps(25)`` and 25 ``step()`` calls with a fixed model output, per step. The multistep solver
  keeps state between steps, so a pass (not one call) is the unit there.

Batch 1 and 64 at 3x32x32. Medians of interleaved repetitions.

    .venv/bin/python -m benchmarks.scheduler_step [--repeats N] [--threads N ...] [--no-write]
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks._report import Section, command_line, time_pair, write_section

NAME = "scheduler_step"
SHAPE = (3, 32, 32)
CASES = ((1, 200), (64, 5))  # (batch, calls per timed measurement)


def _setup(cls, batch: int):
    scheduler = cls()
    scheduler.set_timesteps(1000)
    t = scheduler.timesteps[500]  # t = 499, as yielded by `for t in scheduler.timesteps`
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn((batch, *SHAPE), generator=gen)
    model_output = torch.randn((batch, *SHAPE), generator=gen)
    step_gen = torch.Generator().manual_seed(1)
    return lambda: scheduler.step(model_output, t, sample, generator=step_gen)


PASS_STEPS = 25
#: (label, our class name, keyword arguments of the constructor, keyword arguments of step)
PASS_CASES = (
    ("DDPM", "DDPMScheduler", {}, {}),
    ("DDIM eta 0", "DDIMScheduler", {}, {"eta": 0.0}),
    ("DDIM eta 1", "DDIMScheduler", {}, {"eta": 1.0}),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {}, {}),
    ("SDE-DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
)


def _setup_pass(cls, batch: int, init: dict, step_kwargs: dict):
    scheduler = cls(**init)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn((batch, *SHAPE), generator=gen)
    model_output = torch.randn((batch, *SHAPE), generator=gen) * 0.5

    def run():
        scheduler.set_timesteps(PASS_STEPS)
        step_gen = torch.Generator().manual_seed(1)
        x = sample
        for t in scheduler.timesteps:
            x = scheduler.step(model_output, t, x, generator=step_gen, **step_kwargs).prev_sample
        return x

    return run


def _collect_passes(args, thread_counts) -> tuple[list[str], list[dict]]:
    import diffusers

    import ddpm

    lines, rows = [], []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        for batch, _ in CASES:
            for label, name, init, step_kwargs in PASS_CASES:
                ours = _setup_pass(getattr(ddpm, name), batch, init, step_kwargs)
                ref = _setup_pass(getattr(diffusers, name), batch, init, step_kwargs)
                assert torch.allclose(ours(), ref(), rtol=1e-4, atol=1e-5)  # same work, same noise
                t_ours, t_ref = time_pair(ours, ref, repeats=max(3, args.repeats // 3), warmup=1, inner=1)
                per_ours, per_ref = t_ours / PASS_STEPS, t_ref / PASS_STEPS
                ratio = t_ref / t_ours
                rows.append(
                    {
                        "case": f"pass_{label.replace(' ', '_')}_threads{threads}_batch{batch}",
                        "scheduler": label,
                        "threads": threads,
                        "batch": batch,
                        "ours_s": t_ours,
                        "diffusers_s": t_ref,
                        "ours_us_per_step": per_ours * 1e6,
                        "diffusers_us_per_step": per_ref * 1e6,
                        "ratio": ratio,
                    }
                )
                lines.append(
                    f"| {label} | {batch} | {threads} | {per_ours * 1e6:.1f} | {per_ref * 1e6:.1f} | {ratio:.2f}x |"
                )
                print(f"{label:>20} threads {threads} batch {batch:>3}: ratio {ratio:.2f}x", flush=True)
    return lines, rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks*")
    parser.add_argument(
        "--threads", type=int, nargs="*", default=None, help="torch thread counts to run (default: torch's, then 1)"
    )
    return parser


def collect(args: argparse.Namespace) -> Section:
    """Time one step() of both schedulers at every thread count and batch; the section for docs/benchmarks.md."""
    from diffusers import DDPMScheduler as RefScheduler

    from ddpm import DDPMScheduler

    default_threads = torch.get_num_threads()
    thread_counts = args.threads or sorted({default_threads, 1}, reverse=True)
    lines, rows = [], []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch, inner in CASES:
                ours, ref = _setup(DDPMScheduler, batch), _setup(RefScheduler, batch)
                a, b = ours(), ref()
                assert torch.allclose(a.prev_sample, b.prev_sample, rtol=1e-5, atol=1e-6)  # same work, same noise
                t_ours, t_ref = time_pair(ours, ref, repeats=args.repeats, warmup=3, inner=inner)
                ratio = t_ref / t_ours
                rows.append(
                    {
                        "case": f"threads{threads}_batch{batch}",
                        "threads": threads,
                        "batch": batch,
                        "ours_s": t_ours,
                        "diffusers_s": t_ref,
                        "ours_us": t_ours * 1e6,
                        "diffusers_us": t_ref * 1e6,
                        "ratio": ratio,
                    }
                )
                lines.append(f"| {batch} | {threads} | {t_ours * 1e6:.1f} | {t_ref * 1e6:.1f} | {ratio:.2f}x |")
                print(
                    f"threads {threads} batch {batch:>3}: ours {t_ours * 1e6:9.1f} us   "
                    f"diffusers {t_ref * 1e6:9.1f} us   ratio {ratio:.2f}x",
                    flush=True,
                )
        pass_lines, pass_rows = _collect_passes(args, thread_counts)
        rows += pass_rows
    finally:
        torch.set_num_threads(default_threads)

    table = "\n".join(
        [
            "| batch (3x32x32, float32) | torch threads | ours (us) | Diffusers (us) | ratio |",
            "|---|---|---|---|---|",
            *lines,
            "",
            f"A whole {PASS_STEPS}-step pass (`set_timesteps` + {PASS_STEPS} `step()` calls), time per step:",
            "",
            "| scheduler | batch | torch threads | ours (us/step) | Diffusers (us/step) | ratio |",
            "|---|---|---|---|---|---|",
            *pass_lines,
        ]
    )
    notes = (
        "One `step()` after `set_timesteps(1000)` at t = 499 (noise drawn from a CPU `torch.Generator`), medians of "
        f"{args.repeats} interleaved repetitions. At batch 1 the per-call overhead dominates: ours indexes "
        "precomputed Python-float coefficients and runs 6 tensor kernels plus the draw, Diffusers builds ~20 0-d "
        "tensors per call and searches the schedule with `nonzero()`. At batch 64 the standard-normal draw "
        "(bit-identical in both, a single-threaded Mersenne Twister, ~0.5 ms here) is most of the time and bounds "
        "the ratio; ours saves the remaining elementwise passes (noise scaled inside `normal_`, in-place fused "
        "updates: 6 elementwise passes instead of 9). Absolute CPU times depend on the machine and its load; the "
        "ratios are what carries over."
    )
    return Section(NAME, "Schedulers: step() of DDPM, DDIM and DPM-Solver++ (CPU, float32)", table, rows, notes)


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    section = collect(args)
    if not args.no_write:
        shown = argv if argv is not None else sys.argv[1:]
        section.command = command_line("python -m benchmarks.scheduler_step", shown)
        write_section(section)
    return section.rows


if __name__ == "__main__":
    main()
