"""Speed settings of the sampling commands (``ddpm sample``, ``ddpm eval generate``) and their ``auto`` rules.

Each setting is a switch with three values: ``on``, ``off`` or ``auto``; ``auto`` turns it on only where it was
measured to pay (``docs/benchmarks.md``, "Fast paths"):

* ``--channels-last``: the ``channels_last`` switch of the pipeline's :class:`ddpm.models.FastPaths`
  (:attr:`ddpm.DDPMPipeline.fast_paths`): on CPU the UNet's convolutions run on channels-last weights and
  activations; ``off`` runs plain NCHW throughout; ``auto`` = on for CPU, off for CUDA (not measured on a GPU yet).
  On CUDA, ``on`` stores the UNet's weights channels-last.
* ``--compile``: ``torch.compile`` of the UNet (:meth:`ddpm.DDPMPipeline.compile`; on CPU with frozen weights).
  ``auto`` never compiles: on CPU the compiled UNet was measured slower than our eager one, and on a GPU it has
  not been measured yet (the numbers: ``docs/benchmarks.md``). ``on`` compiles (one compilation per batch shape).
* ``--threads``: torch's intra-op threads (default: the cores other processes leave idle, see :mod:`ddpm.threads`).

The fast paths give the reference images within 1e-4 on [0, 1] (``tests/test_pipeline_fast.py``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

SWITCH = ("auto", "on", "off")

#: Devices on which ``--compile auto`` compiles: where it was measured to pay. None yet (see the module docstring).
COMPILE_PAYS_ON: tuple[str, ...] = ()


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--threads``, ``--channels-last`` and ``--compile`` options (see this module's docstring)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: the cores other processes leave idle, at least 1)",
    )
    parser.add_argument(
        "--channels-last",
        default="auto",
        choices=SWITCH,
        help="run the UNet on channels-last memory (off: plain NCHW throughout); auto: on for CPU (measured "
        "faster), off for CUDA",
    )
    parser.add_argument(
        "--compile",
        default="auto",
        choices=SWITCH,
        help="torch.compile the UNet (one compilation per batch shape); auto: off (measured slower than eager on "
        "CPU, not measured on a GPU yet)",
    )


def check_speed_arguments(args: argparse.Namespace) -> str | None:
    """An error message for bad speed options, else None."""
    from ddpm.threads import check_threads

    return check_threads(args.threads)


@dataclass(frozen=True)
class SpeedPlan:
    """A sampling run's resolved speed options: ``channels_last`` goes to the pipeline's ``FastPaths``."""

    channels_last: bool
    compile: bool
    threads: int

    def describe(self) -> str:
        """E.g. ``"2 thread(s), channels-last, compiled"`` (threads only on CPU)."""
        parts = [f"{self.threads} thread(s)"] if self.threads else []
        parts += ["channels-last"] if self.channels_last else []
        parts += ["compiled"] if self.compile else []
        return ", ".join(parts)


def plan(device: torch.device, channels_last: str = "auto", compile: str = "auto") -> SpeedPlan:
    """Resolve ``auto`` for a sampling run on ``device``."""
    import torch

    for name, value in (("channels_last", channels_last), ("compile", compile)):
        if value not in SWITCH:
            raise ValueError(f"{name} must be one of {SWITCH}, got {value!r}")
    cpu = device.type == "cpu"
    use_cl = channels_last == "on" or (channels_last == "auto" and cpu)
    use_compile = compile == "on" or (compile == "auto" and device.type in COMPILE_PAYS_ON)
    return SpeedPlan(channels_last=use_cl, compile=use_compile, threads=torch.get_num_threads() if cpu else 0)


def apply(pipe, device: torch.device, speed: SpeedPlan) -> None:
    """Set up ``pipe`` (already on ``device``) for ``speed``: its fast-path setting and compilation."""
    import torch

    pipe.set_fast_paths(channels_last=speed.channels_last)
    if speed.channels_last and device.type != "cpu":
        pipe.to(memory_format=torch.channels_last)
    pipe.compile(speed.compile)


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads``, or the default of :func:`ddpm.threads.auto_threads` for None."""
    from ddpm.threads import set_threads as set_torch_threads

    return set_torch_threads(threads)
