"""What every scheduler of the family shares: the vocabularies, their checks, timestep spacing, thresholding, and
the small Diffusers API of a scheduler object (:class:`SchedulerMixin`).

The vocabularies themselves live in :mod:`ddpm.schedulers.vocabulary` (no torch import, so the command line can
use them as choices); the training config, the pipeline and the command line import them from there.

Index convention (the whole family, stated once): a timestep ``t`` runs over ``0 .. T-1`` with
``T = num_train_timesteps``; the paper's (Ho et al. 2020) ``t`` runs over ``1 .. T``, so **paper t = ours + 1**.
``betas[t]`` is the paper's β_{t+1} and ``alphas_cumprod[t]`` its ᾱ_{t+1}; "t = -1" stands for the clean data.
"""

from __future__ import annotations

import importlib.util
import math
import operator
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
    "ForwardProcessMixin",
    "SchedulerMixin",
    "StepPositions",
    "check_choice",
    "check_custom_timesteps",
    "check_noise_pair",
    "check_num_inference_steps",
    "check_num_train_timesteps",
    "spaced_timesteps",
    "threshold_sample",
]


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    """``ValueError`` naming the argument, the value and the allowed values unless ``value in allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(repr(v) for v in allowed)}.")


def check_noise_pair(sample: Any, noise: Any, sample_name: str = "original_samples") -> None:
    """``TypeError`` unless both are tensors (numpy arrays are refused, as in Diffusers, whose ``add_noise`` calls
    ``Tensor.to`` on them), ``ValueError`` naming both shapes unless ``noise`` broadcasts to ``sample``'s shape.

    Shape comparisons only: no tensor operation, no device synchronisation.
    """
    for name, value in ((sample_name, sample), ("noise", noise)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor, got {type(value).__module__}.{type(value).__qualname__}; convert it "
                "first (torch.as_tensor(array))."
            )
    if noise.shape != sample.shape:
        try:
            fits = torch.broadcast_shapes(sample.shape, noise.shape) == sample.shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)} but {sample_name} has shape {tuple(sample.shape)}; they must be "
                "equal (or noise must broadcast to it)."
            )


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


def check_custom_timesteps(timesteps, T: int) -> np.ndarray:
    """Custom timesteps (a sequence, array or tensor) as int64 numpy, or ``ValueError`` unless they are a non-empty,
    strictly descending 1-D sequence of integers in [0, T - 1] (integral floats such as ``500.0`` are accepted)."""
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.detach().cpu().numpy()
    values = np.asarray(timesteps)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"timesteps={timesteps!r} must be a non-empty 1-D sequence of integers.")
    if values.dtype.kind == "f" and np.all(values == np.round(values)):
        values = values.astype(np.int64)
    if values.dtype.kind not in "iu":
        raise ValueError(f"timesteps={list(values)!r} must be integers.")
    values = values.astype(np.int64)
    if np.any(values[1:] >= values[:-1]):
        raise ValueError(f"timesteps={values.tolist()!r} must be strictly descending (custom_timesteps).")
    if values[0] >= T or values[-1] < 0:
        raise ValueError(f"timesteps={values.tolist()!r} must lie in [0, num_train_timesteps - 1] = [0, {T - 1}].")
    return values


class StepPositions:
    """The positions of a sampling schedule: each timestep, the one that follows it (-1 after the last: the clean
    data) and the float32 ᾱ at both, for the step tables of the family to build their coefficients from.

    ``a32[i]`` is ``alphas_cumprod[t_i]`` and ``a_prev32[i]`` is ``alphas_cumprod[prev_i]``, or ``final`` (a 0-d
    float32 tensor: 1 for DDPM, ``final_alpha_cumprod`` for DDIM) where prev_i = -1. :meth:`index_of` maps a timestep
    to its position with Python ints only (no host-device synchronisation for the usual timesteps).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: np.ndarray, final: torch.Tensor):
        t = torch.as_tensor(timesteps, dtype=torch.int64)
        prev = torch.cat([t[1:], t.new_tensor([-1])])
        self.t: list[int] = t.tolist()
        self.prev: list[int] = prev.tolist()
        self.index: dict[int, int] = {v: i for i, v in enumerate(self.t)}
        self.a32 = alphas_cumprod[t]
        self.a_prev32 = torch.where(prev >= 0, alphas_cumprod[prev.clamp(min=0)], final.to(torch.float32))

    def index_of(self, timestep, timesteps: torch.Tensor) -> int:
        """Position of ``timestep`` (int, integral float, 0-d/1-element tensor) in the schedule, whose tensor form is
        ``timesteps``; ``ValueError`` naming the schedule when it is not in it.

        A CPU tensor is read for free; a 0-d tensor on another device that is an element of ``timesteps`` (what
        ``for t in scheduler.timesteps`` yields) is located from its storage offset without reading it; any other
        device tensor costs one ``.item()``.
        """
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value; got a tensor of shape {tuple(timestep.shape)}.")
            if timestep.device.type != "cpu":
                ts = timesteps
                if (
                    timestep.dim() == 0
                    and timestep.device == ts.device
                    and timestep.dtype == ts.dtype
                    and timestep.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr()
                ):
                    offset = timestep.storage_offset() - ts.storage_offset()
                    if offset % ts.stride(0) == 0 and 0 <= offset // ts.stride(0) < len(self.t):
                        return offset // ts.stride(0)
            value = timestep.item()
        else:
            value = timestep
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        try:
            value = operator.index(value)
        except TypeError:
            raise ValueError(f"timestep={timestep!r} must be an integer.") from None
        index = self.index.get(value)
        if index is None:
            shown = self.t if len(self.t) <= 12 else [*self.t[:5], "...", *self.t[-5:]]
            raise ValueError(
                f"timestep={value} is not in the current schedule {shown} "
                f"(call set_timesteps first, or pass one of scheduler.timesteps)."
            )
        return index

    def previous(self, timestep, timesteps: torch.Tensor):
        """The timestep after ``timestep`` in the schedule (-1 after the last one): an int for an int, a 0-d int64
        tensor for a tensor (a view of ``timesteps``, as Diffusers' ``previous_timestep``)."""
        index = self.index_of(timestep, timesteps)
        if not isinstance(timestep, torch.Tensor):
            return self.prev[index]
        if index + 1 < len(self.t):
            return timesteps[index + 1]
        return torch.tensor(-1)


