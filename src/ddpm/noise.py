"""Gaussian noise drawn exactly as Diffusers' ``randn_tensor`` draws it (same generator calls, same order).

The scheduler's per-step noise and the pipeline's starting noise both come from :func:`randn_tensor`, so that the same
weights and seed give the same samples in both libraries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["GeneratorArg", "generator_device_type", "randn_tensor"]

GeneratorArg = torch.Generator | Sequence[torch.Generator] | None


def generator_device_type(generator: GeneratorArg) -> str | None:
    """The device type (``"cpu"``, ``"cuda"``, ...) of ``generator`` or of the first of a list; None for None."""
    if generator is None:
        return None
    if isinstance(generator, (list, tuple)):
        if not generator:
            raise ValueError("generator=[] is empty; pass None, one torch.Generator, or one per batch item.")
        generator = generator[0]
    return generator.device.type


def randn_tensor(
    shape: Sequence[int],
    generator: GeneratorArg = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    std: float = 1.0,
) -> torch.Tensor:
    """Normal noise N(0, std²) of ``shape`` on ``device`` (default CPU), from the draws of Diffusers' ``randn_tensor``.

    A CPU generator with a non-CPU target draws on the CPU and moves the result (the same numbers on every machine);
    any other generator must be on the target's device type (else ``ValueError``). A list of generators draws batch
    row ``i`` from ``generator[i]`` and must hold one per row; a list of one is the same as that generator. ``std`` is
    applied by ``normal_`` itself, which multiplies the same standard-normal draw by it (one pass fewer than drawing
    and scaling); ``std=1`` gives exactly ``torch.randn``'s numbers.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    shape = tuple(shape)
    if generator is None or (isinstance(generator, torch.Generator) and generator.device.type == device.type):
        return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std, generator=generator)
    gen_type = generator_device_type(generator)
    rand_device = device
    if gen_type != device.type:
        if gen_type != "cpu":
            raise ValueError(
                f"Cannot generate a {device} tensor from a generator of type {gen_type}; use a CPU generator or one "
                f"on {device.type}."
            )
        rand_device = torch.device("cpu")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(
                f"generator is a list of {len(generator)} generators; it must hold one per batch item "
                f"({shape[0]}) or exactly one."
            )
        noise = torch.empty(shape, dtype=dtype, device=rand_device)
        for i, gen in enumerate(generator):
            noise[i : i + 1].normal_(0.0, std, generator=gen)
    else:
        noise = torch.empty(shape, dtype=dtype, device=rand_device).normal_(0.0, std, generator=generator)
    return noise if rand_device == device else noise.to(device)
