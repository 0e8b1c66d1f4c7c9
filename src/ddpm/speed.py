"""Speed settings of the sampling commands (``ddpm sample``, ``ddpm eval generate``) and their ``auto`` rules.

Each setting is a switch with three values: ``on``, ``off`` or ``auto``; ``auto`` turns it on only where it was
measured to pay (``docs/benchmarks.md``, "Fast paths"):

* ``--channels-last``: on CPU the pipeline runs the UNet's convolutions on channels-last weights and activations
  (:attr:`ddpm.DDPMPipeline.cpu_channels_last`); ``auto`` = on for CPU, off for CUDA (not measured on a GPU yet).
* ``--compile``: ``torch.compile`` of the UNet (:meth:`ddpm.DDPMPipeline.compile`; on CPU with frozen weights).
  Each batch shape costs one compilation (tens of seconds on a CPU), so ``auto`` compiles only runs long enough to
  win that back: on CPU from :data:`CPU_COMPILE_MIN_IMAGE_STEPS` image-steps per batch shape; never on CUDA until it
  is measured there.
* ``--threads``: torch's intra-op threads (default: torch's choice, one per core).

The fast paths give the reference images within 1e-4 on [0, 1] (``tests/test_pipeline_fast.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

SWITCH = ("auto", "on", "off")

#: ``--compile auto`` on CPU: compile when (images x steps) per distinct batch shape reaches this. Measured with the
#: bundled model on the 2-core CPU machine (docs/benchmarks.md, "Fast paths").
CPU_COMPILE_MIN_IMAGE_STEPS = 100_000


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--threads``, ``--channels-last`` and ``--compile`` options (see this module's docstring)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--channels-last",
        default="auto",
        choices=SWITCH,
        help="run the UNet on channels-last memory; auto: on for CPU (measured faster), off for CUDA",
    )
    parser.add_argument(
        "--compile",
        default="auto",
        choices=SWITCH,
        help="torch.compile the UNet (one compilation per batch shape, tens of seconds on a CPU); auto: on for CPU "
        f"runs of at least {CPU_COMPILE_MIN_IMAGE_STEPS:,} image-steps per batch shape, off on CUDA (unmeasured)",
    )


def check_speed_arguments(args: argparse.Namespace) -> str | None:
    """An error message for bad speed options, else None."""
    if args.threads is not None and args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    return None


@dataclass(frozen=True)
class SpeedPlan:
    channels_last: bool
    compile: bool
    threads: int

    def describe(self) -> str:
        """E.g. ``"2 thread(s), channels-last, compiled"`` (threads only on CPU)."""
        parts = [f"{self.threads} thread(s)"] if self.threads else []
        parts += ["channels-last"] if self.channels_last else []
        parts += ["compiled"] if self.compile else []
        return ", ".join(parts)


def batch_shapes(num_images: int, batch_size: int) -> int:
    """How many distinct batch sizes a run of ``num_images`` in batches of ``batch_size`` uses (1 or 2)."""
    return 1 if num_images <= batch_size or num_images % batch_size == 0 else 2


def plan(
    device: torch.device, num_images: int, batch_size: int, steps: int, channels_last: str = "auto",
    compile: str = "auto",
) -> SpeedPlan:  # fmt: skip
    """Resolve ``auto`` for a run of ``num_images`` in batches of ``batch_size`` with ``steps`` steps on ``device``."""
    for name, value in (("channels_last", channels_last), ("compile", compile)):
        if value not in SWITCH:
            raise ValueError(f"{name} must be one of {SWITCH}, got {value!r}")
    cpu = device.type == "cpu"
    use_cl = channels_last == "on" or (channels_last == "auto" and cpu)
    per_shape = num_images * steps / batch_shapes(num_images, batch_size)
    use_compile = compile == "on" or (compile == "auto" and cpu and per_shape >= CPU_COMPILE_MIN_IMAGE_STEPS)
    return SpeedPlan(channels_last=use_cl, compile=use_compile, threads=torch.get_num_threads() if cpu else 0)


def apply(pipe, device: torch.device, speed: SpeedPlan) -> None:
    """Set up ``pipe`` (already on ``device``) for ``speed``."""
    pipe.cpu_channels_last = speed.channels_last
    if speed.channels_last and device.type != "cpu":
        pipe.to(memory_format=torch.channels_last)
    pipe.compile(speed.compile)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)
