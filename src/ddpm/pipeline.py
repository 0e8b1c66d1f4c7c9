"""Unconditional image generation: noise -> denoising loop -> images (Algorithm 2 of Ho et al. 2020).

:class:`DDPMPipeline` has the API and the folder format of Diffusers' ``DDPMPipeline``: the same weights and seed give
the same images. The math lives in the scheduler (``scheduler.step``) and the network in the UNet; the pipeline only
draws the starting noise, runs the loop and converts the result.

The random stream is that of Diffusers: with one generator ``g`` the starting noise ``x_T`` is one
``randn(B, C, H, W)`` draw, then every step with ``t > 0`` draws one more inside ``scheduler.step``. With a list of
``B`` generators, image ``i`` takes every one of its draws from ``generator[i]``, so it does not depend on the batch
it is generated in (see :func:`image_generators`).

Beyond Diffusers: a per-step ``callback`` (watching the denoising, the paper's progressive-generation figure),
``noise=`` to start from given noise, ``progress=False``, input validation up front, and an optional ``ddpm.json``
beside ``model_index.json`` recording the model's recommended number of steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import images as ddpm_images
from . import io as ddpm_io
from .config import DIFFUSERS_FORMAT_VERSION, FrozenDict
from .io import BUNDLED_MODEL_NAME, NoBundledModelError, bundled_model_path  # noqa: F401 (re-exported)
from .noise import GeneratorArg, generator_device_type, randn_tensor
from .outputs import BaseOutput
from .schedulers.vocabulary import LEARNED_VARIANCE_TYPES

if TYPE_CHECKING:  # pragma: no cover
    from .models.fast_paths import FastPaths

logger = logging.getLogger(__name__)

MODEL_INDEX_NAME = "model_index.json"
#: Optional file beside ``model_index.json`` with facts Diffusers has no key for (ignored by Diffusers).
METADATA_NAME = "ddpm.json"
OUTPUT_TYPES = ("pil", "np", "pt")


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImagePipelineOutput(BaseOutput):
    """The pipeline's result: ``images`` is a list of PIL images, an NHWC NumPy array in ``[0, 1]`` or an NCHW
    tensor in ``[0, 1]``. Readable as ``out.images``, ``out["images"]`` or ``out[0]``; ``out.to_tuple()``."""

    images: Any


# ---------------------------------------------------------------------------------------------------------------
# Random numbers (the noise itself is drawn by ddpm.noise.randn_tensor, re-exported here as Diffusers has it)
# ---------------------------------------------------------------------------------------------------------------
def image_seed(seed: int, index: int) -> int:
    """The 64-bit seed of image ``index`` of a run seeded with ``seed``: ``SeedSequence([seed, index])``'s first
    64-bit word. Independent of batching, so image ``i`` is the same whatever the batch size."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and image index must be >= 0, got seed={seed}, index={index}")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def image_generators(seed: int, indices: Sequence[int] | range, device: str | torch.device = "cpu"):
    """One generator per image, seeded with :func:`image_seed`; pass the list as ``generator=`` for a batch holding
    images ``indices``. CPU generators (the default) give the same images on every device."""
    return [torch.Generator(device=device).manual_seed(image_seed(seed, i)) for i in indices]


# ---------------------------------------------------------------------------------------------------------------
# The reverse loop (the only one in the library: the pipelines, evaluation and the figures all run it)
# ---------------------------------------------------------------------------------------------------------------
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor | None], None]


def reverse_loop(
    denoiser,
    scheduler,
    sample: torch.Tensor,
    *,
    generator: GeneratorArg = None,
    step_kwargs: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    callback_steps: int = 1,
    progress_bar: Callable | None = None,
) -> torch.Tensor:
    """Run ``scheduler.timesteps`` (set beforehand) from ``sample`` down: per step one call of
    ``denoiser(sample, t).sample`` and one ``scheduler.step(output, t, sample, generator=generator, **step_kwargs)``.

    Works with every scheduler of the family (DDPM, DDIM, DPM-Solver++, Analytic-DPM) as Diffusers' pipelines run
    them: the step's noise comes from ``generator`` in the scheduler's order, so the same seed gives the same images
    as Diffusers. The denoiser gets each timestep already on its device (one copy of the whole schedule, no
    host-to-device copy per step); the scheduler gets it where its timesteps live. ``callback(i, t, x_prev,
    predicted_x0)`` after steps ``0, callback_steps, ...`` and after the last (``predicted_x0`` from the step's
    output, or the multistep solver's last data prediction). ``progress_bar``: wraps the step range (e.g. tqdm).
    Call it under ``torch.inference_mode()`` for sampling. Returns the final sample (model space).
    """
    timesteps = scheduler.timesteps
    step_kwargs = step_kwargs or {}
    device = sample.device
    denoiser_timesteps = timesteps.to(device)
    last = len(timesteps) - 1
    steps = progress_bar(range(len(timesteps))) if progress_bar is not None else range(len(timesteps))
    for i in steps:
        t = timesteps[i]
        model_output = denoiser(sample, denoiser_timesteps[i]).sample
        out = scheduler.step(model_output, t, sample, generator=generator, **step_kwargs)
        sample = out.prev_sample
        if callback is not None and (i % callback_steps == 0 or i == last):
            callback(i, int(t), sample, _predicted_x0(scheduler, out, sample, i == last))
    return sample


