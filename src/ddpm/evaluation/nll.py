"""The variational bound on the negative log-likelihood, in bits per dimension (paper eq. 5, Table 1).

    L = L_T + sum_{t>1} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                       (the prior term)
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))     (one term per reverse step, x_t ~ q(x_t | x_0))
    L_0     = -log p(x_0 | x_1)                                  (the discretized Gaussian decoder, eq. 13)

computed in one pass over all T timesteps as the paper's code and improved-diffusion's ``calc_bpd_loop`` do: for
each t one fresh x_t is drawn from q(x_t | x_0) (each KL is Rao-Blackwellised, so one draw per term suffices), the
model is evaluated, and the term is averaged over the image's dimensions and divided by ln 2.

Timesteps are ours (:mod:`ddpm.schedulers.common`). ``terms_bpd[:, 0]`` is the decoder term L_0 and
``terms_bpd[:, t]`` (t >= 1) is L_t = KL(q(x_t | x_{t+1}, x_0) || p(x_t | x_{t+1})) in the paper's numbering, the
term of the reverse step that starts from our x_t.

The math lives in the scheduler (:meth:`~ddpm.DDPMScheduler.q_mean_variance`, ``q_posterior_mean_variance``,
``p_mean_variance``, ``normal_kl``, ``discretized_gaussian_log_likelihood`` of :mod:`ddpm.schedulers.diffusion_math`);
this module only drives it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

LN2 = math.log(2.0)


def bits_per_dim(nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """A total in nats over ``num_dims`` dimensions -> bits per dimension: ``nats / (num_dims * ln 2)``."""
    return nats / (num_dims * LN2)


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def to_model_space(x0) -> torch.Tensor:
    """Images as float ``[B, C, H, W]`` in [-1, 1]. Float input is taken as already in [-1, 1]; uint8 input
    (NCHW, or NHWC with 1 or 3 channels) is mapped by x / 127.5 - 1 (the paper's scaling)."""
    x = torch.as_tensor(x0)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(0, 3, 1, 2)
        return x.float() / 127.5 - 1.0
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {x.dtype}")
    return x


def _model_output(model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    out = model(x_t, t)
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _noise(shape, generator, device, dtype) -> torch.Tensor:
    """Noise for one timestep: from one generator, or row i from generator[i] (independent of the batch)."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} images")
        rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generator]
        return torch.cat([r.to(device) for r in rows])
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def prior_bpd(scheduler, x0: torch.Tensor) -> torch.Tensor:
    """L_T in bits/dim per image: KL(q(x_T | x_0) || N(0, I)) averaged over dimensions, / ln 2."""
    from ddpm.schedulers.diffusion_math import normal_kl

    T = scheduler.config.num_train_timesteps
    mean, _, log_variance = scheduler.q_mean_variance(x0, T - 1)
    kl = normal_kl(mean, log_variance, torch.zeros_like(mean), torch.zeros_like(mean))
    return _mean_flat(kl) / LN2


@torch.no_grad()
def variational_bound(
    model,
    scheduler,
    x0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    clip_denoised: bool = True,
    t_batch: int = 1,
    decoder_cdf: str = "exact",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The full-chain variational bound of each image, in bits/dim.

    Args:
        model: called as ``model(x_t, t)`` with ``t`` an int64 tensor [N] (like :class:`~ddpm.UNet2DModel`),
            returning a tensor or an object with ``.sample``; its output is read by the scheduler's
            ``prediction_type`` and ``variance_type`` (fixed and learned variances both work).
        scheduler: a :class:`~ddpm.DDPMScheduler` (its full T-step chain is used whatever ``set_timesteps`` said).
        x0: images ``[B, C, H, W]``, float in [-1, 1] (computed in their dtype), or uint8 (mapped by
            x / 127.5 - 1 to float32). Float images should lie on the 8-bit grid for L_0 to be a likelihood.
        generator: for the draws x_t ~ q(x_t | x_0): one generator, or one per image (then each image's result does
            not depend on the batch it is in). Draws are made for t = T-1 down to 0, one noise tensor per t.
        clip_denoised: clip the predicted x_0 to [-1, 1] before forming the model's mean (the paper's evaluation).
        t_batch: evaluate this many timesteps in one model call (a batch of ``t_batch * B``); results do not
            depend on it.
        decoder_cdf: ``"exact"`` (default) or ``"tanh"`` (the paper code's approximation) for the decoder L_0.

    Returns a dict of float64 CPU tensors: ``total_bpd`` [B] (= prior + sum of terms), ``prior_bpd`` [B] (L_T),
    ``decoder_bpd`` [B] (L_0 = ``terms_bpd[:, 0]``), ``terms_bpd`` [B, T] (index 0 the decoder, index t >= 1 the KL
    of the step from our x_t), ``mse`` [B, T] (mean squared error of the predicted x_0 from x_t, in [-1, 1] units;
    the distortion of Fig. 5) and ``eps_mse`` [B, T] (mean squared error of the implied ε).
    """
    from ddpm.schedulers.diffusion_math import discretized_gaussian_log_likelihood, normal_kl

    if t_batch < 1:
        raise ValueError(f"t_batch must be >= 1, got {t_batch}")
    device = _model_device(model)
    x0 = to_model_space(x0).to(device)
    B = x0.shape[0]
    T = scheduler.config.num_train_timesteps
    terms = torch.zeros(B, T, dtype=torch.float64)
    mse = torch.zeros(B, T, dtype=torch.float64)
    eps_mse = torch.zeros(B, T, dtype=torch.float64)
    sqrt_a = torch.from_numpy(np.sqrt(scheduler.alphas_cumprod.numpy().astype(np.float64)))
    start = time.perf_counter()
    for hi in range(T - 1, -1, -t_batch):
        ts = list(range(hi, max(hi - t_batch, -1), -1))
        noise = torch.cat([_noise(x0.shape, generator, device, x0.dtype) for _ in ts])
        x0_rep = x0.repeat(len(ts), 1, 1, 1)
        t_vec = torch.tensor(ts, device=device, dtype=torch.int64).repeat_interleave(B)
        x_t = scheduler.add_noise(x0_rep, noise, t_vec)
        out = scheduler.p_mean_variance(_model_output(model, x_t, t_vec), x_t, t_vec, clip_denoised=clip_denoised)
        true_mean, _, true_log_variance = scheduler.q_posterior_mean_variance(x0_rep, x_t, t_vec)
        kl = _mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / LN2
        decoder = (
            -_mean_flat(
                discretized_gaussian_log_likelihood(x0_rep, out["mean"], 0.5 * out["log_variance"], cdf=decoder_cdf)
            )
            / LN2
        )
        term = torch.where(t_vec == 0, decoder.to(kl.dtype), kl)
        pred_x0 = out["pred_original_sample"]
        x0_err = _mean_flat((pred_x0 - x0_rep) ** 2)
        # ε implied by the (clipped) x_0 prediction: (x_t - sqrt(ᾱ) x̂_0) / sqrt(1 - ᾱ).
        a = sqrt_a[t_vec.cpu()].to(device=device, dtype=x_t.dtype).reshape(-1, 1, 1, 1)
        eps_hat = (x_t - a * pred_x0) / torch.sqrt(1 - a**2)
        e_err = _mean_flat((eps_hat - noise) ** 2)
        for j, t in enumerate(ts):
            rows = slice(j * B, (j + 1) * B)
            terms[:, t] = term[rows].double().cpu()
            mse[:, t] = x0_err[rows].double().cpu()
            eps_mse[:, t] = e_err[rows].double().cpu()
        if progress and (ts[-1] % 100 == 0 or ts[-1] == 0):
            elapsed = time.perf_counter() - start
            print(f"nll: t={ts[-1]} ({T - ts[-1]}/{T} steps, {elapsed:.0f} s)", file=sys.stderr)
    prior = prior_bpd(scheduler, x0).double().cpu()
    return {
        "total_bpd": terms.sum(dim=1) + prior,
        "prior_bpd": prior,
        "decoder_bpd": terms[:, 0].clone(),
        "terms_bpd": terms,
        "mse": mse,
        "eps_mse": eps_mse,
    }


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def summarize(results: dict[str, torch.Tensor]) -> dict:
    """Means over images of the bound and its parts (bits/dim), and the rate/distortion split of section 4.3:
    rate = L_1 + ... + L_T (everything but the decoder), distortion = L_0."""
    total = results["total_bpd"]
    return {
        "num_images": int(total.shape[0]),
        "total_bpd": float(total.mean()),
        "total_bpd_std_error": float(total.std() / math.sqrt(len(total))) if len(total) > 1 else float("nan"),
        "prior_bpd": float(results["prior_bpd"].mean()),
        "decoder_bpd": float(results["decoder_bpd"].mean()),
        "rate_bpd": float((results["terms_bpd"][:, 1:].sum(1) + results["prior_bpd"]).mean()),
        "num_timesteps": int(results["terms_bpd"].shape[1]),
    }
