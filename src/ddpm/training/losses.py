"""Training losses: the paper's L_simple and improved DDPM's hybrid loss for learned variances.

Notation (timesteps as stated in :mod:`ddpm.schedulers.common`):

* ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (paper eq. 4, ``scheduler.add_noise``).
* L_simple (paper eq. 14): the mean over pixels of ``(target - prediction)^2``, where the target is ``eps``
  (``prediction_type="epsilon"``), ``x0`` (``"sample"``) or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``
  (``"v_prediction"``). Unweighted in all three cases, unless ``snr_gamma`` > 0.
* Min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"), optional:
  with ``SNR_t = abar_t / (1 - abar_t)`` the per-sample MSE is multiplied by ``min(SNR_t, gamma) / SNR_t`` for
  epsilon, ``min(SNR_t, gamma)`` for sample and ``min(SNR_t, gamma) / (SNR_t + 1)`` for v prediction. All three make
  the loss the x0-space error weighted by ``min(SNR_t, gamma)``: the nearly-clean timesteps (``SNR_t > gamma``) stop
  dominating the gradient. The logged ``mse`` stays unweighted.
* Learned variance (``variance_type`` ``learned_range`` or ``learned``; the model outputs 2·C channels, the second
  half parameterising the variance): loss = L_simple + lambda * L_vlb (Nichol & Dhariwal 2021, eq. 16,
  lambda = 0.001). ``L_vlb`` is estimated from the sampled t as ``T * L_t``, with
  ``L_t`` = KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for t > 0 and the discretized-Gaussian decoder NLL
  ``-log p(x0|x_1)`` for t = 0 (paper eq. 5 and 13), each a mean over pixels in bits. The mean half of the output
  enters L_vlb through a stop-gradient, so L_vlb trains only the variance. With T = 1000 this is exactly
  improved-diffusion's ``RESCALED_MSE`` (its ``vb * num_timesteps / 1000`` equals ``lambda * T * L_t``). The terms
  come from :func:`ddpm.likelihood.vb_terms_bpd`, the same that the evaluation's bound sums.
"""

from __future__ import annotations

import torch
from torch import nn

from ddpm.likelihood import mean_flat, vb_terms_bpd
from ddpm.schedulers.common import split_model_output


def prediction_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"prediction_type={kind!r} is not supported for training; allowed: epsilon, sample, v_prediction")


def diffusion_loss(
    model_output: torch.Tensor,
    scheduler,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    vlb_weight: float = 0.001,
    snr_gamma: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Per-sample losses for one batch (each a float32 tensor of shape [B]).

    Returns ``loss`` (what is minimised: its batch mean), ``mse`` and, with a learned variance, ``vb``
    (``L_t`` in bits/dim, before the ``lambda * T`` weight).
    """
    model_output = model_output.float()
    prediction, variance_values = split_model_output(model_output, x0, scheduler.config.variance_type)
    learned = variance_values is not None
    target = prediction_target(scheduler, x0, noise, t).float()
    mse = mean_flat((target - prediction) ** 2)
    terms = {"mse": mse}
    simple = mse * min_snr_weights(scheduler, t, snr_gamma) if snr_gamma > 0 else mse
    if learned:
        frozen = torch.cat([prediction.detach(), variance_values], dim=1)
        vb = vb_terms_bpd(scheduler, frozen, x0, x_t, t, clip_denoised=False)["bpd"].float()
        terms["vb"] = vb
        terms["loss"] = simple + vlb_weight * scheduler.config.num_train_timesteps * vb
    else:
        terms["loss"] = simple
    return terms


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma loss weights for ``t`` (float32, shape [B]); see the module notes."""
    if not gamma > 0:
        raise ValueError(f"snr_gamma must be > 0 for Min-SNR weighting, got {gamma!r}")
    snr = scheduler.snr(t)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        weight = clipped / snr
    elif kind == "sample":
        weight = clipped
    elif kind == "v_prediction":
        weight = clipped / (snr + 1.0)
    else:
        raise ValueError(f"prediction_type={kind!r} has no Min-SNR weighting; allowed: epsilon, sample, v_prediction")
    return weight.float()


def compute_loss(
    model: nn.Module,
    scheduler,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    vlb_weight: float = 0.001,
    autocast_dtype: torch.dtype | None = None,
    snr_gamma: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Noise ``x0`` to ``x_t``, run ``model(x_t, t)`` (under autocast when a dtype is given) and return the terms of
    :func:`diffusion_loss`."""
    x_t = scheduler.add_noise(x0, noise, t)
    if autocast_dtype is not None:
        with torch.autocast(device_type=x0.device.type, dtype=autocast_dtype):
            output = model(x_t, t, return_dict=False)[0]
    else:
        output = model(x_t, t, return_dict=False)[0]
    return diffusion_loss(output, scheduler, x0, x_t, noise, t, vlb_weight=vlb_weight, snr_gamma=snr_gamma)