def _predicted_x0(scheduler, out, sample: torch.Tensor, last: bool) -> torch.Tensor | None:
    """The step's prediction of x_0: ``pred_original_sample`` where the output has it; for DPM-Solver++ (whose
    output has none) its last data prediction, the final sample after the last step."""
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is not None:
        return x0
    if last:
        return sample
    outputs = getattr(scheduler, "model_outputs", None)
    if outputs and outputs[-1] is not None and str(scheduler.config.get("algorithm_type", "")).endswith("++"):
        return outputs[-1]
    return None


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------
def _parse_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.removeprefix("torch."), None)
        if isinstance(value, torch.dtype):
            return value
    raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype or a name such as 'float32', 'bfloat16', 'float16'")


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


class DDPMPipeline:
    """Generate images with a trained UNet and a DDPM scheduler (Diffusers' ``DDPMPipeline`` API and folders).

    >>> pipe = DDPMPipeline.from_pretrained("path/to/pipeline")          # or a Hub id, or "ddpm/default"
    >>> images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), num_inference_steps=100).images

    ``unet`` is a ``UNet2DModel`` (``forward(sample, t).sample``, ``config.sample_size/in_channels/out_channels``,
    ``dtype``, ``device``); ``scheduler`` anything with ``set_timesteps``, ``timesteps`` and
    ``step(model_output, t, sample, generator=)`` (a ``DDPMScheduler``).
    """

    config_name = MODEL_INDEX_NAME

    def __init__(self, unet, scheduler):
        from .models.fast_paths import FastPaths

        _check_unet_and_scheduler(unet, scheduler)
        self.unet = unet
        self.scheduler = scheduler
        self._fast_paths = FastPaths()
        self._compiled: _CompiledUNet | None = None
        self._progress_bar_config: dict[str, Any] = {}
        #: The number of denoising steps the model is meant to be sampled with (``ddpm.json``), if known.
        self.recommended_num_inference_steps: int | None = None
        #: The sampler that number is for (``ddpm.json``; None: the pipeline's own scheduler).
        self.recommended_sampler: str | None = None
        #: Steps recommended for other samplers than :attr:`recommended_sampler` (``ddpm.json``), by sampler name.
        self.recommended_steps_by_sampler: dict[str, int] = {}
        self.name_or_path: str | None = None
        #: The scheduler config the pipeline was built with: :meth:`set_sampler` builds every sampler from it.
        self._base_scheduler_config = dict(getattr(scheduler, "config", {}) or {})

    # -- samplers -----------------------------------------------------------------------------------------------
    def set_sampler(self, sampler: str, moments=None, eta: float | None = None, **scheduler_overrides) -> DDPMPipeline:
        """Swap in the scheduler of ``sampler`` (``ddpm``, ``ddim``, ``dpm-solver++``, ``analytic-ddpm``,
        ``analytic-ddim``; :mod:`ddpm.schedulers.samplers`), built from the scheduler config the pipeline was made
        with: ``pipe.set_sampler("ddim")`` is ``pipe.scheduler = DDIMScheduler.from_config(base_config)``.

        ``eta`` (DDIM-family samplers only): the step noise scale every later call uses unless it passes its own
        (for ``analytic-ddim`` it is part of the scheduler's config). The Analytic-DPM samplers read the moment table
        ``analytic_dpm.json`` of the pipeline's folder (or take ``moments=``) and check that it was computed for these
        weights and this schedule. Returns ``self``.
        """
        from .schedulers.samplers import ANALYTIC_SAMPLERS, check_eta, check_sampler, make_scheduler

        check_sampler(sampler)
        eta = check_eta(sampler, eta)
        if sampler == "analytic-ddim" and eta is not None:
            scheduler_overrides["eta"] = eta
        if sampler in ANALYTIC_SAMPLERS and moments is None:
            moments = self.analytic_moments()
        self.scheduler = make_scheduler(sampler, self._base_scheduler_config, moments=moments, **scheduler_overrides)
        self._sampler_eta = (self.scheduler, eta) if sampler == "ddim" and eta is not None else None
        return self

    def analytic_moments(self):
        """The Analytic-DPM moment table of this pipeline's folder (``analytic_dpm.json``), checked against the
        UNet's weights and the schedule; ``FileNotFoundError`` naming the command that makes it."""
        from .schedulers.analytic import AnalyticMoments
        from .schedulers.ddpm import DDPMScheduler

        if self.name_or_path is None:
            raise ValueError(
                "this pipeline was not loaded from a folder, so it has no Analytic-DPM moment table; pass moments= "
                "(ddpm.schedulers.analytic.estimate_moments) or load the pipeline from a folder that has one"
            )
        moments = AnalyticMoments.from_pretrained(self.name_or_path)
        base = DDPMScheduler.from_config(self._base_scheduler_config)
        moments.check(scheduler=base, unet=_unwrap_compiled(self.unet), where=f"{self.name_or_path}/analytic_dpm.json")
        return moments

    def default_sampler(self) -> str:
        """The sampler ``ddpm.json`` recommends, else the one the pipeline's scheduler runs (``ddpm`` for a
        scheduler the library does not know by name)."""
        from .schedulers.samplers import sampler_name

        if self.recommended_num_inference_steps is not None and self.recommended_sampler is None:
            return "ddpm"  # an older ddpm.json: a step count for the DDPM sampler
        return self.recommended_sampler or sampler_name(self.scheduler) or "ddpm"

    def default_steps(self, sampler: str | None = None) -> int:
        """The steps to run ``sampler`` (default: :meth:`default_sampler`) with when the caller names none: the
        model's recommendation for that sampler (``ddpm.json``), else the sampler's default
        (:data:`ddpm.schedulers.samplers.DEFAULT_STEPS`), at most ``num_train_timesteps``."""
        from .schedulers.samplers import DEFAULT_STEPS, check_sampler

        sampler = check_sampler(sampler or self.default_sampler())
        steps = self.recommended_steps_by_sampler.get(sampler)
        if steps is None and sampler == self.default_sampler():
            steps = self.recommended_num_inference_steps
        if steps is None:
            steps = DEFAULT_STEPS[sampler]
        return min(int(steps), int(self.scheduler.config.num_train_timesteps))

    # -- components, device, dtype ------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Any]:
        """``{"unet": ..., "scheduler": ...}``: pass as ``DDPMPipeline(**pipe.components)`` to build another."""
        return {"unet": self.unet, "scheduler": self.scheduler}

    @property
    def config(self) -> FrozenDict:
        """The content of ``model_index.json`` for the current components."""
        return FrozenDict(
            [
                ("_class_name", type(self).__name__),
                ("_diffusers_version", DIFFUSERS_FORMAT_VERSION),
                ("scheduler", ["diffusers", type(self.scheduler).__name__]),
                ("unet", ["diffusers", type(_unwrap_compiled(self.unet)).__name__]),
            ]
        )

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def to(self, *args, **kwargs) -> DDPMPipeline:
        """Move the UNet: ``.to(device)``, ``.to(dtype)``, ``.to(device, dtype)`` or keywords; returns ``self``.

        ``memory_format=torch.channels_last`` stores the UNet's weights channels-last (convolutions then run
        channels-last), measured faster on CPU (``docs/benchmarks.md``); numerically the same up to float rounding.
        """
        device = kwargs.pop("device", None)
        dtype = kwargs.pop("dtype", None)
        memory_format = kwargs.pop("memory_format", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise TypeError(f"DDPMPipeline.to() got unexpected keyword argument(s) {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, torch.dtype) or (
                isinstance(arg, str) and arg.removeprefix("torch.").startswith(("float", "bfloat", "half", "double"))
            ):
                dtype = arg
            elif isinstance(arg, (str, torch.device, int)):
                device = arg
            else:
                raise TypeError(f"DDPMPipeline.to() cannot interpret argument {arg!r} as a device or a dtype")
        self.unet.to(device=_check_device(device), dtype=_parse_dtype(dtype))
        if memory_format is not None:
            self.unet.to(memory_format=memory_format)
        return self

    # -- progress bar -------------------------------------------------------------------------------------------
    def set_progress_bar_config(self, **kwargs) -> None:
        """Keyword arguments for the tqdm progress bar of the next calls (e.g. ``disable=True``, ``leave=False``)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable=None, total=None):
        from tqdm.auto import tqdm

        config = dict(self._progress_bar_config)
        if "disable" not in config:
            # Like Diffusers: only rank zero of a distributed run shows a bar.
            dist = torch.distributed
            config["disable"] = dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("Either `total` or `iterable` has to be defined.")

    # -- fast paths ---------------------------------------------------------------------------------------------
    @property
    def fast_paths(self) -> FastPaths:
        """The speed setting sampling runs the UNet with (a :class:`ddpm.models.FastPaths`, all on by default).

        Each call hands it to the UNet (``unet.set_fast_paths``) when that is a ddpm ``UNet2DModel``. With
        ``channels_last`` on, the first CPU call also stores the UNet's weights channels-last (same values;
        ``docs/benchmarks.md`` has the measured gain); with it off, the UNet runs on the layouts it has (NCHW unless
        the caller chose otherwise). Assigning it is :meth:`set_fast_paths`.
        """
        return self._fast_paths

    @fast_paths.setter
    def fast_paths(self, value: FastPaths) -> None:
        from .models.fast_paths import FastPaths

        if not isinstance(value, FastPaths):
            raise ValueError(f"fast_paths must be a ddpm.models.FastPaths, got {type(value).__name__}")
        self._fast_paths = value

    @property
    def cpu_channels_last(self) -> bool:
        """Removed switch (it is ``fast_paths.channels_last`` now); reading it still works, setting it raises."""
        return self.fast_paths.channels_last

    @cpu_channels_last.setter
    def cpu_channels_last(self, value) -> None:
        raise AttributeError(
            "cpu_channels_last was replaced by one setting object: use "
            f"set_fast_paths(channels_last={bool(value)}) (see ddpm.models.FastPaths)"
        )

    def set_fast_paths(self, fast_paths: FastPaths | None = None, **changes: bool) -> DDPMPipeline:
        """Sample with ``fast_paths`` (or the current setting) with the switch ``changes`` applied, e.g.
        ``pipe.set_fast_paths(channels_last=False)`` for the plain NCHW path; returns ``self``."""
        from .models.fast_paths import resolve_fast_paths

        self._fast_paths = resolve_fast_paths(self._fast_paths, fast_paths, **changes)
        return self

    def compile(self, enabled: bool = True, *, freeze: bool | None = None, mode: str | None = None) -> DDPMPipeline:
        """Run the UNet through ``torch.compile`` in the denoising loop (``enabled=False`` goes back to eager).

        The first call of each batch shape compiles (its cost: ``docs/benchmarks.md``); later calls reuse the code.
        ``freeze`` (default: True on CPU) lets inductor treat the weights as constants (folds them, pre-packs
        oneDNN convolution weights): when the weights change afterwards (training, ``load_state_dict``) the next call
        notices (parameter version counters) and compiles again. ``mode`` is ``torch.compile``'s (e.g.
        ``"max-autotune"``, or ``"reduce-overhead"`` for CUDA graphs of the UNet on a GPU). Same images as eager up
        to float rounding (tested at <= 1e-4 on [0, 1]). ``pipe.unet`` stays the plain module (saving, config).
        """
        self._compiled = _CompiledUNet(freeze=freeze, mode=mode) if enabled else None
        return self

    @property
    def is_compiled(self) -> bool:
        return self._compiled is not None

    def _denoiser(self, device: torch.device):
        """The callable the loop runs: the UNet set up with :attr:`fast_paths`, compiled when :meth:`compile` asked."""
        from .models.fast_paths import is_channels_last
        from .models.unet import UNet2DModel

        unet = self.unet
        if isinstance(unet, UNet2DModel):
            if unet.fast_paths != self._fast_paths:
                unet.set_fast_paths(self._fast_paths)
            if device.type == "cpu" and self._fast_paths.channels_last and not is_channels_last(unet.conv_in.weight):
                unet.to(memory_format=torch.channels_last)
        if self._compiled is not None:
            return self._compiled.get(unet, device)
        return unet

    @staticmethod
    def numpy_to_pil(images: np.ndarray):
        """NHWC images in ``[0, 1]`` -> list of PIL images (``x * 255`` rounded; one channel gives mode "L")."""
        return ddpm_images.numpy_to_pil(images)

    # -- checks -------------------------------------------------------------------------------------------------
    def _image_shape(self, batch_size: int) -> tuple[int, ...]:
        config = self.unet.config
        size = config.sample_size
        if size is None:
            raise ValueError("unet.config.sample_size is not set, so the image size is unknown")
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(hw) != 2:
            raise ValueError(f"unet.config.sample_size must be an int or (height, width), got {size!r}")
        return (batch_size, config.in_channels, *hw)

    def check_components(self) -> None:
        """Raise ``ValueError`` when the UNet's output channels do not fit the scheduler's variance type."""
        from .schedulers.common import expected_output_channels

        in_ch, out_ch = self.unet.config.in_channels, self.unet.config.out_channels
        variance_type = getattr(self.scheduler.config, "variance_type", None)
        if variance_type in LEARNED_VARIANCE_TYPES:
            if out_ch != expected_output_channels(variance_type, in_ch):
                raise ValueError(
                    f"the scheduler's variance_type {variance_type!r} needs a UNet predicting noise and variance "
                    f"(out_channels = 2 * in_channels = {2 * in_ch}), but unet.config.out_channels is {out_ch}"
                )
        elif out_ch != in_ch:
            raise ValueError(
                f"the scheduler's variance_type {variance_type!r} needs a UNet with out_channels = in_channels = "
                f"{in_ch}, but unet.config.out_channels is {out_ch}"
                + (" (a learned-variance UNet needs variance_type 'learned_range')" if out_ch == 2 * in_ch else "")
            )

    def _check_call(self, batch_size, generator, num_inference_steps, output_type, callback, callback_steps):
        if _is_bool(batch_size) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(generator, (list, tuple)):
            if not generator or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("generator must be a torch.Generator or a non-empty list of torch.Generator")
            if len(generator) not in (1, batch_size):
                raise ValueError(
                    f"You have passed a list of generators of length {len(generator)}, but requested a batch size of "
                    f"{batch_size}. Make sure the batch size matches the length of the generators."
                )
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        gen_type = generator_device_type(generator)
        if gen_type == "cuda" and self.device.type != "cuda":
            raise ValueError(f"Cannot generate a {self.device} tensor from a generator of type {gen_type}.")
        num_train = self.scheduler.config.num_train_timesteps
        if (
            _is_bool(num_inference_steps)
            or not isinstance(num_inference_steps, (int, np.integer))
            or not 1 <= num_inference_steps <= num_train
        ):
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {num_train}] (the scheduler's num_train_timesteps), "
                f"got {num_inference_steps!r}"
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        if callback is not None and not callable(callback):
            raise ValueError(f"callback must be callable, got {type(callback).__name__}")
        if _is_bool(callback_steps) or not isinstance(callback_steps, (int, np.integer)) or callback_steps < 1:
            raise ValueError(f"callback_steps must be an integer >= 1, got {callback_steps!r}")
        self.check_components()

    # -- sampling -----------------------------------------------------------------------------------------------
    def __call__(
        self,
        batch_size: int | None = None,
        generator: GeneratorArg = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        noise: torch.Tensor | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        callback_steps: int = 1,
        progress: bool = True,
        eta: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images (Algorithm 2 of the paper, on the scheduler's timesteps).

        The scheduler may be any of the family (``DDPMPipeline(unet, DDIMScheduler.from_config(...))``, or
        :meth:`set_sampler`): the loop is the same, as in Diffusers.

        Args:
            batch_size: number of images; default 1, or the batch of ``noise`` when it is given.
            generator: a ``torch.Generator`` or one per image (a list of ``batch_size``); used for the starting noise
                and for every step's noise. CPU generators give the same images on every device.
            num_inference_steps: denoising steps, in ``[1, scheduler.config.num_train_timesteps]``; the scheduler's
                ``timestep_spacing`` decides which timesteps are visited.
            output_type: ``"pil"`` (list of PIL images), ``"np"`` (NHWC float array in [0, 1]) or ``"pt"``
                (NCHW tensor in [0, 1] on the pipeline's device).
            return_dict: return :class:`ImagePipelineOutput` (else the tuple ``(images,)``).
            noise: start from this ``x_T`` instead of drawing it: shape ``(batch_size, C, H, W)``, floating point
                (cast to the UNet's dtype and moved to its device; the tensor itself is not modified).
            callback: called as ``callback(step_index, t, sample, pred_original_sample)`` after steps
                ``0, callback_steps, 2 * callback_steps, ...`` and after the last step; ``sample`` is ``x_{t-1}``
                and ``pred_original_sample`` the step's prediction of ``x_0``, both in model space ([-1, 1]).
                They are inference tensors of the loop: clone them to keep them, do not modify them.
            callback_steps: call ``callback`` every this many steps.
            progress: show the tqdm bar (see :meth:`set_progress_bar_config`).
            eta: for a DDIM-family scheduler (DDIM, Analytic-DDIM), the step's ``eta`` (None: its default, 0);
                refused for schedulers that have none.
        """
        step_kwargs = self._eta_kwargs(eta)
        return self._generate(
            batch_size,
            generator,
            num_inference_steps,
            output_type,
            return_dict,
            noise,
            callback,
            callback_steps,
            progress,
            step_kwargs,
        )

    def _eta_kwargs(self, eta) -> dict[str, Any]:
        """``{"eta": eta}`` for a DDIM scheduler's step; without a call's eta, the one :meth:`set_sampler` chose for
        the scheduler the pipeline still has."""
        if eta is None:
            chosen = getattr(self, "_sampler_eta", None)
            if chosen is not None and chosen[0] is self.scheduler:
                return {"eta": chosen[1]}
            return {}
        from .schedulers.samplers import check_eta, sampler_name

        name = sampler_name(self.scheduler)
        if name != "ddim":
            where = (
                "; for analytic-ddim it is part of the scheduler: pipe.set_sampler('analytic-ddim', eta=...)"
                if name == "analytic-ddim"
                else ""
            )
            raise ValueError(
                f"eta={eta!r} applies to a DDIM scheduler's step only; this pipeline's scheduler is a "
                f"{type(self.scheduler).__name__}{where}"
            )
        return {"eta": check_eta(name, eta)}

    def _generate(
        self,
        batch_size,
        generator,
        num_inference_steps,
        output_type,
        return_dict,
        noise,
        callback,
        callback_steps,
        progress,
        step_kwargs,
    ):
        if noise is not None and not isinstance(noise, torch.Tensor):
            raise ValueError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        if batch_size is None:
            batch_size = noise.shape[0] if noise is not None and noise.ndim > 0 else 1
        self._check_call(batch_size, generator, num_inference_steps, output_type, callback, callback_steps)
        shape = self._image_shape(int(batch_size))
        device, dtype = self.device, self.dtype
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(
                    f"noise must have shape {shape} (batch, channels, height, width), got {tuple(noise.shape)}"
                )
            if not noise.dtype.is_floating_point:
                raise ValueError(f"noise must be a floating-point tensor, got dtype {noise.dtype}")

        with torch.inference_mode():
            if noise is not None:
                sample = noise.to(device=device, dtype=dtype)
            elif device.type == "mps":  # randn is not reproducible on mps: draw on the CPU (as Diffusers)
                sample = randn_tensor(shape, generator=generator, dtype=dtype).to(device)
            else:
                sample = randn_tensor(shape, generator=generator, device=device, dtype=dtype)

            self.scheduler.set_timesteps(int(num_inference_steps))
            sample = reverse_loop(
                self._denoiser(device),
                self.scheduler,
                sample,
                generator=generator,
                step_kwargs=step_kwargs,
                callback=callback,
                callback_steps=callback_steps,
                progress_bar=self.progress_bar if progress else None,
            )
            images = ddpm_images.model_to_unit(sample)
            if output_type != "pt":
                images = ddpm_images.pt_to_numpy(images)
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        if output_type == "pt":
            images = images.clone()  # a normal tensor, usable with autograd, not an inference tensor
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    # -- folders ------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> Path:
        """Write a pipeline folder that Diffusers' ``DDPMPipeline.from_pretrained`` loads: ``model_index.json``,
        ``unet/`` and ``scheduler/`` (plus ``ddpm.json`` when :attr:`recommended_num_inference_steps` is set).

        ``safe_serialization``, ``variant`` and ``max_shard_size`` (None: the model's default, ``"10GB"``) are passed
        to ``unet.save_pretrained``, as in Diffusers. ``push_to_hub=True`` raises ``NotImplementedError``.
        """
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; upload the folder with huggingface_hub.")
        if kwargs:
            warnings.warn(f"save_pretrained: ignoring keyword arguments {sorted(kwargs)}", stacklevel=2)
        folder = ddpm_io.save_directory_path(save_directory)
        unet = _unwrap_compiled(self.unet)
        unet_kwargs: dict[str, Any] = {"safe_serialization": safe_serialization, "variant": variant}
        if max_shard_size is not None:
            unet_kwargs["max_shard_size"] = max_shard_size
        unet.save_pretrained(folder / "unet", **unet_kwargs)
        save_scheduler = getattr(self.scheduler, "save_pretrained", None) or self.scheduler.save_config
        save_scheduler(folder / "scheduler")
        metadata = folder / METADATA_NAME
        if self.recommended_num_inference_steps is not None:
            data: dict[str, Any] = {"num_inference_steps": int(self.recommended_num_inference_steps)}
            if self.recommended_sampler is not None:
                data["sampler"] = self.recommended_sampler
            if self.recommended_steps_by_sampler:
                data["num_inference_steps_by_sampler"] = dict(sorted(self.recommended_steps_by_sampler.items()))
            ddpm_io.atomic_write_text(metadata, json.dumps(data, indent=2, sort_keys=True) + "\n")
        elif metadata.is_file():
            metadata.unlink()
        # model_index.json last: a folder with it is complete.
        index = json.dumps(dict(self.config), indent=2, sort_keys=True) + "\n"
        ddpm_io.atomic_write_text(folder / MODEL_INDEX_NAME, index)
        return folder

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike | None = None,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        unet=None,
        scheduler=None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        *,
        force_download: bool = False,
        proxies: dict | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool | None = None,
        device_map: str | None = None,
        max_memory: dict | None = None,
        offload_folder: str | os.PathLike | None = None,
        offload_state_dict: bool | None = None,
        disable_mmap: bool = False,
        quantization_config: Any = None,
        use_flashpack: bool = False,
        **kwargs,
    ) -> DDPMPipeline:
        """Load a pipeline folder in Diffusers' layout (``model_index.json``, ``unet/``, ``scheduler/``).

        ``pretrained_model_name_or_path`` is a local folder, a Hugging Face Hub id (through :mod:`ddpm.io`: an
        :class:`ddpm.io.OfflineError` when offline and not cached), or ``"ddpm/default"`` / nothing for the model
        bundled with the package. ``dtype`` (or its older name ``torch_dtype``) casts the UNet; ``unet=`` or
        ``scheduler=`` replace a component instead of loading it.

        Diffusers' loading options have its effect: ``variant`` loads the UNet's variant files (``ValueError`` when
        the folder has none), ``use_safetensors``, ``disable_mmap``, ``low_cpu_mem_usage`` and the Hub options go to
        ``UNet2DModel.from_pretrained``; ``device_map`` takes Diffusers' pipeline values, ``"cpu"``, the accelerator's
        name (e.g. ``"cuda"``) or ``"balanced"`` (the accelerator when there is one; ddpm places the pipeline on one
        device). Unknown keyword arguments are ignored with a warning, as in Diffusers.
        """
        if quantization_config is not None or use_flashpack:
            raise NotImplementedError("quantization_config and use_flashpack are not supported by ddpm.")
        if "dduf_file" in kwargs:
            raise ValueError("dduf_file: DDUF files are not supported; load the pipeline folder instead.")
        if kwargs:
            warnings.warn(
                f"Keyword arguments {kwargs} are not expected by {cls.__name__} and will be ignored.", stacklevel=2
            )
        del max_memory, offload_folder, offload_state_dict  # no effect: the pipeline is on one device
        if dtype is not None and torch_dtype is not None and _parse_dtype(dtype) != _parse_dtype(torch_dtype):
            raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; pass only `dtype`")
        dtype = _parse_dtype(dtype if dtype is not None else torch_dtype)
        device = _pipeline_device(device_map, low_cpu_mem_usage)
        name = pretrained_model_name_or_path
        if name is None or str(name) == BUNDLED_MODEL_NAME:
            name = bundled_model_path()
        hub = {
            "revision": revision,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
            "token": token,
            "force_download": force_download,
            "proxies": proxies,
        }
        hub = {k: v for k, v in hub.items() if v is not None and v is not False}
        index_file = ddpm_io.resolve_file(name, MODEL_INDEX_NAME, **hub)
        try:
            index = json.loads(Path(index_file).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OSError(f"{index_file} is not a valid JSON file: {err}") from None
        if not isinstance(index, dict):
            raise OSError(f"{index_file} does not hold a JSON object")
        class_name = index.get("_class_name")
        if class_name not in (None, cls.__name__):
            logger.warning("%s describes a %s; loading it as a %s.", index_file, class_name, cls.__name__)

        if unet is None:
            _check_component(index, "unet", ("UNet2DModel",), index_file)
            from .models import UNet2DModel

            if variant is not None and not _has_variant_files(name, "unet", variant):
                raise ValueError(
                    f"You are trying to load the model files of the `variant={variant}`, but no such modeling files "
                    f"are available (no unet/*.{variant}.* file in {name})."
                )
            unet_kwargs = dict(hub)
            unet_kwargs.update(variant=variant, use_safetensors=use_safetensors, disable_mmap=disable_mmap)
            if low_cpu_mem_usage is not None:
                unet_kwargs["low_cpu_mem_usage"] = low_cpu_mem_usage
            if dtype is not None:
                unet_kwargs["torch_dtype"] = dtype
            unet = UNet2DModel.from_pretrained(name, subfolder="unet", device=device, **unet_kwargs)
        else:
            if dtype is not None:
                unet = unet.to(dtype=dtype)
            if device is not None:
                unet = unet.to(device)
        if scheduler is None:
            _check_component(index, "scheduler", None, index_file)
            from .schedulers import scheduler_class

            class_name = index["scheduler"][1] if isinstance(index.get("scheduler"), list) else None
            loadable = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
            if class_name not in (None, *loadable):
                logger.warning(
                    "%s names the scheduler %s; loading its config into a DDPMScheduler (pass scheduler= to choose).",
                    index_file,
                    class_name,
                )
            chosen = scheduler_class(class_name if class_name in loadable else "DDPMScheduler")
            scheduler = chosen.from_pretrained(name, subfolder="scheduler", **hub)

        pipe = cls(unet=unet, scheduler=scheduler)
        pipe.name_or_path = str(name)
        recommendation = _read_recommendation(name, hub)
        pipe.recommended_num_inference_steps = recommendation.get("num_inference_steps")
        pipe.recommended_sampler = recommendation.get("sampler")
        pipe.recommended_steps_by_sampler = recommendation.get("num_inference_steps_by_sampler", {})
        return pipe


class DDIMPipeline(DDPMPipeline):
    """Generate images with DDIM (Song et al. 2021): Diffusers' ``DDIMPipeline`` API and folders.

    Whatever scheduler it is given is converted to a :class:`~ddpm.DDIMScheduler` with that scheduler's config, as
    Diffusers does (so a DDPM model folder loads as is). The loop, the checks and the extras (``noise=``,
    ``callback``, ``progress``) are those of :class:`DDPMPipeline`.
    """

    def __init__(self, unet, scheduler):
        from .schedulers.ddim import DDIMScheduler

        _check_unet_and_scheduler(unet, scheduler)
        if type(scheduler).__name__ != "DDIMScheduler":
            scheduler = DDIMScheduler.from_config(scheduler.config)
        super().__init__(unet, scheduler)

    def __call__(
        self,
        batch_size: int | None = None,
        generator: GeneratorArg = None,
        eta: float = 0.0,
        num_inference_steps: int = 50,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        noise: torch.Tensor | None = None,
        callback: StepCallback | None = None,
        callback_steps: int = 1,
        progress: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``batch_size`` images with ``num_inference_steps`` DDIM steps.

        ``eta`` (>= 0) scales the step noise: 0 is the deterministic DDIM sampler, 1 the DDPM-like variance.
        ``use_clipped_model_output``: re-derive ε from the clipped x_0 (as Diffusers). Other arguments as in
        :meth:`DDPMPipeline.__call__`.
        """
        from .schedulers.samplers import check_eta

        step_kwargs = {"eta": check_eta("ddim", eta), "use_clipped_model_output": use_clipped_model_output}
        return self._generate(
            batch_size,
            generator,
            num_inference_steps,
            output_type,
            return_dict,
            noise,
            callback,
            callback_steps,
            progress,
            step_kwargs,
        )


def _check_unet_and_scheduler(unet, scheduler) -> None:
    """``TypeError`` naming the argument and what it got unless ``unet`` is a UNet2DModel-like module (a
    ``torch.nn.Module`` with a ``config``: ours, Diffusers' or a compiled one) and ``scheduler`` has a ``config`` and
    callable ``set_timesteps`` and ``step`` (ours or Diffusers')."""
    if not isinstance(unet, torch.nn.Module) or getattr(unet, "config", None) is None:
        raise TypeError(
            f"unet must be a UNet2DModel (a torch.nn.Module with a config: ddpm's, Diffusers' or a torch.compile'd "
            f"one), got {type(unet).__name__}"
        )
    missing = [name for name in ("set_timesteps", "step") if not callable(getattr(scheduler, name, None))] + (
        [] if getattr(scheduler, "config", None) is not None else ["config"]
    )
    if missing:
        raise TypeError(
            f"scheduler must be a scheduler (ddpm's DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, "
            f"AnalyticDPMScheduler, or a Diffusers scheduler: an object with config, set_timesteps and step), got "
            f"{type(scheduler).__name__} (no {', '.join(missing)})"
        )


def _check_device(device):
    """``device`` (None, a string, an int or a torch.device) as given, or ``ValueError`` naming it when torch cannot
    parse it or it is a CUDA device on a machine without CUDA."""
    if device is None or isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(
                f"device={device!r} is not a device torch knows ({err}); allowed: 'cpu', 'cuda', 'cuda:N', 'mps', "
                "another torch device type, a device index, or a torch.device"
            ) from None
    if parsed is not None and parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r}: CUDA is not available on this machine (torch.cuda.is_available() is "
            "False); allowed here: 'cpu'"
        )
    return device


def _unwrap_compiled(module):
    """The module inside a ``torch.compile`` wrapper (``pipe.unet = torch.compile(pipe.unet)``), else itself."""
    return getattr(module, "_orig_mod", module)


def _weights_version(module) -> tuple:
    """Changes whenever a parameter or buffer is replaced or modified in place (its storage or version counter)."""
    return tuple((t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers()))


class _CompiledUNet:
    """``torch.compile`` of a UNet for the denoising loop, rebuilt when the UNet, its device or its weights change."""

    def __init__(self, freeze: bool | None, mode: str | None):
        self.freeze = freeze
        self.mode = mode
        self._key = None
        self._fn = None

    def get(self, unet, device: torch.device):
        # The fast-path setting is part of the traced code (layouts, kernel routes): a new one compiles again.
        key = (id(unet), device.type, getattr(unet, "fast_paths", None), _weights_version(unet))
        if self._fn is None or key != self._key:
            freeze = device.type == "cpu" if self.freeze is None else bool(self.freeze)
            if self._fn is not None and freeze:
                # Frozen weights are constants of the compiled code, and dynamo would reuse that code for the same
                # module: drop every compiled graph before compiling the new weights.
                torch.compiler.reset()
            kwargs: dict[str, Any] = {"dynamic": False}
            if freeze:
                options = dict(torch._inductor.list_mode_options(self.mode)) if self.mode else {}
                kwargs["options"] = {**options, "freezing": True}
            elif self.mode:
                kwargs["mode"] = self.mode
            self._fn = torch.compile(_unwrap_compiled(unet), **kwargs)
            self._key = key
        return self._fn


def _check_component(index: dict, key: str, allowed: tuple[str, ...] | None, index_file) -> None:
    entry = index.get(key)
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
        raise ValueError(f"{index_file} has no valid '{key}' entry (expected [library, class name]), got {entry!r}")
    if allowed is not None and entry[1] not in allowed:
        raise ValueError(
            f"{index_file}: the '{key}' component is a {entry[1]}, which ddpm cannot load (supported: "
            f"{', '.join(allowed)}); pass {key}= to use your own"
        )


def _read_recommendation(name, hub: dict) -> dict[str, Any]:
    """The usable entries of the optional ``ddpm.json`` beside ``model_index.json``: ``num_inference_steps``,
    ``sampler`` and ``num_inference_steps_by_sampler`` (an unusable value is dropped with a warning)."""
    from .schedulers.vocabulary import SAMPLERS

    local = Path(name)
    if local.is_dir():
        path = local / METADATA_NAME
        if not path.is_file():
            return {}
    else:
        try:
            path = ddpm_io.resolve_file(name, METADATA_NAME, **hub)
        except OSError:
            return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable %s: %s", path, err)
        return {}

    def steps_ok(value, what) -> bool:
        if _is_bool(value) or not isinstance(value, int) or value < 1:
            logger.warning("ignoring %s=%r in %s: not an integer >= 1", what, value, path)
            return False
        return True

    out: dict[str, Any] = {}
    steps, sampler = data.get("num_inference_steps"), data.get("sampler")
    if sampler is not None and sampler not in SAMPLERS:
        logger.warning("ignoring sampler=%r in %s: not one of %s", sampler, path, ", ".join(SAMPLERS))
        sampler, steps = None, None
    if steps is not None and steps_ok(steps, "num_inference_steps"):
        out["num_inference_steps"] = steps
    if sampler is not None:
        out["sampler"] = sampler
    by_sampler = data.get("num_inference_steps_by_sampler") or {}
    if isinstance(by_sampler, dict):
        out["num_inference_steps_by_sampler"] = {
            k: v for k, v in by_sampler.items() if k in SAMPLERS and steps_ok(v, f"num_inference_steps_by_sampler.{k}")
        }
    return out


def _pipeline_device(device_map, low_cpu_mem_usage) -> torch.device | None:
    """The device of Diffusers' pipeline ``device_map`` values: "cpu", the accelerator's name or "balanced"."""
    if device_map is None:
        return None
    if not isinstance(device_map, str):
        raise ValueError(f"`device_map` must be a string, got {device_map!r}.")
    from .models.modeling import accelerator_device

    accel = accelerator_device()
    supported = ["balanced", accel.type] + (["cpu"] if accel.type != "cpu" else [])
    if device_map not in supported:
        raise NotImplementedError(f"{device_map} not supported. Supported strategies are: {', '.join(supported)}")
    if low_cpu_mem_usage is False:
        raise ValueError(
            f"You cannot set `low_cpu_mem_usage` to False while using device_map={device_map} for loading and "
            "dispatching. Please make sure to set `low_cpu_mem_usage=True`."
        )
    return torch.device("cpu") if device_map == "cpu" else accel


def _has_variant_files(name, component: str, variant: str) -> bool:
    """Whether the component's folder holds files of ``variant`` (``*.fp16.safetensors``, index or shards; Diffusers'
    test: the second dot-separated part of a file name starts with the variant). A Hub id is not listed: True."""
    folder = Path(name) / component
    if not Path(name).is_dir():
        return True
    if not folder.is_dir():
        return False
    return any(len(p.name.split(".")) > 1 and p.name.split(".")[1].startswith(variant) for p in folder.iterdir())
