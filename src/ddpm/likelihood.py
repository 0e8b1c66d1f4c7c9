"""The variational bound's terms in bits per dimension (Ho et al. 2020, eq. 5 and 13), for training and evaluation.

    L = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                       (the prior term: :func:`prior_bpd`)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))     (one term per reverse step: :func:`vb_terms_bpd`)
    L_0     = -log p(x_0 | x_1)                                  (the discretized Gaussian decoder, eq. 13)

Index convention: see :mod:`ddpm.schedulers.common` (our t = paper t - 1). For our t >= 1, :func:`vb_terms_bpd` is
the KL of the reverse step that starts from our x_t; for our t = 0 it is the decoder term L_0.

Every term is the mean over an image's dimensions (:func:`mean_flat`) of a quantity in nats, divided by ln 2
(:data:`LN2`). The distributions come from the scheduler (``q_mean_variance``, ``q_posterior_mean_variance``,
``p_mean_variance``, built on its float64 tables) and the elementwise densities from
:mod:`ddpm.schedulers.diffusion_math` (``normal_kl``, ``discretized_gaussian_log_likelihood``); this module only
combines them. :mod:`ddpm.training.losses` (the hybrid loss's L_vlb) and :mod:`ddpm.evaluation.nll` (the full-chain
bound) both use it.
"""

from __future__ import annotations

import math

import torch

from ddpm.schedulers.diffusion_math import discretized_gaussian_log_likelihood, normal_kl

__all__ = ["LN2", "bits_per_dim", "mean_flat", "predicted_noise", "prior_bpd", "vb_terms_bpd"]

#: ln 2: a quantity in nats divided by it is in bits.
LN2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """The mean over every dimension but the first (the batch): ``[B, ...] -> [B]``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """A total in nats over ``num_dims`` dimensions -> bits per dimension: ``nats / (num_dims * ln 2)``."""
    return nats / (num_dims * LN2)


def prior_bpd(scheduler, x0: torch.Tensor) -> torch.Tensor:
    """L_T per image in bits/dim: KL(q(x_T | x_0) || N(0, I)), mean over dimensions, / ln 2 (shape [B])."""
    T = scheduler.config.num_train_timesteps
    mean, _, log_variance = scheduler.q_mean_variance(x0, T - 1)
    kl = normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))
    return mean_flat(kl) / LN2


def vb_terms_bpd(
    scheduler,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool = False,
    decoder_cdf: str = "exact",
) -> dict[str, torch.Tensor]:
    """The term L_t of the bound for each image, in bits/dim, given x_t ~ q(x_t | x_0) and the model's output there.

    For t > 0 the KL between the true posterior q(x_{t-1} | x_t, x_0) (eqs. 6-7) and the model's
    p(x_{t-1} | x_t); for t = 0 the decoder's negative log-likelihood -log p(x_0 | x_1) of the 8-bit ``x0`` (eq. 13,
    ``decoder_cdf`` ``"exact"`` or the paper code's ``"tanh"``). ``model_output`` is read by the scheduler's
    ``prediction_type`` and ``variance_type``; ``clip_denoised`` clips the predicted x_0 to the data range before the
    model's mean is formed (the paper's evaluation; training does not clip). ``t`` is an int64 tensor [B].

    Returns ``bpd`` [B] (in the dtype of the KL term) and the model's distribution ``mean``, ``log_variance`` and
    ``pred_original_sample`` (each of ``x_t``'s shape), from :meth:`~ddpm.DDPMScheduler.p_mean_variance`.
    """
    out = scheduler.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    true_mean, _, true_log_variance = scheduler.q_posterior_mean_variance(x0, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / LN2
    decoder_nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"], cdf=decoder_cdf)
    decoder_nll = mean_flat(decoder_nll) / LN2
    return {
        "bpd": torch.where(t == 0, decoder_nll.to(kl.dtype), kl),
        "mean": out["mean"],
        "log_variance": out["log_variance"],
        "pred_original_sample": out["pred_original_sample"],
    }


def predicted_noise(scheduler, x_t: torch.Tensor, pred_x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The noise ε implied by an estimate of x_0: ε̂ = (x_t - sqrt(ᾱ_t) x̂_0) / sqrt(1 - ᾱ_t) (eq. 4 solved for ε).

    sqrt(ᾱ_t) is the scheduler's table of the public float32 ``alphas_cumprod`` (the one ``add_noise`` draws x_t
    with), gathered in ``x_t``'s dtype; sqrt(1 - ᾱ_t) is formed from it in that dtype.
    """
    sqrt_a = scheduler._gather("ref_sqrt_alphas_cumprod", t, x_t)
    return (x_t - sqrt_a * pred_x0) / torch.sqrt(1 - sqrt_a**2)
