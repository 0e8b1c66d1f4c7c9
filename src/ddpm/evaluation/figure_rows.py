"""The paper's figure settings scaled to a model, and the rows of the figures as ``ddpm eval`` draws them.

Timesteps follow the library's convention (:mod:`ddpm.schedulers.common`); :func:`paper_timesteps` converts the
paper's t for a model with T = 1000 to ours for any T.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: The paper's t of the rows of Fig. 7 and of the mix of Fig. 8 (its numbering, T = 1000).
PAPER_SHARED_LATENT_T = (1000, 750, 500, 250)
PAPER_INTERPOLATION_T = 500


def paper_timesteps(T: int, paper: Sequence[int] = PAPER_SHARED_LATENT_T) -> list[int]:
    """The paper's timesteps (for T = 1000) scaled to ``T`` and converted to ours, distinct, highest first."""
    return sorted({max(0, round(t * T / 1000) - 1) for t in paper}, reverse=True)


def shared_latent_rows(rows) -> list[np.ndarray]:
    """The figure rows of :func:`~ddpm.evaluation.figures.shared_latent_samples`: x_t first, then its samples."""
    return [np.concatenate([x_t, samples]) for _, x_t, samples in rows]


def interpolation_rows(
    unet, scheduler, images: torch.Tensor, t: int, lambdas: Sequence[float], seed: int = 0
) -> list[np.ndarray]:
    """One row per pair of consecutive images of ``images`` (uint8 NCHW, an even number): source A, the mixes of
    :func:`~ddpm.evaluation.figures.interpolate` for each λ, source B."""
    from ddpm.evaluation.figures import interpolate
    from ddpm.images import to_uint8

    if len(images) < 2 or len(images) % 2:
        raise ValueError(f"interpolation needs pairs of images, got {len(images)} image(s)")
    rows = []
    for k in range(0, len(images), 2):
        a, b = images[k : k + 1], images[k + 1 : k + 2]
        mixed = interpolate(unet, scheduler, a, b, t=t, lambdas=lambdas, seed=seed)
        src_a, src_b = (to_uint8(v.permute(0, 2, 3, 1).numpy()) for v in (a, b))
        rows.append(np.concatenate([src_a, mixed, src_b]))
    return rows


# The figures' labels, drawn into the PNGs by ``ddpm eval`` (:func:`ddpm.images.labelled_grid`). PIL's bundled font
# has no Greek letters: λ is spelled "lambda". Timesteps are ours (0..T-1).
def progressive_labels(timesteps: Sequence[int]) -> dict:
    """Fig. 6: one column per recorded t (the last column is the sample itself)."""
    return {
        "col_labels": [str(t) for t in timesteps],
        "corner": "t",
        "title": "predicted x_0 from x_t at each t (ours, 0..T-1); last column: the sample",
    }


def shared_latent_labels(timesteps: Sequence[int], num_samples: int) -> dict:
    """Fig. 7: rows by t; the first column is x_t, the others samples of p(x_0 | x_t)."""
    return {
        "col_labels": ["x_t"] + [f"sample {j + 1}" for j in range(num_samples)],
        "row_labels": [f"t = {t}" for t in timesteps],
        "title": "samples of p(x_0 | x_t) from one shared x_t (first column); t ours, 0..T-1",
    }


def interpolation_labels(t: int, lambdas: Sequence[float], indices: Sequence[int]) -> dict:
    """Fig. 8: source A, one column per lambda, source B; rows by the pair of image indices."""
    return {
        "col_labels": ["A"] + [f"{float(v):g}" for v in lambdas] + ["B"],
        "row_labels": [f"#{a}, #{b}" for a, b in zip(indices[::2], indices[1::2])],
        "corner": "lambda",
        "title": f"(1 - lambda) x_t(A) + lambda x_t(B) at t = {t} (ours), decoded; A, B: the sources",
    }
