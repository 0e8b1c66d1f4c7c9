"""The DDPM noise scheduler (Ho, Jain, Abbeel 2020) with the API and file format of Diffusers' ``DDPMScheduler``.

Timesteps follow the family's index convention (:mod:`ddpm.schedulers.common`): t = 0..T-1, paper t = ours + 1.

One source of truth: ``betas``, ``alphas`` and ``alphas_cumprod`` are float32 tensors built exactly as Diffusers
builds them (so that the same checkpoint sees the same process); every coefficient derived from them is computed once
in float64 and applied as a Python scalar (``step``) or gathered from a float64-derived table cached per device and
dtype (per-sample timesteps). ``step`` is free of host-device synchronisation when the timestep is a Python int, a
CPU tensor, or an element of ``scheduler.timesteps`` (``for t in scheduler.timesteps``), whatever the device.

Equations cited: (4) q(x_t|x_0); (6)-(7) the posterior q(x_{t-1}|x_t, x_0); (11) the ε-parametrised mean;
(13) the discretised decoder; (15) x_0 from ε. Beyond the paper: ``v_prediction`` (Salimans & Ho 2022),
``learned_range`` (Nichol & Dhariwal 2021, eq. 15 there), dynamic thresholding (Saharia et al. 2022) and the
zero-terminal-SNR rescale and timestep spacings of Lin et al. 2023 (arXiv:2305.08891).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..config import register_to_config
from ..noise import randn_tensor
from ..outputs import BaseOutput
from .common import (
    PREDICTION_TYPES,
    TIMESTEP_SPACINGS,
    VARIANCE_TYPES,
    ForwardProcessMixin,
    SchedulerMixin,
    StepPositions,
    check_choice,
    check_custom_timesteps,
    check_num_inference_steps,
    check_num_train_timesteps,
    spaced_timesteps,
    split_model_output,
    threshold_sample,
)
from .diffusion_math import BETA_SCHEDULES, discretized_gaussian_log_likelihood, make_betas, normal_kl

__all__ = [
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "DDPMScheduler",
    "DDPMSchedulerOutput",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
]


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class DDPMSchedulerOutput(BaseOutput):
    """What :meth:`DDPMScheduler.step` returns.

    Attributes:
        prev_sample: x_{t-1}, the sample for the previous timestep (the next model input).
        pred_original_sample: the model's estimate of x_0 (after clipping/thresholding) at this step.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------
