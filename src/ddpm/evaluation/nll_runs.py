"""The variational bound over a whole image set, and the file that keeps its terms.

:func:`bound_over_images` drives :func:`ddpm.evaluation.nll.variational_bound` batch by batch with one generator per
image seeded from ``(seed, index)``, so an image's terms do not depend on the batch it is scored in. The terms are
saved as one ``.npz`` (:func:`save_bound`) that the rate-distortion figure reads back (:func:`load_bound_terms`).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch

#: The arrays the rate-distortion figure needs from a saved bound.
RATE_DISTORTION_KEYS = ("terms_bpd", "mse", "prior_bpd")


def bound_over_images(
    unet,
    scheduler,
    x: torch.Tensor,
    seed: int = 0,
    batch_size: int = 8,
    t_batch: int = 1,
    clip_denoised: bool = True,
    decoder_cdf: str = "exact",
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The bound of every image of ``x`` (uint8 or model-space NCHW), ``batch_size`` images per model call; image
    ``i`` draws its x_t from a generator seeded from ``(seed, i)``. Returns the arrays of
    :func:`~ddpm.evaluation.nll.variational_bound`, concatenated over the batches."""
    from ddpm.evaluation.generate import image_generators
    from ddpm.evaluation.nll import variational_bound

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = []
    for first in range(0, len(x), batch_size):
        batch = x[first : first + batch_size]
        parts.append(
            variational_bound(
                unet,
                scheduler,
                batch,
                generator=image_generators(seed, range(first, first + len(batch))),
                clip_denoised=clip_denoised,
                t_batch=t_batch,
                decoder_cdf=decoder_cdf,
                progress=progress,
            )
        )
        if progress:
            print(f"nll: {first + len(batch)}/{len(x)} images", file=sys.stderr)
    if not parts:
        raise ValueError("no images to score")
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def save_bound(path: str | os.PathLike, results: dict[str, torch.Tensor], summary: dict) -> None:
    """Write every per-image array of ``results`` and the ``summary`` (as JSON text under ``summary``) to one
    ``.npz``, atomically."""
    from ddpm.io import atomic_save

    arrays = {k: v.numpy() for k, v in results.items()}
    atomic_save(path, lambda f: np.savez(f, summary=np.str_(json.dumps(summary)), **arrays))


def load_bound_terms(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(terms_bpd [N, T], mse [N, T], prior_bpd [N])`` from a file of :func:`save_bound`; ``ValueError`` naming the
    missing arrays otherwise."""
    with np.load(path) as data:
        missing = [k for k in RATE_DISTORTION_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: not a file of `ddpm eval nll --out`")
        return tuple(data[k] for k in RATE_DISTORTION_KEYS)
