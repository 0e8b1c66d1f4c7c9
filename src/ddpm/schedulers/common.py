"""What every scheduler of the family shares: the vocabularies, their checks, timestep spacing, thresholding, and
the small Diffusers API of a scheduler object (:class:`SchedulerMixin`).

The vocabularies themselves live in :mod:`ddpm.schedulers.vocabulary` (no torch import, so the command line can
use them as choices); the training config, the pipeline and the command line import them from there.

Index convention (the whole family, stated once): a timestep ``t`` runs over ``0 .. T-1`` with
``T = num_train_timesteps``; the paper's (Ho et al. 2020) ``t`` runs over ``1 .. T``, so **paper t = ours + 1**.
``betas[t]`` is the paper's β_{t+1} and ``alphas_cumprod[t]`` its ᾱ_{t+1}; "t = -1" stands for the clean data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigMixin
from .vocabulary import (
    DIFFUSERS_SCHEDULER_KEYS,
    LEARNED_VARIANCE_TYPES,
    PREDICTION_TYPES,
    SAMPLERS,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
)

__all__ = [
    "DIFFUSERS_SCHEDULER_KEYS",
    "LEARNED_VARIANCE_TYPES",
    "PREDICTION_TYPES",
    "SAMPLERS",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "SchedulerMixin",
    "check_choice",
    "check_num_train_timesteps",
    "spaced_timesteps",
    "threshold_sample",
]


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """``ValueError`` naming the argument, the value and the allowed values unless ``value in allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(repr(v) for v in allowed)}.")


def check_num_train_timesteps(value: Any) -> int:
    """T as an int, or ``ValueError`` when it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"num_train_timesteps={value!r} must be a positive integer.")
    return int(value)


def check_num_inference_steps(n: Any, T: int) -> int:
    """n as an int, or ``ValueError`` unless 1 <= n <= T."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= T:
        raise ValueError(
            f"num_inference_steps={n!r} must be an integer in [1, num_train_timesteps={T}] (the model was "
            f"trained on {T} timesteps)."
        )
    return int(n)


def spaced_timesteps(T: int, n: int, spacing: str, steps_offset: int = 0) -> np.ndarray:
    """The n descending timesteps that DDPM and DDIM visit, exactly as Diffusers picks them.

    ``leading``: 0, k, 2k, ... with k = T // n, plus ``steps_offset``; ``linspace``: n points from 0 to T - 1, rounded;
    ``trailing``: T - 1, T - 1 - T/n, ... rounded (always ends the chain at T - 1, arXiv:2305.08891 Table 2).
    ``ValueError`` when the offset pushes a timestep outside [0, T - 1].
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    if spacing == "linspace":
        values = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    elif spacing == "leading":
        values = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    else:  # trailing
        values = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    if values[0] >= T or values[-1] < 0:
        raise ValueError(
            f"timestep_spacing={spacing!r} with steps_offset={steps_offset} and num_inference_steps={n} gives "
            f"timesteps outside [0, {T - 1}]: {values.tolist()}."
        )
    return values


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen dynamic thresholding (Saharia et al. 2022): s = clamp(quantile(|x0|, ratio), 1, max_value) per batch
    item, x0 -> clamp(x0, -s, s) / s. Computed in float32 for half-precision input and cast back."""
    dtype, shape = sample.dtype, sample.shape
    flat = sample.reshape(shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    magnitude = flat.abs()
    if magnitude.numel() <= 2**24:  # torch.quantile's size limit
        s = torch.quantile(magnitude, ratio, dim=1)
    else:  # the same linear interpolation between order statistics, without the size limit
        ordered = magnitude.sort(dim=1).values
        pos = ratio * (ordered.shape[1] - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, ordered.shape[1] - 1)
        s = torch.lerp(ordered[:, lo], ordered[:, hi], pos - lo)
    s = torch.clamp(s, min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)


class SchedulerMixin(ConfigMixin):
    """The small API every scheduler of the family has, as in Diffusers: ``scheduler_config.json``,
    ``save_pretrained``, ``len()``, ``compatibles`` and ``scale_model_input``."""

    config_name = "scheduler_config.json"
    _ignored_config_keys = DIFFUSERS_SCHEDULER_KEYS
    order = 1
    #: Names of the schedulers this one can be swapped with through ``from_config`` (Diffusers' list for DDPM
    #: models, restricted to the ones this library has).
    _compatibles: tuple[str, ...] = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> Path:
        """Write ``save_directory/scheduler_config.json`` (the Diffusers format); returns the file's path."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; upload the folder with huggingface_hub.")
        return self.save_config(save_directory)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def compatibles(self) -> list[type]:
        """The scheduler classes this one can be swapped with (``OtherClass.from_config(self.config)``)."""
        from . import scheduler_class

        return [scheduler_class(name) for name in self._compatibles]

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """These schedulers need no input scaling: returns ``sample`` itself (API compatibility)."""
        return sample
