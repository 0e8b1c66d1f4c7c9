"""The paper's figures, as arrays and PNG files.

* Fig. 6 (progressive generation): the predicted x_0 (eq. 15) every ``every`` reverse steps of a sampling run.
* Fig. 7 (shared latent): several samples x_0 ~ p(x_0 | x_t) from one shared x_t, for several t.
* Fig. 8 (interpolation): two real images encoded with q(x_t | x_0) at t = 500 (paper numbering) with the same
  noise, mixed as (1 - λ) x_t + λ x'_t, and decoded by the reverse process with the same reverse noise for every λ.
* Fig. 5 (rate-distortion): from the per-timestep terms of the bound (:func:`ddpm.evaluation.variational_bound`):
  the rate (cumulative bits/dim received) and the distortion (RMSE of the predicted x_0 on the [0, 255] scale)
  against the number of reverse steps, plotted with PIL and written as CSV and JSON.

Timesteps are ours (index convention: :mod:`ddpm.schedulers.common`): the paper's t = 500 is our 499.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ddpm.evaluation.generate import image_generators, reverse_process

PAPER_SHARED_LATENT_TIMESTEPS = (999, 749, 499, 249)  # the paper's t = 1000, 750, 500, 250
PAPER_INTERPOLATION_TIMESTEP = 499  # the paper's t = 500
PAPER_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(11))


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model-space NCHW [-1, 1] -> uint8 NHWC, rounding (x / 2 + 0.5) * 255 (the pipeline's conversion)."""
    from ddpm.images import model_to_unit, to_uint8

    return to_uint8(model_to_unit(x.detach().float().cpu()))


def _shape(unet) -> tuple[int, int, int]:
    cfg = unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return cfg.in_channels, h, w


def _unet_device(unet) -> torch.device:
    return next(unet.parameters()).device


def save_rows(
    rows: Sequence[np.ndarray],
    path: str | os.PathLike,
    padding: int = 2,
    scale: int | str = 1,
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    corner: str | None = None,
    title: str | None = None,
) -> Path:
    """Write rows of uint8 NHWC images (all rows equally long) as one grid PNG, enlarged by ``scale``
    (nearest neighbour; ``"auto"``: see :func:`ddpm.images.labelled_grid`) and with the given labels drawn around
    it. With ``scale=1`` and no labels the PNG holds the raw grid."""
    from ddpm.images import labelled_grid, save_png

    rows = [np.asarray(r) for r in rows]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("every row of a figure must hold the same number of images")
    figure = labelled_grid(rows, col_labels, row_labels, corner=corner, title=title, padding=padding, scale=scale)
    return save_png(figure, path)


