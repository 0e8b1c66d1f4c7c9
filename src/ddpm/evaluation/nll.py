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

The terms themselves, and the ln 2 conversion, live in :mod:`ddpm.likelihood` (built on the scheduler's tables); this
module draws each x_t, runs the model and collects the terms over the chain.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence

import torch

from ddpm.likelihood import LN2, bits_per_dim, mean_flat, predicted_noise, prior_bpd, vb_terms_bpd
from ddpm.noise import randn_tensor

__all__ = ["LN2", "bits_per_dim", "prior_bpd", "summarize", "to_model_space", "variational_bound"]


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
    if t_batch < 1:
        raise ValueError(f"t_batch must be >= 1, got {t_batch}")
    device = _model_device(model)
    x0 = to_model_space(x0).to(device)
    B = x0.shape[0]
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"generator: {len(generator)} generators for a batch of {B} images; pass one or one per image")
    T = scheduler.config.num_train_timesteps
    terms = torch.zeros(B, T, dtype=torch.float64)
    mse = torch.zeros(B, T, dtype=torch.float64)
    eps_mse = torch.zeros(B, T, dtype=torch.float64)
    start = time.perf_counter()
    for hi in range(T - 1, -1, -t_batch):
        ts = list(range(hi, max(hi - t_batch, -1), -1))
        noise = torch.cat([randn_tensor(x0.shape, generator, device, x0.dtype) for _ in ts])
        x0_rep = x0.repeat(len(ts), 1, 1, 1)
        t_vec = torch.tensor(ts, device=device, dtype=torch.int64).repeat_interleave(B)
        x_t = scheduler.add_noise(x0_rep, noise, t_vec)
        output = _model_output(model, x_t, t_vec)
        vb = vb_terms_bpd(scheduler, output, x0_rep, x_t, t_vec, clip_denoised=clip_denoised, decoder_cdf=decoder_cdf)
        pred_x0 = vb["pred_original_sample"]
        x0_err = mean_flat((pred_x0 - x0_rep) ** 2)
        e_err = mean_flat((predicted_noise(scheduler, x_t, pred_x0, t_vec) - noise) ** 2)  # ε of the clipped x̂_0
        for j, t in enumerate(ts):
            rows = slice(j * B, (j + 1) * B)
            terms[:, t] = vb["bpd"][rows].double().cpu()
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
