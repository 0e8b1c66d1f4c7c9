"""The whole side-by-side benchmark suite in one command: ours against Diffusers, same weights, same inputs.

    .venv/bin/python -m benchmarks --threads 1           # CPU, everything (estimated 10-20 min on 2 cores)
    .venv/bin/python -m benchmarks --device cuda         # GPU: CIFAR-10 UNet, batches up to 256
    .venv/bin/python -m benchmarks --quick               # smoke run, tiny repeats and steps, writes nothing
    .venv/bin/python -m benchmarks --only sampling training --no-write

Runs, in this order, the ``collect`` of each benchmark module (each also runs alone as ``python -m benchmarks.NAME``):

* ``scheduler_step``: one ``DDPMScheduler.step()`` at batch 1 and 64;
* ``unet_forward``: one forward of the CIFAR-10 UNet (CPU: batch 1, 16; CUDA: 1, 64, 256 in float32 and bfloat16);
* ``sampling``: whole ``DDPMPipeline`` runs, images/s and peak memory at batch 1, 16, 64 and 256 (CPU: the small
  UNet, 50 steps at batch 1 and 16, 10 at 64 and 256, each as our defaults, the NCHW reference path and
  compiled; CUDA: the CIFAR-10 UNet, 100 steps; ``--steps`` for all);
* ``training``: one optimisation step, images/s and peak memory.

Every row has medians of interleaved repetitions of both sides and ratio = Diffusers time / our time. The results
replace the benchmarks' sections of docs/benchmarks.md and go, with the machine, versions, date and command, into one
docs/benchmarks/suite-<device>.json (``--out-dir DIR``: DIR/benchmarks.md and DIR/benchmarks/ instead of docs/).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

import torch

from benchmarks._report import Section, command_line, suite_payload, write_suite

BENCHMARKS = ("scheduler_step", "unet_forward", "sampling", "training")
QUICK_NOTE = "Smoke run (`--quick`): tiny repeats, batches and step counts; not a measurement."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny repeats/steps; writes nothing unless --out-dir")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help=f"subset of {BENCHMARKS}")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of every sampling row")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions of every benchmark")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument("--out-dir", default=None, help="write benchmarks.md and benchmarks/*.json here, not docs/")
    return parser


def benchmark_argv(name: str, args: argparse.Namespace) -> list[str]:
    """The command-line arguments the suite gives the benchmark ``name`` (its own parser reads them)."""
    cuda = args.device == "cuda"
    if name == "scheduler_step":
        argv = ["--repeats", "3" if args.quick else "21", "--threads", str(torch.get_num_threads())]
    elif name == "unet_forward":
        argv = ["--device", args.device]
        if args.quick:
            argv += ["--batches", "1", "--repeats", "1", "--warmup", "0"]  # the correctness call warms both up
    elif name == "sampling":
        argv = ["--device", args.device]
        if args.quick:
            argv += ["--batch-sizes", "1", "2", "--steps", "2", "--repeats", "1", "--warmup", "0"]
        else:
            argv += ["--batch-sizes", "1", "16", "64", "256", "--variants", "ours", "nchw", "compiled"]
            if cuda:
                argv += ["--steps", "100"]
            else:  # keeps the CPU suite at about 10 min of sampling on 2 cores with 1 thread
                argv += ["--steps", "50", "--batch-steps", "64=10", "256=10", "--repeats", "3"]
        if args.steps:
            argv += ["--steps", str(args.steps)]
            argv = _drop_option(argv, "--batch-steps")
    elif name == "training":
        argv = ["--device", args.device]
        if args.quick:
            argv += ["--batch", "2", "--repeats", "1", "--warmup", "1"]
    else:
        raise ValueError(f"unknown benchmark {name!r}")
    if args.repeats:
        argv += ["--repeats", str(args.repeats)]  # argparse keeps the last one
    return [*argv, "--no-write"]


def _drop_option(argv: list[str], option: str) -> list[str]:
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg == option
        if not skipping:
            out.append(arg)
    return out


def _summary(sections: list[Section]) -> str:
    lines = [f"{'benchmark':<16} {'case':<34} {'ours (ms)':>11} {'Diffusers (ms)':>15} {'ratio':>7}"]
    for section in sections:
        for row in section.rows:
            lines.append(
                f"{section.name:<16} {row['case']:<34} {row['ours_s'] * 1e3:>11.3f} "
                f"{row['diffusers_s'] * 1e3:>15.3f} {row['ratio']:>6.2f}x"
            )
    return "\n".join(lines)


def run_suite(argv: list[str] | None = None) -> dict:
    """Run the suite; the combined payload (also written to suite-<device>.json unless nothing is to be written)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = command_line("python -m benchmarks", argv if argv is not None else sys.argv[1:])
    write = not args.no_write and (args.out_dir is not None or not args.quick)

    sections, runs = [], []
    for name in args.only or BENCHMARKS:
        module = importlib.import_module(f"benchmarks.{name}")
        sub_argv = benchmark_argv(name, args)
        print(f"== {name}: python -m benchmarks.{name} {' '.join(sub_argv)}", flush=True)
        t0 = time.perf_counter()
        run = {"name": name, "argv": sub_argv}
        try:
            section = module.collect(module.build_parser().parse_args(sub_argv))
        except Exception as exc:  # keep the other benchmarks' results; the exit status reports the failure
            traceback.print_exc()
            run["error"] = f"{type(exc).__name__}: {exc}"
        else:
            section.command = command
            if args.quick:
                section.notes = f"{QUICK_NOTE}\n\n{section.notes}"
            sections.append(section)
            run["section"] = section.name
        run["seconds"] = time.perf_counter() - t0
        runs.append(run)
        print(f"== {name}: {run['seconds']:.1f} s", flush=True)

    payload = suite_payload(sections, args.device, command, args.quick, runs)
    print(_summary(sections))
    if write:
        path = write_suite(payload, sections, args.out_dir)
        print(f"wrote {path} and {path.parent.parent / 'benchmarks.md'}")
    return payload


def main(argv: list[str] | None = None) -> int:
    payload = run_suite(argv)
    failed = [run["name"] for run in payload["benchmarks"] if "error" in run]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
