"""DPM-Solver and DPM-Solver++ (Lu et al. 2022, arXiv:2206.00927 and arXiv:2211.01095), multistep orders 1-3, with the
API and file format of Diffusers' ``DPMSolverMultistepScheduler``.

Timesteps follow the family's index convention (:mod:`ddpm.schedulers.common`): t = 0..T-1, paper t = ours + 1.

Notation (VP process): x_t = α_t x_0 + σ_t ε with α_t = sqrt(ᾱ_t), σ_t = sqrt(1 - ᾱ_t); the schedule is kept as the
variance-exploding noise level s_t = σ_t / α_t (``sigmas``), from which α_t = 1 / sqrt(s_t² + 1), σ_t = s_t α_t and
the half log-SNR λ_t = log α_t - log σ_t. A step goes from position i (λ_s) to i + 1 (λ_t), h = λ_t - λ_s > 0.

* DPM-Solver++ (data prediction x_θ, arXiv:2211.01095): order 1 (eq. 5 there, = DDIM)
  x_t = (σ_t/σ_s) x_s - α_t (e^{-h} - 1) x_θ; the multistep order 2 (Algorithm 2) adds a finite difference
  D1 = (m0 - m1) / r0, r0 = h_0 / h, weighted by -½ α_t (e^{-h} - 1) (midpoint) or α_t ((e^{-h} - 1)/h + 1) (heun);
  order 3 adds the second difference D2 with α_t ((e^{-h} - 1 + h)/h² - ½).
* DPM-Solver (noise prediction ε_θ, arXiv:2206.00927 eq. 3.7 and its multistep form):
  x_t = (α_t/α_s) x_s - σ_t (e^{h} - 1) ε_θ, with the analogous higher-order terms.
* SDE-DPM-Solver++ / SDE-DPM-Solver (arXiv:2211.01095 §5): the same with e^{-h} → e^{-2h} (resp. 2× the ε terms)
  plus fresh Gaussian noise σ_t sqrt(1 - e^{-2h}) z (resp. σ_t sqrt(e^{2h} - 1) z).

Numerics. The per-step coefficients are computed once per schedule (``set_timesteps``) from the float32 ``sigmas``
in float32, with the reference's operations in the reference's order: the step size h = λ_t - λ_s is a difference
of float32 log-SNRs, and a float64 h would move the results by up to ~1e-4 relative at 1000 steps. They are applied
as Python scalars (kernel arguments: no host-device synchronisation in :meth:`step`), one rounding per operation in
the reference's order, so that results are bit-equal to Diffusers in float32.
"""

from __future__ import annotations

import math
import operator
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
    SchedulerMixin,
    check_choice,
    check_custom_timesteps,
    check_noise_pair,
    check_num_inference_steps,
    check_num_train_timesteps,
    threshold_sample,
)
from .diffusion_math import BETA_SCHEDULES, make_betas

__all__ = [
    "ALGORITHM_TYPES",
    "FINAL_SIGMAS_TYPES",
    "SOLVER_TYPES",
    "DPMSolverMultistepScheduler",
    "SchedulerOutput",
]

#: The solvers: data prediction (``++``) or noise prediction, ODE or SDE.
ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver")
#: The second-order rule (the third-order rule has a single form).
SOLVER_TYPES = ("midpoint", "heun")
#: The noise level after the last step: 0 (a clean sample) or the smallest training noise level.
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
#: Values of other schedulers' configs that Diffusers maps to this one's (so ``from_config`` swaps work).
_ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
_SOLVER_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}
#: The variance types accepted (a DDPM config's fixed types mean "no variance output", as in Diffusers).
_VARIANCE_TYPES = (None, *VARIANCE_TYPES)
_LEARNED = ("learned", "learned_range")