# Per-step coefficients for the current schedule
# ---------------------------------------------------------------------------------------------------------------
class _StepTable(StepPositions):
    """Coefficients of ``step`` for each position of a schedule, as Python floats (kernel scalars: no syncs).

    For a step from t to prev_t (prev_t = -1 after the last step), with a = ᾱ_t, a' = ᾱ_{prev_t} (1 for -1),
    α = a/a' and β = 1 - α (the strided chain's β; the full chain's β_t when prev_t = t - 1):
      x0 from ε (eq. 15): x0 = (x_t - sqrt_one_minus_a·ε) / sqrt_a;  v: x0 = sqrt_a·x_t - sqrt_one_minus_a·v
      posterior mean (eq. 7): c_x0·x0 + c_xt·x_t,  c_x0 = √a'·β/(1-a),  c_xt = √α·(1-a')/(1-a)
      std: sqrt(β̃) with β̃ = (1-a')/(1-a)·β clamped at 1e-20 for fixed_small*, sqrt(β) for fixed_large*;
      learned_range: log σ² = frac·log β + (1 - frac)·log β̃, frac = (v + 1)/2.

    Where float32 rounding is amplified (x0 from ε divides by a small sqrt(ᾱ_t); log β̃ reaches -46 after the last
    step), the values are the reference's float32 values (sqrt_a, sqrt_one_minus_a, α, β, the two logs), so that
    results agree with Diffusers to float32 rounding. The well-conditioned combinations (c_x0, c_xt, std) are
    computed from them in float64 and rounded once.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, timesteps: np.ndarray, variance_type: str):
        super().__init__(alphas_cumprod, timesteps, torch.ones((), dtype=torch.float32))
        a32, a_prev32 = self.a32, self.a_prev32
        alpha32 = a32 / a_prev32
        beta32 = 1.0 - alpha32
        self.sqrt_a = (a32**0.5).tolist()
        self.sqrt_one_minus_a = ((1.0 - a32) ** 0.5).tolist()
        # float64 in numpy (single-threaded: no thread-pool wake-ups for these small tables)
        a, a_prev, alpha, beta = (x.numpy().astype(np.float64) for x in (a32, a_prev32, alpha32, beta32))
        one_minus_a, one_minus_a_prev = 1.0 - a, 1.0 - a_prev
        with np.errstate(divide="ignore", invalid="ignore"):
            self.c_x0 = (np.sqrt(a_prev) * beta / one_minus_a).tolist()
            self.c_xt = (np.sqrt(alpha) * one_minus_a_prev / one_minus_a).tolist()
            small = np.maximum(one_minus_a_prev / one_minus_a * beta, 1e-20)
        self.std: list[float] | None = None
        if variance_type in ("fixed_small", "fixed_small_log"):
            self.std = np.sqrt(small).tolist()
        elif variance_type in ("fixed_large", "fixed_large_log"):
            self.std = np.sqrt(beta).tolist()
        elif variance_type == "learned_range":
            small32 = ((1.0 - a_prev32) / (1.0 - a32) * beta32).clamp(min=1e-20)
            self.min_log = small32.log().tolist()
            self.max_log = beta32.log().tolist()


# ---------------------------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------------------------
class DDPMScheduler(ForwardProcessMixin, SchedulerMixin):
    """Denoising diffusion probabilistic model scheduler: forward noising, the reverse step and the VLB terms.

    Constructor arguments, defaults and semantics are those of Diffusers' ``DDPMScheduler`` (differences, all
    deliberate, are listed in ``docs/differences.md``):

    Args:
        num_train_timesteps: T, the length of the training chain.
        beta_start, beta_end: the ends of the ``linear``/``scaled_linear``/``sigmoid`` schedules.
        beta_schedule: one of ``linear`` (the paper's, 1e-4 → 0.02), ``scaled_linear``, ``squaredcos_cap_v2``,
            ``sigmoid``, ``laplace``.
        trained_betas: explicit betas (T values); win over ``beta_schedule``.
        variance_type: σ_t² of the reverse step: ``fixed_small`` (β̃_t, posterior variance), ``fixed_small_log``
            (the same through logs), ``fixed_large`` (β_t), ``fixed_large_log`` (the same through logs), ``learned``
            (the model's second C channels are log σ²), ``learned_range`` (they interpolate between log β̃_t and
            log β_t, improved DDPM).
        clip_sample: clamp the predicted x_0 to ``[-clip_sample_range, clip_sample_range]``.
        prediction_type: what the model predicts: ``epsilon`` (the paper's ε), ``sample`` (x_0), ``v_prediction``.
        thresholding: Imagen dynamic thresholding of x_0 (takes precedence over ``clip_sample``), with
            ``dynamic_thresholding_ratio`` (the quantile) and ``sample_max_value`` (the largest threshold).
        timestep_spacing: how ``set_timesteps(n)`` picks n of the T timesteps: ``leading``, ``linspace``,
            ``trailing`` (arXiv:2305.08891, Table 2); ``steps_offset`` is added for ``leading`` only.
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
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        T = check_num_train_timesteps(num_train_timesteps)
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not 0.0 <= dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r} must lie in [0, 1].")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)):
            raise ValueError(f"steps_offset={steps_offset!r} must be an integer.")

        self.betas = make_betas(T, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps: int | None = None
        self._set_schedule(np.arange(T - 1, -1, -1, dtype=np.int64), device=None)

    @property
    def variance_type(self) -> str:
        """The configured variance type (read-only; build a new scheduler with ``from_config`` to change it)."""
        return self.config.variance_type

    # -- timesteps ---------------------------------------------------------------------------------------------------
    @property
    def timesteps(self) -> torch.Tensor:
        """The current schedule, descending int64 (the full chain T-1 .. 0 until :meth:`set_timesteps` is called)."""
        return self._timesteps

    @timesteps.setter
    def timesteps(self, value) -> None:
        values = check_custom_timesteps(value, self.config.num_train_timesteps)
        device = value.device if isinstance(value, torch.Tensor) else None
        self._set_schedule(values, device)

    def _set_schedule(self, timesteps: np.ndarray, device) -> None:
        self._steps = _StepTable(self.alphas_cumprod, timesteps, self.config.variance_type)
        self._timesteps = torch.from_numpy(np.ascontiguousarray(timesteps, dtype=np.int64)).to(device)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the timesteps of the sampling chain (before inference).

        Args:
            num_inference_steps: n, with 1 <= n <= T; the spacing follows ``config.timestep_spacing``.
            device: where ``self.timesteps`` lives (``None``: the CPU). ``step`` never synchronises either way.
            timesteps: custom timesteps instead of ``num_inference_steps``: strictly descending, in [0, T-1]. As in
                Diffusers, ``num_inference_steps`` keeps its previous value and ``custom_timesteps`` becomes True.
        """
        T = self.config.num_train_timesteps
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(
                f"Pass only one of num_inference_steps={num_inference_steps!r} and timesteps (custom timesteps)."
            )
        if timesteps is not None:
            values = check_custom_timesteps(timesteps, T)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps (1..num_train_timesteps) or timesteps.")
            n = check_num_inference_steps(num_inference_steps, T)
            values = spaced_timesteps(T, n, self.config.timestep_spacing, self.config.steps_offset)
            self.num_inference_steps = n
            self.custom_timesteps = False
        self._set_schedule(values, device)

    def _index_of(self, timestep) -> int:
        """Position of ``timestep`` in the current schedule, without a host-device sync where possible."""
        return self._steps.index_of(timestep, self._timesteps)

    def previous_timestep(self, timestep):
        """The timestep that follows ``timestep`` in the current schedule (-1 after the last one).

        Returns an int for an int, a 0-d int64 tensor for a tensor (a view of ``self.timesteps``, as Diffusers).
        """
        return self._steps.previous(timestep, self._timesteps)

    # -- the reverse step --------------------------------------------------------------------------------------------
    def _split_model_output(self, model_output: torch.Tensor, sample: torch.Tensor):
        return split_model_output(model_output, sample, self.config.variance_type)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        return threshold_sample(sample, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> DDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One reverse step x_t → x_{t-1} ~ p(x_{t-1}|x_t) (paper Algorithm 2, generalised to strided schedules).

        ``timestep`` is the current t (an element of ``self.timesteps``, in 0..T-1); the step goes to the
        next timestep of the schedule (``previous_timestep``). The model's x_0 estimate (eq. 15, or the model output
        itself, or from v) is clipped or thresholded as configured, the posterior mean (eq. 7) formed, and for
        t > 0 noise is added with the variance type's σ_t. Noise is drawn exactly as Diffusers draws it (same shape,
        dtype = ``model_output``'s, device, generator use; none at t = 0). The outputs have ``sample``'s dtype.

        Returns:
            ``DDPMSchedulerOutput(prev_sample, pred_original_sample)``, or the tuple of both if ``return_dict=False``.
        """
        index = self._index_of(timestep)
        steps = self._steps
        out_dtype = sample.dtype
        prediction, model_variance = self._split_model_output(model_output, sample)
        noise_dtype = prediction.dtype
        if prediction.dtype != out_dtype:
            prediction = prediction.to(out_dtype)
            model_variance = None if model_variance is None else model_variance.to(out_dtype)

        # x_0 estimate
        prediction_type = self.config.prediction_type
        fresh = True  # whether x0 is a tensor we allocated (then it may be modified in place)
        if prediction_type == "epsilon":  # eq. 15: x0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)
            # Three roundings in the reference's order (no fused multiply-add): at large t the subtraction cancels
            # and the division by a small sqrt(ᾱ_t) amplifies any rounding difference.
            scaled = torch.mul(prediction, steps.sqrt_one_minus_a[index])
            x0 = torch.sub(sample, scaled) if scaled.requires_grad else torch.sub(sample, scaled, out=scaled)
            x0.div_(steps.sqrt_a[index])
        elif prediction_type == "v_prediction":  # x0 = sqrt(ᾱ_t) x_t - sqrt(1 - ᾱ_t) v
            x0 = torch.mul(sample, steps.sqrt_a[index]).sub_(prediction, alpha=steps.sqrt_one_minus_a[index])
        else:  # "sample"
            x0, fresh = prediction, False
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp_(-r, r) if fresh else x0.clamp(-r, r)

        # x_{t-1} = c_x0 x0 + c_xt x_t + σ_t z   (eq. 7 mean; Algorithm 2 line 4)
        c_x0, c_xt = steps.c_x0[index], steps.c_xt[index]
        if steps.t[index] > 0:
            variance_type = self.config.variance_type
            std = 1.0 if steps.std is None else steps.std[index]
            noise = randn_tensor(prediction.shape, generator, sample.device, noise_dtype, std)
            prev = noise if noise.dtype == out_dtype else noise.to(out_dtype)
            if variance_type == "learned":  # the second half is log σ² (as the paper's code / improved-diffusion)
                prev.mul_(torch.mul(model_variance, 0.5).exp_())
            elif variance_type == "learned_range":  # improved DDPM: between log β̃ and log β, in the reference's order
                frac = torch.add(model_variance, 1.0).mul_(0.5)
                log_variance = torch.mul(frac, steps.max_log[index])
                log_variance.add_(frac.neg_().add_(1.0).mul_(steps.min_log[index]))
                prev.mul_(log_variance.mul_(0.5).exp_())
            prev.add_(sample, alpha=c_xt).add_(x0, alpha=c_x0)
        else:
            prev = torch.mul(sample, c_xt).add_(x0, alpha=c_x0)
        if x0.dtype != out_dtype:
            x0 = x0.to(out_dtype)
        if not return_dict:
            return prev, x0
        return DDPMSchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    # -- tables per device/dtype -------------------------------------------------------------------------------------
    def _host_tables(self) -> dict[str, np.ndarray]:
        """The forward-process tables (:class:`ForwardProcessMixin`) and the full-chain VLB tables (t = 0..T-1) computed
        in float64, as the paper's code does.

        The VLB tables start from the (float32) betas and take the cumulative product in float64, so that they are
        consistent with each other to float64 precision (1 - ᾱ_t is then exact at small t, where the float32
        ``alphas_cumprod`` has a relative error of up to ~1e-3). ``add_noise``/``get_velocity`` instead use the public
        float32 ``alphas_cumprod`` (promoted to float64 for the square roots), which is what Diffusers trains with.
        β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) (eq. 7) with ᾱ_{-1} = 1; its log is "clipped" by using β̃ at t = 1 at
        t = 0 (where β̃ = 0).
        """
        betas = self.betas.numpy().astype(np.float64)
        a = np.cumprod(1.0 - betas)
        a_prev = np.append(1.0, a[:-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            posterior_variance = betas * (1.0 - a_prev) / (1.0 - a)
            clip_source = posterior_variance[1] if len(betas) > 1 else betas[0]
            return {
                **super()._host_tables(),
                "sqrt_alphas_cumprod": np.sqrt(a),
                "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - a),
                "one_minus_alphas_cumprod": 1.0 - a,
                "log_one_minus_alphas_cumprod": np.log1p(-a),
                "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / a),
                "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / a - 1.0),
                "posterior_variance": posterior_variance,
                "posterior_log_variance_clipped": np.log(np.append(clip_source, posterior_variance[1:])),
                "posterior_mean_coef1": betas * np.sqrt(a_prev) / (1.0 - a),
                "posterior_mean_coef2": (1.0 - a_prev) * np.sqrt(1.0 - betas) / (1.0 - a),
                "log_betas": np.log(betas),
                # fixed_large: σ² = β_t but β̃ at t = 1 at t = 0 (improved-diffusion: append(posterior_variance[1],
                # betas[1:]), "to get a better decoder log likelihood")
                "fixed_large_log_variance": np.log(np.append(clip_source, betas[1:])),
            }

    def _coefficient_dtype(self, x: torch.Tensor) -> torch.dtype:
        return x.dtype if x.is_floating_point() else torch.float32

    # -- variational-bound building blocks (full T-step chain) -----------------------------------------------------
    def q_mean_variance(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) (eq. 4).

        ``t`` is an int or an int tensor [B] (0..T-1). Variance and log-variance are broadcast (expanded
        views) to ``x0``'s shape. Like all the VLB terms, ᾱ here is the float64 cumulative product of the betas
        (the paper's code), not the float32 ``alphas_cumprod`` (they agree to ~6e-7 relative).
        """
        t = self._timestep_tensor(t, x0)
        mean = self._gather("sqrt_alphas_cumprod", t, x0) * x0
        variance = self._gather("one_minus_alphas_cumprod", t, x0).expand(mean.shape)
        log_variance = self._gather("log_one_minus_alphas_cumprod", t, x0).expand(mean.shape)
        return mean, variance, log_variance

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of the posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7), full chain.

        mean = β_t sqrt(ᾱ_{t-1}) / (1 - ᾱ_t) · x_0 + (1 - ᾱ_{t-1}) sqrt(α_t) / (1 - ᾱ_t) · x_t,
        variance = β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) · β_t (0 at t = 0, where x_{t-1} is the data itself), and
        log_variance_clipped = log β̃_t with log β̃ at t = 1 used at t = 0 (as the paper's code). Here ᾱ_{-1} = 1.
        ``t`` is an int or an int tensor [B]; variance/log-variance are expanded to ``x_t``'s shape.
        """
        t = self._timestep_tensor(t, x_t)
        mean = torch.addcmul(
            self._gather("posterior_mean_coef2", t, x_t) * x_t, self._gather("posterior_mean_coef1", t, x_t), x0
        )
        variance = self._gather("posterior_variance", t, x_t).expand(mean.shape)
        log_variance = self._gather("posterior_log_variance_clipped", t, x_t).expand(mean.shape)
        return mean, variance, log_variance

    def p_mean_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t, clip_denoised: bool = True
    ) -> dict[str, torch.Tensor]:
        """The model's reverse distribution p(x_{t-1} | x_t) = N(mean, variance) on the full T-step chain.

        ``model_output`` is read per ``prediction_type`` (ε, x_0 or v; for ``learned``/``learned_range`` its second
        C channels are the variance output). x_0 is estimated (eq. 15), clamped to ``[-clip_sample_range,
        clip_sample_range]`` (or dynamically thresholded if ``config.thresholding``) when ``clip_denoised``, and the
        mean is the posterior mean with that x_0 (eq. 7, equivalently eq. 11 for ε without clipping).

        Variance by ``variance_type``: ``fixed_small*``: β̃_t with the clipped log (β̃ at t = 1 used at t = 0, so
        the t = 0 decoder has a positive variance); ``fixed_large*``: β_t, with β̃ at t = 1 at t = 0 (as
        improved-diffusion, for a better decoder likelihood); ``learned``: the output is log σ²; ``learned_range``:
        log σ² = frac·log β_t + (1 - frac)·log β̃_t(clipped), frac = (v + 1) / 2. ``variance`` is always
        ``exp(log_variance)``.

        ``t`` is an int or an int tensor [B] (0..T-1). Returns dict(mean, variance, log_variance,
        pred_original_sample), each of ``x_t``'s shape.
        """
        t = self._timestep_tensor(t, x_t)
        prediction, model_variance = self._split_model_output(model_output, x_t)
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            x0 = torch.addcmul(
                self._gather("sqrt_recip_alphas_cumprod", t, x_t) * x_t,
                self._gather("sqrt_recipm1_alphas_cumprod", t, x_t),
                prediction,
                value=-1.0,
            )
        elif prediction_type == "v_prediction":
            x0 = torch.addcmul(
                self._gather("sqrt_alphas_cumprod", t, x_t) * x_t,
                self._gather("sqrt_one_minus_alphas_cumprod", t, x_t),
                prediction,
                value=-1.0,
            )
        else:
            x0 = prediction
        if clip_denoised:
            if self.config.thresholding:
                x0 = self._threshold_sample(x0)
            else:
                x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        mean, _, _ = self.q_posterior_mean_variance(x0, x_t, t)

        variance_type = self.config.variance_type
        if variance_type in ("fixed_small", "fixed_small_log"):
            log_variance = self._gather("posterior_log_variance_clipped", t, x_t).expand(x_t.shape)
        elif variance_type in ("fixed_large", "fixed_large_log"):
            log_variance = self._gather("fixed_large_log_variance", t, x_t).expand(x_t.shape)
        elif variance_type == "learned":
            log_variance = model_variance
        else:  # learned_range
            min_log = self._gather("posterior_log_variance_clipped", t, x_t)
            max_log = self._gather("log_betas", t, x_t)
            frac = (model_variance + 1.0) / 2.0
            log_variance = frac * max_log + (1.0 - frac) * min_log
        return {
            "mean": mean,
            "variance": torch.exp(log_variance),
            "log_variance": log_variance,
            "pred_original_sample": x0,
        }
