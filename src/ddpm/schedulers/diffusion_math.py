"""The diffusion math that does not need a scheduler object: beta schedules and the variational-bound terms.

Timesteps follow the library's index convention, stated in :mod:`ddpm.schedulers.common` (``betas[t]`` is the
paper's β_{t+1}).

The beta schedules reproduce Hugging Face Diffusers' ``DDPMScheduler`` bit for bit (they are the definition of the
process a checkpoint was trained with, so they are computed exactly as the reference computes them, in float32).
Everything derived from them for the variational bound is computed in float64 (see :mod:`ddpm.schedulers.ddpm`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "BETA_SCHEDULES",
    "approx_standard_normal_cdf",
    "betas_for_alpha_bar",
    "discretized_gaussian_log_likelihood",
    "make_betas",
    "normal_kl",
    "rescale_zero_terminal_snr",
]

#: The beta schedules :func:`make_betas` knows.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")


# ---------------------------------------------------------------------------------------------------------------
# Beta schedules
# ---------------------------------------------------------------------------------------------------------------
def _cosine_alpha_bar(s: float) -> float:
    # Nichol & Dhariwal 2021, eq. 17 with offset 0.008.
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def _laplace_alpha_bar(s: float) -> float:
    # Log-SNR with a Laplace density (Hang et al. 2024); alpha_bar = sqrt(snr / (1 + snr)).
    centred = 0.5 - s
    log_snr = -0.5 * math.copysign(1.0, centred) * math.log(1.0 - 2.0 * abs(centred) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1.0 + snr))


def betas_for_alpha_bar(num_steps: int, alpha_bar: str = "cosine", max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise a continuous ᾱ(s), s in [0, 1]: β_i = min(1 - ᾱ((i+1)/T) / ᾱ(i/T), max_beta).

    ``alpha_bar`` is ``"cosine"`` (improved DDPM's ``squaredcos_cap_v2``) or ``"laplace"``. Computed with Python
    floats (float64) and returned as float32, as the reference does.
    """
    fn = {"cosine": _cosine_alpha_bar, "laplace": _laplace_alpha_bar}.get(alpha_bar)
    if fn is None:
        raise ValueError(f"alpha_bar={alpha_bar!r} is not supported; allowed: 'cosine', 'laplace'.")
    values = [min(1.0 - fn((i + 1) / num_steps) / fn(i / num_steps), max_beta) for i in range(num_steps)]
    return torch.tensor(values, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so that the last step has zero SNR (Lin et al. 2023, arXiv:2305.08891, Algorithm 1).

    √ᾱ is shifted so that its last value is 0 and scaled so that its first value is unchanged; float32 throughout,
    with the reference's order of operations so that the result is bit-identical.
    """
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first = sqrt_alpha_bar[0].clone()
    last = sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1.0 - alphas


def make_betas(
    num_train_timesteps: int,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Sequence[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """The float32 betas β_0..β_{T-1} (paper β_1..β_T) of a schedule, exactly as Diffusers builds them.

    ``trained_betas`` (if given) wins over ``beta_schedule`` and must have ``num_train_timesteps`` entries.
    The paper's schedule is ``linear`` from 1e-4 to 0.02 with T = 1000 (paper §4).
    """
    T = num_train_timesteps
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32).detach().cpu().clone()
        if betas.ndim != 1 or betas.numel() != T:
            raise ValueError(
                f"trained_betas has shape {tuple(betas.shape)}; it must be a 1-D sequence of num_train_timesteps={T} "
                "values (one beta per training timestep)."
            )
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        betas = betas_for_alpha_bar(T, "cosine")
    elif beta_schedule == "laplace":
        betas = betas_for_alpha_bar(T, "laplace")
    elif beta_schedule == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; allowed: {', '.join(BETA_SCHEDULES)}.")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    _check_betas(betas, beta_start, beta_end, beta_schedule, trained_betas)
    return betas


def _check_betas(betas: torch.Tensor, beta_start, beta_end, beta_schedule: str, trained_betas) -> None:
    """``ValueError`` naming the arguments unless every beta is finite and in [0, 1].

    Each β_t is a variance fraction: outside [0, 1], ᾱ_t = Π (1 - β_s) leaves [0, 1] and √ᾱ_t, √(1 - ᾱ_t) are NaN.
    0 (no noise added at that step) and exactly 1 (the last step of a zero-terminal-SNR rescale) are legitimate,
    as are the cosine schedule's betas clipped at 0.999.
    """
    bad = ~(torch.isfinite(betas) & (betas >= 0) & (betas <= 1))
    if not bool(bad.any()):
        return
    first = int(bad.nonzero()[0, 0])
    found = f"betas[{first}] = {float(betas[first])!r}"
    if trained_betas is not None:
        raise ValueError(
            f"trained_betas has {int(bad.sum())} value(s) outside [0, 1] or not finite ({found}); every beta must be a "
            "finite number in [0, 1]."
        )
    culprits = [
        f"{name}={value!r}"
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end))
        if not (isinstance(value, (int, float)) and 0 <= value <= 1)
    ] or [f"beta_start={beta_start!r}", f"beta_end={beta_end!r}"]
    raise ValueError(
        f"{' and '.join(culprits)}: beta_schedule={beta_schedule!r} then gives {found}; every beta must be a finite "
        "number in [0, 1] (beta_start and beta_end in [0, 1], e.g. the paper's 0.0001 and 0.02)."
    )


# ---------------------------------------------------------------------------------------------------------------
# Variational-bound terms (paper eq. 5 and eq. 13)
# ---------------------------------------------------------------------------------------------------------------
def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) ‖ N(mean2, exp(logvar2))), elementwise, in nats.

    The L_{t-1} terms of the paper's eq. 5 are sums of these over pixels. Arguments broadcast; scalars (Python floats)
    are accepted for any of them as long as one is a tensor.
    """
    ref = next((x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor)), None)
    if ref is None:
        raise TypeError("normal_kl: at least one argument must be a tensor.")
    dtype = ref.dtype if ref.is_floating_point() else torch.get_default_dtype()
    logvar1, logvar2 = (
        x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dtype, device=ref.device)
        for x in (logvar1, logvar2)
    )
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by the paper's code (for ``cdf="tanh"``)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _log_normal_cdf_difference(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Φ(hi) - Φ(lo)) for lo < hi, accurate far into both tails (float64 in, float64 out)."""
    # Reflect bins that lie mostly above 0 so that both ends are in the lower tail, where log Φ is accurate:
    # Φ(hi) - Φ(lo) = Φ(-lo) - Φ(-hi).
    flip = (lo + hi) > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    # log(Φ(hi) - Φ(lo)) = log Φ(hi) + log(1 - exp(log Φ(lo) - log Φ(hi))); -expm1 keeps thin bins accurate.
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor, cdf: str = "exact"
) -> torch.Tensor:
    """log p(x) of 8-bit data under a Gaussian discretised into 256 bins: the paper's decoder, eq. 13. In nats.

    ``x`` holds pixel values scaled to [-1, 1] (integers 0..255 mapped linearly). Each bin is ``[x - 1/255,
    x + 1/255]``; the edge bins are open: ``(-inf, -1 + 1/255]`` for x = -1 and ``[1 - 1/255, inf)`` for x = 1 (the
    test is x < -0.999 / x > 0.999 as in the paper's code). ``means`` and ``log_scales`` (log standard deviations)
    broadcast against ``x``. The result has the broadcast shape and ``x``'s floating dtype.

    ``cdf="exact"`` (default) integrates the exact Gaussian, computed in float64 in log space so that it is finite
    and accurate even for bins many standard deviations away. ``cdf="tanh"`` reproduces the paper's code (and
    improved-diffusion): the tanh approximation of Φ with every probability clamped at 1e-12 before the log.
    """
    out_dtype = torch.promote_types(x.dtype, means.dtype) if x.is_floating_point() else means.dtype
    if cdf == "tanh":
        centred = x - means
        inv_std = torch.exp(-log_scales)
        cdf_plus = approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
        cdf_min = approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
        log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
        log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
        log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
        out = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
        return out.to(out_dtype)
    if cdf != "exact":
        raise ValueError(f"cdf={cdf!r} is not supported; allowed: 'exact', 'tanh'.")
    x64 = x.double()
    centred = x64 - means.double()
    inv_std = torch.exp(-torch.as_tensor(log_scales).double())
    hi = inv_std * (centred + 1.0 / 255.0)
    lo = inv_std * (centred - 1.0 / 255.0)
    log_left_edge = torch.special.log_ndtr(hi)  # log Φ(hi): bin (-inf, x + 1/255]
    log_right_edge = torch.special.log_ndtr(-lo)  # log(1 - Φ(lo)): bin [x - 1/255, inf)
    log_inner = _log_normal_cdf_difference(lo, hi)
    out = torch.where(x64 < -0.999, log_left_edge, torch.where(x64 > 0.999, log_right_edge, log_inner))
    return out.to(out_dtype)