def expected_output_channels(variance_type: str | None, channels: int) -> int:
    """The channels a model must output for ``channels``-channel images: twice as many with a learned variance
    (prediction, then variance; :data:`LEARNED_VARIANCE_TYPES`), else as many. The one place this rule lives."""
    return 2 * channels if variance_type in LEARNED_VARIANCE_TYPES else channels


def split_model_output(
    model_output: torch.Tensor, sample: torch.Tensor, variance_type: str | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(prediction, variance values or None)`` of a model output for ``sample``: a learned-variance model's 2·C
    channels split in two halves, else the output itself; ``ValueError`` stating the expected shape otherwise."""
    learned = variance_type in LEARNED_VARIANCE_TYPES
    if not learned and model_output.shape == sample.shape and sample.ndim >= 2:
        return model_output, None
    if model_output.ndim < 2 or sample.ndim < 2:
        raise ValueError(
            f"model_output {tuple(model_output.shape)} and sample {tuple(sample.shape)} must be batched "
            "(batch, channels, ...) tensors."
        )
    channels = sample.shape[1]
    want = expected_output_channels(variance_type, channels)
    if model_output.shape[1] != want or (
        model_output.shape[0] != sample.shape[0] or model_output.shape[2:] != sample.shape[2:]
    ):
        expected = (sample.shape[0], want, *sample.shape[2:])
        why = (
            f"variance_type={variance_type!r} needs 2*C channels (prediction, then variance): 2*{channels} output "
            "channels"
            if learned
            else f"variance_type={variance_type!r} needs the sample's C channels"
        )
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)}; expected {expected} for a sample of shape "
            f"{tuple(sample.shape)}: {why}."
        )
    if learned:
        return model_output[:, :channels], model_output[:, channels:]
    return model_output, None


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
        """The scheduler classes this one can be swapped with (``OtherClass.from_config(self.config)``): the names in
        ``_compatibles`` that this installation has, this class included (as Diffusers' ``compatibles``)."""
        from . import _LAZY, scheduler_class

        names = dict.fromkeys([*self._compatibles, type(self).__name__])
        return [
            scheduler_class(name)
            for name in names
            if name in _LAZY and importlib.util.find_spec(_LAZY[name]) is not None
        ]

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """These schedulers need no input scaling: returns ``sample`` itself (API compatibility)."""
        return sample


class ForwardProcessMixin:
    """The forward process q(x_t | x_0) of a scheduler with float32 ``alphas_cumprod`` (ᾱ_t, t = 0..T-1):
    ``add_noise``, ``get_velocity`` and ``snr`` with per-sample timesteps.

    The coefficients are √ᾱ_t, √(1 - ᾱ_t) and ᾱ_t / (1 - ᾱ_t) of the public float32 ``alphas_cumprod`` (what Diffusers
    trains with), computed in float64 once and cast once per (device, dtype); a subclass may add tables of its own by
    extending :meth:`_host_tables`. The scheduler's state is never changed (Diffusers moves ``alphas_cumprod``).
    """

    alphas_cumprod: torch.Tensor

    def _host_tables(self) -> dict[str, np.ndarray]:
        """Float64 tables over t = 0..T-1 (built on first use)."""
        a = self.alphas_cumprod.numpy().astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {
                "ref_sqrt_alphas_cumprod": np.sqrt(a),
                "ref_sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - a),
                "ref_snr": a / (1.0 - a),
            }

    def _table(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A float64 host table cast once to ``dtype`` and moved once to ``device`` (cached per device/dtype)."""
        cache = self.__dict__.setdefault("_device_tables", {})
        key = (name, device, dtype)
        table = cache.get(key)
        if table is None:
            host = self.__dict__.get("_host_arrays")
            if host is None:
                host = self._host_arrays = self._host_tables()
            table = torch.from_numpy(host[name]).to(dtype=dtype).to(device)
            cache[key] = table
        return table

    def _timestep_tensor(self, timesteps, like: torch.Tensor) -> torch.Tensor:
        """``timesteps`` (int, sequence, 0-d or [B] tensor) as an int64 tensor on ``like``'s device, checked."""
        T = self.config.num_train_timesteps
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers; got dtype {timesteps.dtype}.")
        if timesteps.ndim > 1:
            raise ValueError(f"timesteps must be an int or a [B] tensor; got shape {tuple(timesteps.shape)}.")
        batch = 1 if timesteps.ndim == 0 else timesteps.shape[0]
        if like.ndim == 0 or batch not in (1, like.shape[0]):
            raise ValueError(
                f"timesteps has {batch} values for a sample of shape {tuple(like.shape)}; give one timestep or one "
                "per batch item."
            )
        if timesteps.device.type == "cpu" and timesteps.numel() and (timesteps.min() < 0 or timesteps.max() >= T):
            raise ValueError(f"timesteps={timesteps.tolist()} must lie in [0, num_train_timesteps - 1] = [0, {T - 1}].")
        return timesteps.to(device=like.device, dtype=torch.int64, non_blocking=True)

    def _gather(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped [B, 1, ..., 1] to broadcast against ``like``."""
        values = self._table(name, like.device, like.dtype)[t.reshape(-1)]
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε (Ho et al. eq. 4), t per batch item ([B]) or one for all.

        ``timesteps`` may be a Python int, a 0-d tensor or a [B] int tensor (on any device). The scheduler's state is
        not changed (the coefficients are cached per device and dtype). ᾱ_t is the public float32
        ``alphas_cumprod`` (as Diffusers); the square roots are taken in float64 and rounded once to the dtype.
        """
        check_noise_pair(original_samples, noise)
        t = self._timestep_tensor(timesteps, original_samples)
        sqrt_a = self._gather("ref_sqrt_alphas_cumprod", t, original_samples)
        sqrt_b = self._gather("ref_sqrt_one_minus_alphas_cumprod", t, original_samples)
        return torch.addcmul(original_samples * sqrt_a, sqrt_b, noise)

    def snr(self, timesteps) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t / (1 - ᾱ_t) of the public ``alphas_cumprod`` at integer timesteps (an int, a
        sequence, a 0-d or [B] tensor), in float64 on the timesteps' device and of their shape (from a table cached per
        device, so a training step copies nothing)."""
        t = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
        t = self._timestep_tensor(t, t.reshape(-1) if t.ndim == 0 else t)
        return self._table("ref_snr", t.device, torch.float64)[t]

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (Salimans & Ho 2022), the v_prediction target; t as in add_noise."""
        check_noise_pair(sample, noise, "sample")
        t = self._timestep_tensor(timesteps, sample)
        sqrt_a = self._gather("ref_sqrt_alphas_cumprod", t, sample)
        sqrt_b = self._gather("ref_sqrt_one_minus_alphas_cumprod", t, sample)
        return torch.addcmul(noise * sqrt_a, sqrt_b, sample, value=-1.0)