# ---------------------------------------------------------------------------------------------------------------
# Fig. 6: progressive generation
# ---------------------------------------------------------------------------------------------------------------
def progressive_generation(
    pipeline, num_images: int = 4, every: int = 100, seed: int = 0, num_inference_steps: int | None = None
) -> tuple[np.ndarray, list[int]]:
    """Sample ``num_images`` images and record the predicted x_0 after reverse steps 0, every, 2 every, ... and the
    last (where it is the final sample). Returns (uint8 ``[num_images, K, H, W, C]``, the K timesteps)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    steps = num_inference_steps or pipeline.scheduler.config.num_train_timesteps
    frames, timesteps = [], []

    def record(i, t, sample, pred_x0):
        frames.append(_to_uint8(pred_x0))
        timesteps.append(int(t))

    out = pipeline(
        batch_size=num_images,
        generator=image_generators(seed, range(num_images)),
        num_inference_steps=steps,
        output_type="pt",
        callback=record,
        callback_steps=every,
        progress=False,
    )
    final = np.asarray(_to_uint8(out.images * 2 - 1))
    if not np.array_equal(frames[-1], final):  # after the last step x̂_0 is the sample itself (displayed as is)
        frames[-1] = final
    return np.stack(frames, axis=1), timesteps


# ---------------------------------------------------------------------------------------------------------------
# Fig. 7: samples sharing x_t
# ---------------------------------------------------------------------------------------------------------------
def shared_latent_samples(
    unet,
    scheduler,
    timesteps: Sequence[int] = PAPER_SHARED_LATENT_TIMESTEPS,
    num_samples: int = 3,
    seed: int = 0,
    x0: torch.Tensor | None = None,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """For each t in ``timesteps``: one x_t and ``num_samples`` samples of p(x_0 | x_t) from it.

    x_t comes from one reverse-process run from pure noise (the paper's procedure: the samples share the high-level
    attributes the chain had decided by step t), or, with ``x0`` (one image in [-1, 1]), from q(x_t | x_0).
    Returns a list of (t, x_t as uint8 ``[1, H, W, C]``, samples as uint8 ``[num_samples, H, W, C]``).
    """
    T = scheduler.config.num_train_timesteps
    wanted = sorted({int(t) for t in timesteps}, reverse=True)
    if not wanted or wanted[-1] < 0 or wanted[0] >= T:
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got {list(timesteps)}")
    device = _unet_device(unet)
    dtype = next(unet.parameters()).dtype
    latents: dict[int, torch.Tensor] = {}
    if x0 is None:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn((1, *_shape(unet)), generator=g).to(device=device, dtype=dtype)
        if T - 1 in wanted:
            latents[T - 1] = x.clone()
        lowest = wanted[-1]

        def keep(t, sample, _pred):
            if t - 1 in wanted:
                latents[t - 1] = sample.clone()

        if lowest < T - 1:
            # Stop once the lowest wanted x_t is reached: run from T-1 down to lowest + 1.
            _reverse_until(unet, scheduler, x, T - 1, lowest, g, keep)
    else:
        g = torch.Generator().manual_seed(seed)
        x0 = x0.to(device=device, dtype=dtype).reshape(1, *_shape(unet))
        for t in wanted:
            noise = torch.randn(x0.shape, generator=g).to(device=device, dtype=dtype)
            latents[t] = scheduler.add_noise(x0, noise, torch.tensor([t], device=device))
    rows = []
    for t in wanted:
        x_t = latents[t]
        gens = image_generators(seed + 1, range(num_samples))  # sample j: the same reverse noise in every row
        samples = reverse_process(unet, scheduler, x_t.repeat(num_samples, 1, 1, 1), t, generator=gens)
        rows.append((t, _to_uint8(x_t), _to_uint8(samples)))
    return rows


def _reverse_until(unet, scheduler, x, t_start, t_stop, generator, callback):
    """Reverse steps t_start, ..., t_stop + 1 (leaving x at t_stop)."""
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    with torch.inference_mode():
        for t in range(t_start, t_stop, -1):
            out = unet(x, torch.tensor(t, device=x.device)).sample
            x = scheduler.step(out, t, x, generator=generator).prev_sample
            callback(t, x, None)
    return x


# ---------------------------------------------------------------------------------------------------------------
# Fig. 8: interpolation
# ---------------------------------------------------------------------------------------------------------------
def interpolate(
    unet,
    scheduler,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    t: int = PAPER_INTERPOLATION_TIMESTEP,
    lambdas: Sequence[float] = PAPER_LAMBDAS,
    seed: int = 0,
) -> np.ndarray:
    """Decode (1 - λ) x_t + λ x'_t for each λ, where x_t, x'_t ~ q(x_t | x_0) encode ``image_a``/``image_b``
    (``[C, H, W]`` or ``[1, C, H, W]`` in [-1, 1], or uint8) with the same noise, and every λ's reverse process uses
    the same reverse noise. At λ = 0 and 1 the results are the reconstructions of each image. Returns uint8
    ``[len(lambdas), H, W, C]``."""
    from ddpm.evaluation.nll import to_model_space

    device = _unet_device(unet)
    dtype = next(unet.parameters()).dtype
    a = to_model_space(image_a).to(device=device, dtype=dtype)
    b = to_model_space(image_b).to(device=device, dtype=dtype)
    if a.shape != b.shape or a.shape[0] != 1:
        raise ValueError(f"expected two single images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(a.shape, generator=g).to(device=device, dtype=dtype)
    tt = torch.tensor([t], device=device)
    x_a, x_b = scheduler.add_noise(a, noise, tt), scheduler.add_noise(b, noise, tt)
    lam = torch.tensor([float(v) for v in lambdas], device=device, dtype=dtype).reshape(-1, 1, 1, 1)
    mixed = (1 - lam) * x_a + lam * x_b
    # The same reverse noise for every λ: every row's generator has the same seed.
    gens = [torch.Generator().manual_seed(seed + 1) for _ in range(len(lambdas))]
    return _to_uint8(reverse_process(unet, scheduler, mixed, t, generator=gens))


# ---------------------------------------------------------------------------------------------------------------
# Fig. 5: rate-distortion
# ---------------------------------------------------------------------------------------------------------------
def rate_distortion(terms_bpd, mse, prior_bpd) -> dict[str, np.ndarray]:
    """Progressive lossy compression from one pass of the bound (section 4.3, Table 4).

    After s reverse steps (s = 1..T) the receiver holds the paper's x_t with t = T - s + 1 (our index i = T - s):
    the rate is the bits/dim sent so far, L_T + sum_{j >= i + 1} (our terms ``j``), i.e. the prior plus the KL
    terms of the steps taken; the distortion is the RMSE on [0, 255] of the x_0 predicted from x_t,
    sqrt(mean over images of mse[:, i]) * 127.5. At s = T the rate is the whole rate L_1 + ... + L_T (the decoder
    L_0 is the remaining distortion term). Inputs are ``[B, T]`` (and ``[B]``); outputs are arrays over s.
    """
    terms = np.asarray(terms_bpd, np.float64)
    mse = np.asarray(mse, np.float64)
    prior = np.asarray(prior_bpd, np.float64)
    T = terms.shape[1]
    kl = terms.mean(0).copy()
    kl[0] = 0.0  # the decoder is not part of the rate
    # rate after s steps: prior + sum of our terms i+1..T-1, with i = T - s
    tail = np.concatenate([np.cumsum(kl[::-1])[::-1], [0.0]])  # tail[i] = sum_{j >= i} kl[j]
    steps = np.arange(1, T + 1)
    i = T - steps
    rate = prior.mean() + tail[i + 1]
    distortion = np.sqrt(mse.mean(0)[i]) * 127.5
    return {"reverse_steps": steps, "timestep": i, "rate_bpd": rate, "distortion_rmse": distortion}


def write_rate_distortion(rd: dict[str, np.ndarray], prefix: str | os.PathLike) -> list[Path]:
    """Write ``PREFIX.csv``, ``PREFIX.json`` and the plot ``PREFIX.png``; returns the paths."""
    from ddpm.io import atomic_write_text

    prefix = Path(prefix)
    if prefix.suffix.lower() in (".png", ".csv", ".json"):
        prefix = prefix.with_suffix("")
    keys = ("reverse_steps", "timestep", "rate_bpd", "distortion_rmse")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for row in zip(*(rd[k] for k in keys)):
        writer.writerow([int(row[0]), int(row[1]), f"{row[2]:.8g}", f"{row[3]:.8g}"])
    paths = [prefix.with_suffix(".csv"), prefix.with_suffix(".json"), prefix.with_suffix(".png")]
    atomic_write_text(paths[0], buf.getvalue())
    atomic_write_text(paths[1], json.dumps({k: np.asarray(rd[k]).tolist() for k in keys}) + "\n")
    plot_rate_distortion(rd, paths[2])
    return paths


def plot_rate_distortion(rd: dict[str, np.ndarray], path: str | os.PathLike, size: tuple[int, int] = (960, 320)):
    """Fig. 5 drawn with PIL: distortion vs reverse steps, rate vs reverse steps, distortion vs rate; each panel
    with its tick labels and axis titles."""
    from PIL import Image, ImageDraw

    from ddpm.io import atomic_open

    width, height = size
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panel = width // 3
    steps, rate, dist = (np.asarray(rd[k], np.float64) for k in ("reverse_steps", "rate_bpd", "distortion_rmse"))
    panels = [
        (steps, dist, "reverse steps (T - t + 1)", "distortion (RMSE, [0, 255])"),
        (steps, rate, "reverse steps (T - t + 1)", "rate (bits/dim)"),
        (rate, dist, "rate (bits/dim)", "distortion (RMSE, [0, 255])"),
    ]
    for k, (x, y, xlabel, ylabel) in enumerate(panels):
        _line_plot(image, draw, (k * panel, 0, panel, height), x, y, xlabel, ylabel)
    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG")
    return Path(path)


def _line_plot(image, draw, box, x, y, xlabel, ylabel) -> None:
    """One panel: a line through (x, y) sorted by x, linear axes from 0 (y) with round ticks, titles on both axes."""
    from ddpm.images import draw_text, draw_vertical_text, font, linear_ticks, tick_label

    left, top, w, h = box
    tick_font, title_font = font(12), font(13)
    m_left, m_right, m_top, m_bottom = 74, 16, 14, 50
    x0, y0, x1, y1 = left + m_left, top + m_top, left + w - m_right, top + h - m_bottom
    draw_text(draw, ((x0 + x1) / 2, top + h - 6), xlabel, title_font, align="center", valign="bottom")
    draw_vertical_text(image, (left + 14, (y0 + y1) / 2), ylabel, title_font)
    draw.rectangle((x0, y0, x1, y1), outline="black")
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) == 0:
        return
    xmin, xmax = float(x.min()), float(x.max())
    ymin, ymax = float(min(y.min(), 0.0)), float(y.max())
    xmax = xmax if xmax > xmin else xmin + 1
    ymax = ymax if ymax > ymin else ymin + 1

    def px(xv, yv):
        return (x0 + (xv - xmin) / (xmax - xmin) * (x1 - x0), y1 - (yv - ymin) / (ymax - ymin) * (y1 - y0))

    for xv in linear_ticks(xmin, xmax, max_ticks=5):
        gx, _ = px(xv, ymin)
        draw.line((gx, y0, gx, y1), fill=(235, 235, 235))
        draw.line((gx, y1, gx, y1 + 4), fill="black")
        draw_text(draw, (gx, y1 + 7), tick_label(xv), tick_font, align="center", valign="top")
    for yv in linear_ticks(ymin, ymax, max_ticks=6):
        _, gy = px(xmin, yv)
        draw.line((x0, gy, x1, gy), fill=(235, 235, 235))
        draw.line((x0 - 4, gy, x0, gy), fill="black")
        draw_text(draw, (x0 - 7, gy), tick_label(yv), tick_font, align="right")
    draw.rectangle((x0, y0, x1, y1), outline="black")
    order = np.argsort(x, kind="stable")
    points = [px(float(a), float(b)) for a, b in zip(x[order], y[order])]
    if len(points) > 1:
        draw.line(points, fill=(31, 119, 180), width=2)
    else:
        px0, py0 = points[0]
        draw.ellipse((px0 - 2, py0 - 2, px0 + 2, py0 + 2), fill=(31, 119, 180))
