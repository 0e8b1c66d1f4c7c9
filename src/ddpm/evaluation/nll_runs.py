"""The variational bound over a whole image set, and the file that keeps its terms.

:func:`bound_over_images` drives :func:`ddpm.evaluation.nll.variational_bound` batch by batch with one generator per
image seeded from ``(seed, index)``, so an image's terms do not depend on the batch it is scored in. The terms are
saved as one ``.npz`` (:func:`save_bound`) that the rate-distortion figure reads back (:func:`load_bound_terms`).
With a work folder (:mod:`ddpm.evaluation.partial`) the terms of each finished batch are kept as they are computed,
so a long run killed midway continues where it stopped.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import torch

#: The arrays the rate-distortion figure needs from a saved bound.
RATE_DISTORTION_KEYS = ("terms_bpd", "mse", "prior_bpd")
#: The per-image arrays of :func:`~ddpm.evaluation.nll.variational_bound`.
BOUND_KEYS = ("total_bpd", "prior_bpd", "decoder_bpd", "terms_bpd", "mse", "eps_mse")


def bound_settings(unet, scheduler, x: torch.Tensor, seed: int, clip_denoised: bool, decoder_cdf: str) -> dict:
    """What the per-image terms depend on (the manifest of a bound run's work folder): the model (hashes), the images
    (a hash of their bytes and their count), the seed, clipping and the decoder."""
    import hashlib

    from ddpm.evaluation.partial import model_fingerprint

    data = x.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype}|{tuple(data.shape)}|".encode())
    digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        **model_fingerprint(unet, scheduler),
        "images": digest.hexdigest(),
        "num_samples": len(x),
        "seed": int(seed),
        "clip_denoised": bool(clip_denoised),
        "decoder_cdf": decoder_cdf,
    }


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
    work_dir: str | os.PathLike | None = None,
    keep_work_dir: bool = False,
) -> dict[str, torch.Tensor]:
    """The bound of every image of ``x`` (uint8 or model-space NCHW), ``batch_size`` images per model call; image
    ``i`` draws its x_t from a generator seeded from ``(seed, i)``. Returns the arrays of
    :func:`~ddpm.evaluation.nll.variational_bound`, concatenated over the batches.

    ``work_dir``: write each finished batch's terms into that folder (:class:`ddpm.evaluation.partial.WorkFolder`),
    so that a killed run called again the same way scores only the images it had not finished; a folder holding a
    run with other settings (model, images, seed, clipping, decoder) is refused naming the setting. Removed at the
    end unless ``keep_work_dir``."""
    from ddpm.evaluation.generate import image_generators
    from ddpm.evaluation.nll import variational_bound

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) == 0:
        raise ValueError("no images to score")
    work = None
    if work_dir is not None:
        from ddpm.evaluation.partial import WorkFolder

        settings = bound_settings(unet, scheduler, x, seed, clip_denoised, decoder_cdf)
        work = WorkFolder(work_dir, settings, prefix="bound").open()
        todo = work.missing(0, len(x))
        done = len(x) - sum(len(r) for r in todo)
        if progress and done:
            print(f"nll: continuing the run in {work.path}: {done}/{len(x)} images done", file=sys.stderr)
    else:
        todo, done = [range(0, len(x))], 0
    parts = []
    for gap in todo:
        for first in range(gap.start, gap.stop, batch_size):
            batch = x[first : min(first + batch_size, gap.stop)]
            result = variational_bound(
                unet,
                scheduler,
                batch,
                generator=image_generators(seed, range(first, first + len(batch))),
                clip_denoised=clip_denoised,
                t_batch=t_batch,
                decoder_cdf=decoder_cdf,
                progress=progress,
            )
            if work is not None:
                work.save(first, {k: v.numpy() for k, v in result.items()})
            else:
                parts.append(result)
            done += len(batch)
            if progress:
                print(f"nll: {done}/{len(x)} images", file=sys.stderr)
    if work is None:
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    results = {k: torch.from_numpy(v) for k, v in work.read(0, len(x), BOUND_KEYS).items()}
    if not keep_work_dir:
        work.remove()
    return results


def save_bound(path: str | os.PathLike, results: dict[str, torch.Tensor], summary: dict) -> None:
    """Write every per-image array of ``results`` and the ``summary`` (as JSON text under ``summary``) to one
    ``.npz``, atomically."""
    from ddpm.io import atomic_save

    arrays = {k: v.numpy() for k, v in results.items()}
    atomic_save(path, lambda f: np.savez(f, summary=np.str_(json.dumps(summary)), **arrays))


def load_bound_terms(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(terms_bpd [N, T], mse [N, T], prior_bpd [N])`` from a file of :func:`save_bound`; ``ValueError`` naming the
    missing arrays otherwise."""
    import zipfile

    wrong = f"not a readable .npz file of `ddpm eval nll --out` ({{}}, {os.path.getsize(path)} bytes)"
    try:
        data = np.load(path)
    except (EOFError, ValueError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        reason = "empty" if os.path.getsize(path) == 0 else (" ".join(str(err).split()) or type(err).__name__)
        raise ValueError(f"{path}: {wrong.format(reason)}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: {wrong.format('a single .npy array, not an .npz archive')}")
    with data:
        missing = [k for k in RATE_DISTORTION_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: not a file of `ddpm eval nll --out`")
        try:
            return tuple(data[k] for k in RATE_DISTORTION_KEYS)
        except (EOFError, ValueError, OSError, zipfile.BadZipFile) as err:
            reason = "truncated or damaged: " + (" ".join(str(err).split()) or type(err).__name__)
            raise ValueError(f"{path}: {wrong.format(reason)}") from None
