"""The DDIM sampler (Song, Meng, Ermon 2021) with the API and file format of Diffusers' ``DDIMScheduler``.

Timesteps follow the family's index convention (:mod:`ddpm.schedulers.common`): t = 0..T-1, paper t = ours + 1.
A step goes from t to the next timestep of the schedule, prev (-1 after the last one, where ᾱ_{-1} is
``final_alpha_cumprod``: 1 with ``set_alpha_to_one``, else ᾱ_0). With a = ᾱ_t and a' = ᾱ_prev (Song et al. eq. 12):

    x0  = (x_t - √(1 - a) ε) / √a                       (the model's estimate of x_0; from v or x0 directly likewise)
    σ_t = η √((1 - a') / (1 - a) · (1 - a / a'))         (eq. 16; η = 0: deterministic DDIM, η = 1: DDPM's σ)
    x_prev = √a' · x0 + √(1 - a' - σ_t²) · ε + σ_t z,    z ~ N(0, I)

The schedule tables are built exactly as in :class:`ddpm.DDPMScheduler` (float32 ``betas``/``alphas_cumprod``, bit
for bit as Diffusers). The per-step coefficients are computed once per schedule (and once per η) as Python floats
with the reference's float32 operations, so ``step`` applies them as kernel scalars: no host-device synchronisation
when the timestep is a Python int, a CPU tensor, or an element of ``scheduler.timesteps``, and results equal to
Diffusers' to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .common import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    ForwardProcessMixin,
    SchedulerMixin,
    StepPositions,
    check_choice,
    check_custom_timesteps,
    check_num_inference_steps,
    check_num_train_timesteps,
    spaced_timesteps,
    threshold_sample,
)
from .diffusion_math import BETA_SCHEDULES, make_betas

__all__ = ["DDIMScheduler", "DDIMSchedulerOutput"]


@dataclass(eq=False)
class DDIMSchedulerOutput(BaseOutput):
    """What :meth:`DDIMScheduler.step` returns.

    Attributes:
        prev_sample: x_prev, the sample at the next timestep of the schedule (the next model input).
        pred_original_sample: the model's estimate of x_0 (after clipping/thresholding) at this step.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class _DDIMStepTable(StepPositions):
    """Coefficients of ``step`` for each position of a schedule, as Python floats holding float32 values.

    ``sqrt_a`` = √a, ``sqrt_one_minus_a`` = √(1 - a), ``sqrt_a_prev`` = √a' and ``variance`` = (1 - a') / (1 - a) ·
    (1 - a / a') are the reference's float32 values (x0 from ε divides by a small √a, and 1 - a/a' cancels for short
    strides, so these roundings are kept rather than improved). :meth:`for_eta` gives σ_t = η·√variance and the
    direction coefficient √(1 - a' - σ_t²), cached per η.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: np.ndarray, final_alpha_cumprod: torch.Tensor):
        super().__init__(alphas_cumprod, timesteps, final_alpha_cumprod)
        a, a_prev = self.a32, self.a_prev32
        self.sqrt_a: list[float] = (a**0.5).tolist()
        self.sqrt_one_minus_a: list[float] = ((1 - a) ** 0.5).tolist()
        self.sqrt_a_prev: list[float] = (a_prev**0.5).tolist()
        self._variance = ((1 - a_prev) / (1 - a)) * (1 - a / a_prev)
        self._sqrt_variance = self._variance**0.5
        self._one_minus_a_prev = 1 - a_prev
        self._by_eta: dict[float, tuple[list[float], list[float]]] = {}

    def for_eta(self, eta: float) -> tuple[list[float], list[float]]:
        """(σ_t, √(1 - a' - σ_t²)) per position for this η, in the reference's float32 operations.

        For η <= 1 the radicand is α(1 - a')²/(1 - a) >= 0 in exact arithmetic; a float32 rounding below zero (it
        happens where it is ~1e-13, e.g. one step with ``set_alpha_to_one=False``) is taken as 0. For η > 1 it may be
        truly negative: those positions hold NaN and :meth:`DDIMScheduler.step` refuses them.
        """
        cached = self._by_eta.get(eta)
        if cached is None:
            std = self._sqrt_variance * eta
            radicand = self._one_minus_a_prev - std**2
            if eta <= 1.0:
                radicand = radicand.clamp(min=0)
            cached = (std.tolist(), (radicand**0.5).tolist())
            self._by_eta[eta] = cached
        return cached


class DDIMScheduler(ForwardProcessMixin, SchedulerMixin):
    """Denoising diffusion implicit models: Song et al. 2021's sampler, from deterministic (η = 0) to DDPM-like (η = 1).

    Constructor arguments, defaults and config keys are those of Diffusers' ``DDIMScheduler`` (differences, all
    deliberate, are listed in ``docs/differences.md``):

    Args:
        num_train_timesteps: T, the length of the training chain.
        beta_start, beta_end: the ends of the ``linear``/``scaled_linear``/``sigmoid`` schedules.
        beta_schedule: ``linear``, ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid`` or ``laplace``.
        trained_betas: explicit betas (T values); win over ``beta_schedule``.
        clip_sample: clamp the predicted x_0 to ``[-clip_sample_range, clip_sample_range]``.
        set_alpha_to_one: ᾱ after the last step is 1 (the clean data); if False, ᾱ_0 (as the original DDIM code).
        steps_offset: added to every ``leading`` timestep (Stable Diffusion uses 1).
        prediction_type: what the model predicts: ``epsilon``, ``sample`` (x_0) or ``v_prediction``.
        thresholding: Imagen dynamic thresholding of x_0 (takes precedence over ``clip_sample``), with
            ``dynamic_thresholding_ratio`` (the quantile) and ``sample_max_value`` (the largest threshold).
        timestep_spacing: how ``set_timesteps(n)`` picks n of the T timesteps: ``leading``, ``linspace``,
            ``trailing`` (arXiv:2305.08891, Table 2).
        rescale_betas_zero_snr: rescale the betas to zero terminal SNR (arXiv:2305.08891, Algorithm 1).
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        T = check_num_train_timesteps(num_train_timesteps)
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not 0.0 <= dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r} must lie in [0, 1].")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)):
            raise ValueError(f"steps_offset={steps_offset!r} must be an integer.")

        self.betas = make_betas(T, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        #: ᾱ after the last step (t = -1): 1 (``set_alpha_to_one``) or ᾱ_0, a 0-d float32 tensor as in Diffusers.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self._set_schedule(np.arange(T - 1, -1, -1, dtype=np.int64), device=None)

    # -- timesteps ---------------------------------------------------------------------------------------------------
    @property
    def timesteps(self) -> torch.Tensor:
        """The current schedule, descending int64 (the full chain T-1 .. 0 until :meth:`set_timesteps` is called)."""
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value) -> None:
        values = check_custom_timesteps(value, self.config.num_train_timesteps)
        self._set_schedule(values, value.device if isinstance(value, torch.Tensor) else None)

    def _set_schedule(self, timesteps: np.ndarray, device) -> None:
        self._steps = _DDIMStepTable(self.alphas_cumprod, timesteps, self.final_alpha_cumprod)
        self._timesteps = torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.int64)).to(device)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the n timesteps of the sampling chain (before inference), spaced by ``config.timestep_spacing``.

        Args:
            num_inference_steps: n, with 1 <= n <= T.
            device: where ``self.timesteps`` lives (``None``: the CPU). ``step`` never synchronises either way.
        """
        T = self.config.num_train_timesteps
        n = check_num_inference_steps(num_inference_steps, T)
        values = spaced_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset)
        self.num_inference_steps = n
        self._set_schedule(values, device)

    def previous_timestep(self, timestep):
        """The timestep that ``step`` goes to from ``timestep``: the next one of the schedule (-1 after the last).

        Returns an int for an int, a 0-d int64 tensor for a tensor.
        """
        return self._steps.previous(timestep, self._timesteps)

    # -- the reverse step --------------------------------------------------------------------------------------------
    @staticmethod
    def _check_eta(eta) -> float:
        if isinstance(eta, torch.Tensor) and eta.numel() == 1 and eta.device.type == "cpu":
            eta = eta.item()
        if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
            raise ValueError(f"eta={eta!r} must be a real number >= 0 (0: deterministic DDIM, 1: DDPM's variance).")
        eta = float(eta)
        if not math.isfinite(eta) or eta < 0:
            raise ValueError(f"eta={eta!r} must be a finite number >= 0 (0: deterministic DDIM, 1: DDPM's variance).")
        return eta

    @staticmethod
    def _epsilon_from(x0: torch.Tensor, sample: torch.Tensor, sqrt_a: float, sqrt_b: float) -> torch.Tensor:
        """ε = (x_t - √a x0) / √(1 - a), three roundings in the reference's order."""
        eps = torch.mul(x0, sqrt_a)
        eps = torch.sub(sample, eps) if eps.requires_grad else torch.sub(sample, eps, out=eps)
        return eps.div_(sqrt_b)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> DDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step x_t → x_prev (Song et al. eq. 12), prev being the next timestep of the schedule.

        Args:
            model_output: the network's output for (``sample``, ``timestep``): ε, x_0 or v (``prediction_type``);
                ``sample``'s shape.
            timestep: the current t, an element of ``self.timesteps`` (0..T-1, paper t + 1).
            sample: x_t.
            eta: η >= 0, the weight of the noise: σ_t = η·σ_DDPM (eq. 16). With η > 0, noise is drawn at every
                step (the last one included) exactly as Diffusers draws it: ``model_output``'s shape, dtype and
                device, from ``generator`` (one, or one per batch item) or the global RNG.
            use_clipped_model_output: re-derive ε from the clipped/thresholded x_0 for the direction term.
            generator: the random source of the noise (η > 0).
            variance_noise: the standard-normal z itself instead of drawing it (e.g. CycleDiffusion); broadcast to
                ``sample``'s shape. Not together with ``generator``.
            return_dict: return a :class:`DDIMSchedulerOutput` (default) or the tuple (prev_sample,
                pred_original_sample).

        The outputs have ``sample``'s dtype. ``ValueError`` (before any work) for a bad η, a timestep not in the
        schedule, ``step`` before ``set_timesteps``, both ``generator`` and ``variance_noise``, mismatched shapes, or
        an η > 1 whose σ_t² exceeds 1 - ᾱ_prev at this step.
        """
        eta = self._check_eta(eta)
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is None: call set_timesteps(num_inference_steps) before step().")
        index = self._steps.index_of(timestep, self._timesteps)
        if generator is not None and variance_noise is not None:
            raise ValueError(
                "Pass either generator or variance_noise to step(), not both (variance_noise is the noise)."
            )
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise ValueError("model_output and sample must be tensors.")
        if model_output.shape != sample.shape:
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}; DDIM needs the sample's shape "
                f"{tuple(sample.shape)} (a model that also predicts a variance gives 2*C channels: pass the first C)."
            )
        if variance_noise is not None:
            try:
                shape = torch.broadcast_shapes(variance_noise.shape, sample.shape)
            except RuntimeError:
                shape = None
            if shape != sample.shape:
                raise ValueError(
                    f"variance_noise has shape {tuple(variance_noise.shape)}; it must broadcast to the sample's shape "
                    f"{tuple(sample.shape)}."
                )
        steps = self._steps
        std, direction = steps.for_eta(eta)
        std, direction = std[index], direction[index]
        if math.isnan(direction):
            limit = math.sqrt(steps._one_minus_a_prev[index].item() / steps._variance[index].item())
            raise ValueError(
                f"eta={eta!r} makes σ_t² exceed 1 - ᾱ_prev at timestep {steps.t[index]} (the direction term would be "
                f"NaN); the largest eta for this step is {limit:.6g} (eta in [0, 1] is always valid)."
            )

        out_dtype = sample.dtype
        noise_dtype = model_output.dtype
        prediction = model_output if model_output.dtype == out_dtype else model_output.to(out_dtype)
        sqrt_a, sqrt_b = steps.sqrt_a[index], steps.sqrt_one_minus_a[index]

        # x_0 and ε estimates, in the reference's order of operations (separate roundings, no fused multiply-add)
        prediction_type = self.config.prediction_type
        fresh = True  # whether x0 is a tensor we allocated (then it may be modified in place)
        if prediction_type == "epsilon":  # x0 = (x_t - √(1 - a) ε) / √a
            scaled = torch.mul(prediction, sqrt_b)
            x0 = torch.sub(sample, scaled) if scaled.requires_grad else torch.sub(sample, scaled, out=scaled)
            x0.div_(sqrt_a)
            eps = prediction
        elif prediction_type == "v_prediction":  # x0 = √a x_t - √(1 - a) v,  ε = √a v + √(1 - a) x_t
            x0 = torch.mul(sample, sqrt_a).sub_(torch.mul(prediction, sqrt_b))
            eps = torch.mul(prediction, sqrt_a).add_(torch.mul(sample, sqrt_b))
        else:  # "sample": x0 is the output, ε = (x_t - √a x0) / √(1 - a)
            x0, fresh = prediction, False
            eps = self._epsilon_from(x0, sample, sqrt_a, sqrt_b)
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp_(-r, r) if fresh else x0.clamp(-r, r)
        if use_clipped_model_output:  # ε consistent with the clipped x0
            eps = self._epsilon_from(x0, sample, sqrt_a, sqrt_b)

        # x_prev = √a' x0 + √(1 - a' - σ²) ε + σ z
        prev = torch.mul(x0, steps.sqrt_a_prev[index])
        prev.add_(torch.mul(eps, direction))
        if eta > 0:
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator, model_output.device, noise_dtype, std)
            else:
                noise = torch.mul(variance_noise, std)
            prev.add_(noise.to(out_dtype))
        if x0.dtype != out_dtype:
            x0 = x0.to(out_dtype)
        if not return_dict:
            return prev, x0
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)