@dataclass(eq=False)
class SchedulerOutput(BaseOutput):
    """What :meth:`DPMSolverMultistepScheduler.step` returns.

    Attributes:
        prev_sample: the sample at the next position of the schedule (the next model input).
    """

    prev_sample: torch.Tensor


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------
def _sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The (fractional) training timestep whose noise level is ``sigma``: linear interpolation of log s_t between
    the two neighbouring training timesteps (clamped to the table's ends). One value at a time, in the reference's
    dtypes (``log_sigmas`` is float32, ``sigma`` a float64 scalar)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    above = (log_sigma - log_sigmas[:, np.newaxis]) >= 0
    low = np.cumsum(above, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo, hi = log_sigmas[low], log_sigmas[high]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * high).reshape(np.shape(sigma))


def _karras(sigma_max: float, sigma_min: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 eq. 5: s_i = (s_max^{1/ρ} + i/(n-1) (s_min^{1/ρ} - s_max^{1/ρ}))^ρ, ρ = 7."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


class _Schedule:
    """Per-position float32 quantities of a schedule of n steps and the coefficients of every update, as Python floats.

    Position i (0..n-1) is the i-th model evaluation; ``sigmas`` has n + 1 entries (the last one is the target of the
    last step). For the step from i: h = λ[i+1] - λ[i], h_0 = λ[i] - λ[i-1], h_1 = λ[i-1] - λ[i-2].
    """

    def __init__(self, sigmas: torch.Tensor, algorithm: str, solver_type: str, solver_order: int):
        s = sigmas  # float32, n + 1
        n = s.numel() - 1
        alpha = 1 / ((s**2 + 1) ** 0.5)
        sig = s * alpha
        lam = torch.log(alpha) - torch.log(sig)
        self.n = n
        self.alpha: list[float] = alpha.tolist()
        self.sigma: list[float] = sig.tolist()
        nan = torch.full((1,), float("nan"))
        # quantities at the step's target t = i + 1 and its sources s0 = i, s1 = i - 1, s2 = i - 2 (NaN before 0)
        a_t, s_t, l_t = alpha[1:], sig[1:], lam[1:]
        a_0, s_0, l_0 = alpha[:-1], sig[:-1], lam[:-1]
        l_1 = torch.cat([nan, lam[:-2]])
        l_2 = torch.cat([nan, nan, lam[:-3]])[:n]
        h = l_t - l_0
        h_0 = l_0 - l_1
        h_1 = l_1 - l_2
        #: The highest order whose terms are defined. A step of zero length in λ (a repeated timestep, or two noise
        #: levels one float32 ulp apart) makes r = h_0/h infinite and the heun/third-order weights 0/0; the first-order
        #: update is then exact, (σ_t/σ_s)·x. A zero-length earlier interval (h_0 or h_1 = 0) makes its finite
        #: difference 0/0, so the order drops below it.
        self.max_order: list[int] = torch.where((h == 0) | (h_0 == 0), 1, torch.where(h_1 == 0, 2, 3)).tolist()

        sde = algorithm.startswith("sde-")
        data = algorithm.endswith("++")
        # Each update is x = a·x_s (± c_k·D_k ...) (+ c_noise·z), evaluated left to right. Order 1..3 lists of
        # (sign, coefficient list) for D0, D1, D2, and the noise coefficient.
        if data:
            em1 = torch.exp(-h) - 1.0  # e^{-h} - 1
            if sde:
                e2 = 1.0 - torch.exp(-2.0 * h)
                a1 = s_t / s_0 * torch.exp(-h)
                noise = s_t * torch.sqrt(1.0 - torch.exp(-2 * h))
                c0 = (+1, a_t * e2)
                c1_mid = (+1, 0.5 * (a_t * e2))
                c1_heun = (+1, a_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0))
                c1_third = c1_heun
                c2 = (+1, a_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5))
            else:
                a1 = s_t / s_0
                noise = None
                c0 = (-1, a_t * em1)
                c1_mid = (-1, 0.5 * (a_t * em1))
                c1_heun = (+1, a_t * (em1 / h + 1.0))
                c1_third = c1_heun
                c2 = (-1, a_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5))
        else:
            ep1 = torch.exp(h) - 1.0  # e^{h} - 1
            a1 = a_t / a_0
            if sde:
                noise = s_t * torch.sqrt(torch.exp(2 * h) - 1.0)
                c0 = (-1, 2.0 * (s_t * ep1))
                c1_mid = (-1, s_t * ep1)
                c1_heun = (-1, 2.0 * (s_t * (ep1 / h - 1.0)))
                c1_third = c2 = None  # no third-order SDE-DPM-Solver (refused by the constructor)
            else:
                noise = None
                c0 = (-1, s_t * ep1)
                c1_mid = (-1, 0.5 * (s_t * ep1))
                c1_heun = (-1, s_t * (ep1 / h - 1.0))
                c1_third = c1_heun
                c2 = (-1, s_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5))
        c1 = c1_mid if solver_type == "midpoint" else c1_heun

        def values(term):
            return None if term is None else (term[0], term[1].tolist())

        self.a: list[float] = a1.tolist()
        self.noise: list[float] | None = None if noise is None else noise.tolist()
        self.terms = {1: [values(c0)], 2: [values(c0), values(c1)]}
        if solver_order == 3 and c2 is not None:
            self.terms[3] = [values(c0), values(c1_third), values(c2)]
        # finite-difference weights: D1 = (1/r0)(m0 - m1) (order 2); order 3: D1_0, D1_1 and their combination
        r0 = h_0 / h
        r1 = h_1 / h
        self.inv_r0: list[float] = (1.0 / r0).tolist()
        self.inv_r1: list[float] = (1.0 / r1).tolist()
        self.r0_over_sum: list[float] = (r0 / (r0 + r1)).tolist()
        self.inv_sum: list[float] = (1.0 / (r0 + r1)).tolist()


def _accumulate(x: torch.Tensor, term: torch.Tensor, sign: int) -> torch.Tensor:
    """x ± term, in place when that keeps the promoted dtype (one rounding, as the out-of-place operation)."""
    if torch.promote_types(x.dtype, term.dtype) == x.dtype:
        return x.add_(term) if sign > 0 else x.sub_(term)
    return x + term if sign > 0 else x - term


# ---------------------------------------------------------------------------------------------------------------
# The scheduler
# ---------------------------------------------------------------------------------------------------------------
class DPMSolverMultistepScheduler(SchedulerMixin):
    """DPM-Solver / DPM-Solver++ multistep sampler (ODE and SDE forms, orders 1-3) for a DDPM-trained model.

    Constructor arguments, defaults and config keys are those of Diffusers' ``DPMSolverMultistepScheduler``
    (0.42.1); differences, all deliberate, are listed in ``docs/differences.md``.

    Args:
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr: the
            training process, as for :class:`~ddpm.DDPMScheduler` (every beta schedule of
            :data:`~ddpm.schedulers.diffusion_math.BETA_SCHEDULES`). With ``rescale_betas_zero_snr`` the last ᾱ is set
            to 2⁻²⁴ instead of 0 so that the first noise level is finite.
        solver_order: 1, 2 or 3 (multistep: order k reuses the k - 1 previous model outputs).
        prediction_type: what the model predicts: ``epsilon``, ``sample`` (x_0) or ``v_prediction``.
        thresholding, dynamic_thresholding_ratio, sample_max_value: Imagen dynamic thresholding of the x_0 estimate.
        algorithm_type: ``dpmsolver++`` (default), ``sde-dpmsolver++``, ``dpmsolver``, ``sde-dpmsolver`` (the noise
            prediction forms need ``final_sigmas_type="sigma_min"``; ``sde-dpmsolver`` has orders 1 and 2 only).
        solver_type: ``midpoint`` or ``heun``, the second-order rule.
        lower_order_final: use order 1 for the last step and at most order 2 for the one before when fewer than 15
            steps are taken (stabilises few-step sampling).
        euler_at_final: always use order 1 for the last step.
        use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas, use_lu_lambdas: place the n noise levels by
            Karras et al.'s ρ = 7 rule, uniformly in log s, by a Beta(0.6, 0.6) quantile rule (needs scipy), or
            uniformly in λ; the timesteps are then those of the nearest training noise levels (at most one of these).
        use_flow_sigmas, flow_shift, use_dynamic_shifting, time_shift_type: flow-matching options, kept as config
            keys; flow matching is not supported (``ValueError`` unless left at their defaults).
        final_sigmas_type: ``zero`` (end on a clean sample) or ``sigma_min`` (end at the smallest training level).
        lambda_min_clipped: drop the training timesteps whose λ_t lies below this (cosine schedules).
        variance_type: ``None``, or ``learned``/``learned_range`` for a model whose output has 2C channels (the
            prediction, then a variance that this solver ignores). A DDPM config's fixed types mean ``None``.
        timestep_spacing, steps_offset: how ``set_timesteps(n)`` picks timesteps (``linspace`` by default).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ):
        T = check_num_train_timesteps(num_train_timesteps)
        check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        if algorithm_type in _ALGORITHM_ALIASES:  # another scheduler's config (Diffusers maps it the same way)
            algorithm_type = _ALGORITHM_ALIASES[algorithm_type]
            self.register_to_config(algorithm_type=algorithm_type)
        if solver_type in _SOLVER_ALIASES:
            solver_type = _SOLVER_ALIASES[solver_type]
            self.register_to_config(solver_type=solver_type)
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("variance_type", variance_type, _VARIANCE_TYPES)
        check_choice("time_shift_type", time_shift_type, ("exponential",))
        if (
            isinstance(solver_order, bool)
            or not isinstance(solver_order, (int, np.integer))
            or solver_order
            not in (
                1,
                2,
                3,
            )
        ):
            raise ValueError(f"solver_order={solver_order!r} is not supported; allowed: 1, 2, 3.")
        if algorithm_type == "sde-dpmsolver" and solver_order == 3:
            raise ValueError(
                "solver_order=3 is not supported with algorithm_type='sde-dpmsolver' (it has orders 1 and 2); use "
                "solver_order=2 or algorithm_type='sde-dpmsolver++'."
            )
        if algorithm_type in ("dpmsolver", "sde-dpmsolver") and final_sigmas_type == "zero":
            raise ValueError(
                f"final_sigmas_type='zero' is not supported with algorithm_type={algorithm_type!r} (the noise "
                "prediction form divides by the final noise level); use final_sigmas_type='sigma_min'."
            )
        for name, value in (("use_flow_sigmas", use_flow_sigmas), ("use_dynamic_shifting", use_dynamic_shifting)):
            if value:
                raise ValueError(
                    f"{name}={value!r} is not supported: ddpm has no flow-matching models; allowed: False."
                )
        spacings = {
            "use_karras_sigmas": use_karras_sigmas,
            "use_exponential_sigmas": use_exponential_sigmas,
            "use_beta_sigmas": use_beta_sigmas,
            "use_lu_lambdas": use_lu_lambdas,
        }
        if sum(bool(v) for v in spacings.values()) > 1:
            chosen = [k for k, v in spacings.items() if v]
            raise ValueError(f"{' and '.join(chosen)} are all set; at most one of {', '.join(spacings)} may be True.")
        if use_beta_sigmas:
            try:
                import scipy.stats  # noqa: F401
            except ImportError:
                raise ImportError("use_beta_sigmas=True needs scipy: pip install scipy") from None
        if not 0.0 <= dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r} must lie in [0, 1].")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, (int, np.integer)):
            raise ValueError(f"steps_offset={steps_offset!r} must be an integer.")
        if isinstance(lambda_min_clipped, bool) or not isinstance(lambda_min_clipped, (int, float, np.number)):
            raise ValueError(f"lambda_min_clipped={lambda_min_clipped!r} must be a number.")

        self.betas = make_betas(T, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # near 0 but not 0, so that the first noise level is finite
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        #: s_t = σ_t / α_t at every training timestep (float32, ascending t)
        self._train_sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.sigmas = self._train_sigmas  # Diffusers' value before set_timesteps (ascending t)
        self.timesteps = torch.arange(T - 1, -1, -1, dtype=torch.int64)
        self._table: _Schedule | None = None
        self._positions: dict[int, int] = {}
        self._schedule_t: list[int] = []
        self.model_outputs: list[torch.Tensor | None] = [None] * solver_order
        self.lower_order_nums = 0
        self._step_index: int | None = None
        self._begin_index: int | None = None

    # -- state -------------------------------------------------------------------------------------------------------
    @property
    def step_index(self) -> int | None:
        """Position in ``timesteps`` of the next :meth:`step` (None until the first step); +1 after every step."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The position of the first step, when a pipeline starts inside the schedule (``set_begin_index``)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next sampling loop at position ``begin_index`` of ``timesteps`` (img2img, inpainting)."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)) or begin_index < 0:
            raise ValueError(f"begin_index={begin_index!r} must be a non-negative integer.")
        if self.num_inference_steps is not None and begin_index >= len(self._schedule_t):
            raise ValueError(f"begin_index={begin_index} must be < the number of timesteps ({len(self._schedule_t)}).")
        self._begin_index = int(begin_index)

    # -- timesteps ---------------------------------------------------------------------------------------------------
    def _last_timestep(self) -> int:
        """T minus the number of training timesteps whose λ_t < ``lambda_min_clipped`` (they are never visited)."""
        clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), self.config.lambda_min_clipped)
        return self.config.num_train_timesteps - int(clipped)

    def _spaced(self, n: int) -> np.ndarray:
        T = self.config.num_train_timesteps
        last = self._last_timestep()
        spacing = self.config.timestep_spacing
        if spacing == "linspace":  # n + 1 points from 0 to last - 1, the final 0 dropped
            values = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
        elif spacing == "leading":
            ratio = last // (n + 1)
            if ratio == 0:
                raise ValueError(
                    f"timestep_spacing='leading' with num_inference_steps={n} needs num_inference_steps < {last} "
                    f"(the number of usable training timesteps); every timestep would be {self.config.steps_offset}."
                )
            values = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + self.config.steps_offset
        else:  # trailing: from the last usable timestep down in steps of T / n
            values = np.arange(last, 0, -T / n).round().astype(np.int64) - 1
        if values.size == 0 or values.max() >= T or values.min() < 0:
            raise ValueError(
                f"timestep_spacing={spacing!r} with steps_offset={self.config.steps_offset}, "
                f"lambda_min_clipped={self.config.lambda_min_clipped} and num_inference_steps={n} gives timesteps "
                f"outside [0, {T - 1}]: {values.tolist()}."
            )
        return values

    def _validate_custom(self, timesteps) -> np.ndarray:
        return check_custom_timesteps(timesteps, self.config.num_train_timesteps)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
        *,
        mu: float | None = None,
    ) -> None:
        """Choose the n timesteps and n + 1 noise levels of the sampling chain and reset the multistep state.

        Args:
            num_inference_steps: n, with 1 <= n <= T; spacing by ``config.timestep_spacing`` or by the configured
                noise-level rule (Karras, exponential, beta, uniform λ).
            device: where ``self.timesteps`` lives (``None``: the CPU); ``sigmas`` stays on the CPU.
            timesteps: custom timesteps instead (strictly descending, in [0, T-1]; not with a noise-level rule).
            mu: flow-matching dynamic shift; not supported (``ValueError`` unless None).
        """
        cfg = self.config
        T = cfg.num_train_timesteps
        if mu is not None:
            raise ValueError(f"mu={mu!r} is not supported (no dynamic shifting without flow matching); allowed: None.")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(
                f"Pass only one of num_inference_steps={num_inference_steps!r} and timesteps (custom timesteps)."
            )
        rule = next(
            (k for k in ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas") if cfg[k]),
            None,
        )
        if timesteps is not None:
            if rule is not None:
                raise ValueError(f"Custom timesteps cannot be combined with {rule}=True (it chooses the noise levels).")
            values = self._validate_custom(timesteps)
            n = len(values)
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps (1..num_train_timesteps) or timesteps.")
            n = check_num_inference_steps(num_inference_steps, T)
            values = None if rule is not None else self._spaced(n)

        train = self._train_sigmas.numpy()  # float32
        log_sigmas = np.log(train)
        if rule is None:
            sigmas = np.interp(values, np.arange(0, len(train)), train)
        else:
            if rule == "use_lu_lambdas":  # uniform in log s (= -λ), between its extremes
                lambdas = np.flip(log_sigmas.copy())
                lo, hi = lambdas[-1].item(), lambdas[0].item()
                sigmas = np.exp(hi + np.linspace(0, 1, n) * (lo - hi))
            else:
                flipped = np.flip(train).copy()
                s_min, s_max = flipped[-1].item(), flipped[0].item()
                if rule == "use_karras_sigmas":
                    sigmas = _karras(s_max, s_min, n)
                elif rule == "use_exponential_sigmas":
                    sigmas = np.exp(np.linspace(math.log(s_max), math.log(s_min), n))
                else:
                    import scipy.stats

                    ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
                    sigmas = np.array([s_min + p * (s_max - s_min) for p in ppf])
            values = np.array([_sigma_to_t(s, log_sigmas) for s in sigmas])
            if rule in ("use_karras_sigmas", "use_lu_lambdas") and cfg.beta_schedule != "squaredcos_cap_v2":
                values = values.round()
            values = values.astype(np.int64)  # truncation, as the reference's int64 cast
        sigma_last = train[0] if cfg.final_sigmas_type == "sigma_min" else 0.0
        sigmas = np.concatenate([sigmas, [sigma_last]]).astype(np.float32)

        self.sigmas = torch.from_numpy(sigmas)
        self._table = _Schedule(self.sigmas, cfg.algorithm_type, cfg.solver_type, cfg.solver_order)
        self._schedule_t = values.tolist()
        self._positions = {}  # value -> first position (a repeated value: its first occurrence)
        for i, v in enumerate(self._schedule_t):
            self._positions.setdefault(v, i)
        self.timesteps = torch.from_numpy(np.ascontiguousarray(values, dtype=np.int64)).to(device=device)
        self.num_inference_steps = len(values)
        self.model_outputs = [None] * cfg.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

    # -- timestep lookup ---------------------------------------------------------------------------------------------
    def _view_position(self, timestep) -> int | None:
        """The position of ``timestep`` when it is an element of ``self.timesteps`` itself (what
        ``for t in scheduler.timesteps`` yields), read from its storage offset: exact for repeated values, no sync."""
        ts = self.timesteps
        if not isinstance(timestep, torch.Tensor) or timestep.dim() != 0 or timestep.device != ts.device:
            return None
        if timestep.dtype != ts.dtype or timestep.untyped_storage().data_ptr() != ts.untyped_storage().data_ptr():
            return None
        offset = timestep.storage_offset() - ts.storage_offset()
        if offset % ts.stride(0) or not 0 <= offset // ts.stride(0) < len(self._schedule_t):
            return None
        return offset // ts.stride(0)

    def _timestep_value(self, timestep) -> int:
        """``timestep`` as a Python int (a device tensor costs one sync unless it is an element of ``timesteps``)."""
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"timestep must be a single value; got a tensor of shape {tuple(timestep.shape)}.")
            position = self._view_position(timestep)
            value = self._schedule_t[position] if position is not None else timestep.item()
        else:
            value = timestep
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        try:
            return operator.index(value)
        except TypeError:
            raise ValueError(f"timestep={timestep!r} must be an integer.") from None

    def index_for_timestep(self, timestep, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule: its own position for an element of ``self.timesteps``, else the
        first position holding its value; ``ValueError`` if absent."""
        if schedule_timesteps is not None:
            value = self._timestep_value(timestep)
            found = [i for i, v in enumerate(schedule_timesteps.tolist()) if v == value]
            if not found:
                raise ValueError(f"timestep={value} is not in schedule_timesteps.")
            return found[0]
        position = self._view_position(timestep)
        if position is not None:
            return position
        value = self._timestep_value(timestep)
        index = self._positions.get(value)
        if index is None:
            ts = self._schedule_t
            shown = ts if len(ts) <= 12 else [*ts[:5], "...", *ts[-5:]]
            raise ValueError(
                f"timestep={value} is not in the current schedule {shown} (pass one of scheduler.timesteps, or call "
                "set_begin_index)."
            )
        return index

    # -- model output ------------------------------------------------------------------------------------------------
    def _prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """The prediction part of ``model_output`` (its first C channels for a learned variance), shape-checked."""
        learned = self.config.variance_type in _LEARNED
        if not learned and model_output.shape == sample.shape:
            return model_output
        if model_output.ndim < 2 or sample.ndim < 2:
            raise ValueError(
                f"model_output {tuple(model_output.shape)} and sample {tuple(sample.shape)} must have the same shape."
            )
        channels = sample.shape[1]
        want = 2 * channels if learned else channels
        expected = (sample.shape[0], want, *sample.shape[2:])
        if tuple(model_output.shape) != expected:
            why = (
                f"variance_type={self.config.variance_type!r} needs 2*C channels (prediction, then variance)"
                if learned
                else "the model output must have the sample's shape"
            )
            raise ValueError(
                f"model_output has shape {tuple(model_output.shape)}; expected {expected} for a sample of shape "
                f"{tuple(sample.shape)}: {why}."
            )
        return model_output[:, :channels] if learned else model_output

    def convert_model_output(self, model_output: torch.Tensor, *, sample: torch.Tensor) -> torch.Tensor:
        """The model output as the quantity the solver integrates, at the current position ``step_index``.

        DPM-Solver++ (``*dpmsolver++``): the data prediction x_θ = (x - σ ε)/α (``epsilon``), the output itself
        (``sample``) or α x - σ v (``v_prediction``), then dynamically thresholded if configured. DPM-Solver
        (``dpmsolver``, ``sde-dpmsolver``): the noise prediction ε, = (x - α x_0)/σ or α v + σ x; with thresholding
        ε is recomputed from the thresholded x_0. A learned variance (second C channels) is dropped first.
        """
        prediction = self._prediction(model_output, sample)
        cfg = self.config
        kind = cfg.prediction_type
        data = cfg.algorithm_type.endswith("++")
        needs_sigma = cfg.thresholding or (kind != "sample" if data else kind != "epsilon")
        if needs_sigma:
            if self._step_index is None or self._table is None:
                raise ValueError(
                    "convert_model_output needs the current position: call set_timesteps, then step() (or "
                    "set_begin_index) first."
                )
            alpha, sigma = self._table.alpha[self._step_index], self._table.sigma[self._step_index]
        if data:
            if kind == "epsilon":  # (x - σ ε) / α
                x0 = torch.sub(sample, torch.mul(prediction, sigma)).div_(alpha)
            elif kind == "v_prediction":  # α x - σ v
                x0 = torch.mul(sample, alpha).sub_(torch.mul(prediction, sigma))
            else:
                x0 = prediction
            if cfg.thresholding:
                x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            return x0
        if kind == "epsilon":
            eps = prediction
        elif kind == "sample":  # (x - α x_0) / σ
            eps = torch.sub(sample, torch.mul(prediction, alpha)).div_(sigma)
        else:  # α v + σ x
            eps = torch.mul(prediction, alpha).add_(torch.mul(sample, sigma))
        if cfg.thresholding:
            x0 = torch.sub(sample, torch.mul(eps, sigma)).div_(alpha)
            x0 = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
            eps = torch.sub(sample, torch.mul(x0, alpha)).div_(sigma)
        return eps

    # -- the step ----------------------------------------------------------------------------------------------------
    def _order(self, index: int) -> int:
        """The order of the step from position ``index`` (lower at the start, and near the end if configured)."""
        cfg = self.config
        n = self._table.n
        final = index == n - 1 and (
            cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero"
        )
        second_last = index == n - 2 and cfg.lower_order_final and n < 15
        if cfg.solver_order == 1 or self.lower_order_nums < 1 or final:
            order = 1
        elif cfg.solver_order == 2 or self.lower_order_nums < 2 or second_last:
            order = 2
        else:
            order = 3
        return min(order, self._table.max_order[index])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """One multistep DPM-Solver step from position ``step_index`` to the next noise level.

        ``timestep`` locates the first step (``scheduler.timesteps[i]`` or a Python int; ignored afterwards, when the
        position advances by one per call, unless ``set_begin_index`` fixed the start). The model output is converted
        (:meth:`convert_model_output`) and stored in ``model_outputs``; the update uses the current and up to two
        previous ones. SDE forms add noise drawn as Diffusers draws it (float32, the converted output's shape and
        device, from ``generator``), or ``variance_noise`` when given. The result has the converted output's dtype.

        Returns:
            ``SchedulerOutput(prev_sample)``, or the tuple ``(prev_sample,)`` if ``return_dict=False``.
        """
        if self.num_inference_steps is None or self._table is None:
            raise ValueError("step() needs a schedule: call set_timesteps(num_inference_steps) first.")
        table = self._table
        index = self._step_index
        if index is None:
            index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        if index >= table.n:
            raise ValueError(
                f"All {table.n} steps of the schedule are done (step_index={index}); call set_timesteps again to "
                "sample anew."
            )
        cfg = self.config
        sde = cfg.algorithm_type.startswith("sde-")
        prediction = self._prediction(model_output, sample)  # shape check before any state changes
        if sde and variance_noise is not None and tuple(variance_noise.shape) != tuple(prediction.shape):
            raise ValueError(
                f"variance_noise has shape {tuple(variance_noise.shape)}; it must have the model prediction's shape "
                f"{tuple(prediction.shape)}."
            )
        if sde and variance_noise is None and isinstance(generator, (list, tuple)):
            if len(generator) not in (1, prediction.shape[0]):
                raise ValueError(
                    f"generator is a list of {len(generator)} generators; it must hold one per batch item "
                    f"({prediction.shape[0]}) or exactly one."
                )

        self._step_index = index
        order = self._order(index)
        x0 = self.convert_model_output(model_output, sample=sample)
        outputs = self.model_outputs
        outputs[:-1] = outputs[1:]
        outputs[-1] = x0

        upcast = sample.to(torch.float32)
        noise = None
        if sde:
            if variance_noise is None:
                noise = randn_tensor(x0.shape, generator, x0.device, torch.float32)
            else:
                noise = variance_noise.to(device=x0.device, dtype=torch.float32)

        prev = self._update(order, index, upcast, noise)

        if self.lower_order_nums < cfg.solver_order:
            self.lower_order_nums += 1
        prev = prev.to(x0.dtype)
        self._step_index = index + 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _update(self, order: int, i: int, sample: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """x_t = a·x_s ± c0·D0 ± c1·D1 ± c2·D2 (+ c_noise·z), evaluated left to right as the reference does."""
        table = self._table
        m = self.model_outputs
        m0 = m[-1]
        if order == 1:
            diffs = [m0]
        elif order == 2:
            diffs = [m0, torch.mul(torch.sub(m0, m[-2]), table.inv_r0[i])]  # D1 = (m0 - m1) / r0
        else:
            d1_0 = torch.mul(torch.sub(m0, m[-2]), table.inv_r0[i])
            d1_1 = torch.mul(torch.sub(m[-2], m[-3]), table.inv_r1[i])
            gap = torch.sub(d1_0, d1_1)
            d1 = torch.add(d1_0, torch.mul(gap, table.r0_over_sum[i]))  # D1 = D1_0 + r0/(r0+r1)·(D1_0 - D1_1)
            d2 = torch.mul(gap, table.inv_sum[i])  # D2 = (D1_0 - D1_1)/(r0 + r1)
            diffs = [m0, d1, d2]
        x = torch.mul(sample, table.a[i])
        for (sign, coefficients), d in zip(table.terms[order], diffs):
            x = _accumulate(x, torch.mul(d, coefficients[i]), sign)
        if noise is not None:
            x = _accumulate(x, torch.mul(noise, table.noise[i]), +1)
        return x

    # -- forward process ---------------------------------------------------------------------------------------------
    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """x = α x_0 + σ ε at the noise level of each timestep: α = 1/sqrt(s² + 1), σ = s α.

        The level s is the schedule's at the timestep's position (the reference's rule: a pipeline that started
        with ``set_begin_index`` uses the current/begin position for every item, whatever ``timesteps`` says);
        a timestep outside the schedule, or any timestep before ``set_timesteps``, uses its training level
        s_t = sqrt((1 - ᾱ_t)/ᾱ_t). ``timesteps``: an int, a sequence, or a 0-d / [B] integer tensor.
        """
        check_noise_pair(original_samples, noise)
        T = self.config.num_train_timesteps
        batch = original_samples.shape[0] if original_samples.ndim else 1
        if self._begin_index is not None and self.num_inference_steps is not None:
            index = self._step_index if self._step_index is not None else self._begin_index
            sigma = self.sigmas[[index] * batch]
        else:
            t = timesteps if isinstance(timesteps, torch.Tensor) else torch.as_tensor(timesteps)
            if t.is_floating_point() and not bool(torch.all(t == t.round())):
                raise ValueError(f"timesteps={t.tolist()} must be integers.")
            values = [int(v) for v in t.reshape(-1).tolist()]
            if any(not 0 <= v < T for v in values):
                raise ValueError(f"timesteps={values} must lie in [0, num_train_timesteps - 1] = [0, {T - 1}].")
            if len(values) not in (1, batch):
                raise ValueError(
                    f"timesteps has {len(values)} values for a batch of {batch}; give one or one per item."
                )
            picked = []
            for v in values:
                position = self._positions.get(v) if self.num_inference_steps is not None else None
                picked.append(self.sigmas[position] if position is not None else self._train_sigmas[v])
            sigma = torch.stack(picked)
        dtype = original_samples.dtype
        work = torch.float64 if dtype == torch.float64 else torch.float32
        sigma = sigma.to(device=original_samples.device, dtype=work)
        sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        sigma_t = sigma * alpha_t
        if work != dtype:
            alpha_t, sigma_t = alpha_t.to(dtype), sigma_t.to(dtype)
        return alpha_t * original_samples + sigma_t * noise
