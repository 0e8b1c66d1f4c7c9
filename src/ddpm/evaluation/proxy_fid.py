"""A proxy FID for the curve during training (``ddpm train --fid-every N``).

Every N steps rank 0 draws ``num_samples`` images from the EMA weights with a few-step sampler (DDIM, 25 steps by
default; images ``0..n-1`` of a fixed seed, so the points of the curve differ only by the weights), computes their
Inception-v3 pool3 statistics (:mod:`ddpm.evaluation.inception`) and the Fréchet distance to reference statistics
given as a file (:class:`~ddpm.evaluation.fid.FeatureStatistics`; ``ddpm eval fid SOURCE REFERENCE --ref-stats FILE``
saves them).

It is a *proxy*: with n of a few hundred the estimate is biased upwards (FID's bias falls roughly like 1/n) and a
few-step sampler is not the model's best, so the numbers track progress within one run and are not comparable with a
50k-image FID or across settings. Each value is logged with its n, sampler, steps and reference file.

The trainer calls a :class:`ProxyFID` as ``evaluator(pipeline, step)``; training does not import evaluation, so
``ddpm.cli.train`` (or your script) builds it and hands it to ``Trainer(config, evaluator=...)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ddpm.evaluation.fid import FeatureStatistics, compute_statistics, fid_from_statistics
from ddpm.evaluation.generate import generate_images

logger = logging.getLogger(__name__)


class ProxyFID:
    """``ProxyFID(ref_stats, ...)(pipeline, step)`` -> ``{"proxy_fid": value, "proxy_fid_num_samples": n, ...}``.

    ``extractor`` (images uint8 NHWC -> ``[n, D]`` features) defaults to the real FID Inception network (the file is
    looked for at once, loaded at the first call on the pipeline's device); the reference statistics must have the
    same D.
    """

    def __init__(
        self,
        ref_stats: str | os.PathLike,
        num_samples: int = 500,
        num_inference_steps: int = 25,
        sampler: str = "ddim",
        seed: int = 0,
        batch_size: int = 64,
        inception: str | os.PathLike | None = None,
        extractor: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if num_samples < 2:
            raise ValueError(f"num_samples={num_samples}: a covariance needs at least 2 images")
        self.ref_path = Path(ref_stats)
        try:
            self.ref = FeatureStatistics.load(self.ref_path)
        except FileNotFoundError:
            raise ValueError(
                f"fid_ref_stats={os.fspath(ref_stats)!r}: no such file "
                "(ddpm eval fid SOURCE REFERENCE --ref-stats FILE makes one)"
            ) from None
        except (OSError, ValueError) as err:
            raise ValueError(f"fid_ref_stats={os.fspath(ref_stats)!r}: not a statistics .npz ({err})") from None
        self.num_samples = int(num_samples)
        self.num_inference_steps = int(num_inference_steps)
        self.sampler = sampler
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        if extractor is None:
            from ddpm.evaluation.inception import find_inception

            find_inception(inception)  # InceptionNotFoundError (how to get it) before any training
        self.inception = inception
        self.extractor = extractor

    def describe(self) -> str:
        return (
            f"proxy FID: {self.num_samples} images, {self.sampler} {self.num_inference_steps} steps, "
            f"reference statistics {self.ref_path} (n={self.ref.n}); not comparable with a 50k FID"
        )

    def __call__(self, pipeline, step: int) -> dict:
        if self.extractor is None:
            from ddpm.evaluation.inception import InceptionFeatureExtractor

            device = next(pipeline.unet.parameters()).device
            self.extractor = InceptionFeatureExtractor(self.inception, device=device)
        pipeline.set_sampler(self.sampler)
        images = generate_images(
            pipeline, self.num_samples, seed=self.seed, batch_size=self.batch_size,
            num_inference_steps=self.num_inference_steps,
        )  # fmt: skip
        features = np.asarray(self.extractor(images), dtype=np.float64)
        if features.shape[1] != self.ref.mu.shape[0]:
            raise ValueError(
                f"the features have {features.shape[1]} dimensions, the reference statistics {self.ref_path} "
                f"{self.ref.mu.shape[0]}"
            )
        # eigh: the same trace as sqrtm to round-off, fast and quiet for the singular covariances of n < D images
        value = fid_from_statistics(compute_statistics(features), self.ref, method="eigh")
        logger.info("step %d: proxy FID %.3f (%s)", step, value, self.describe())
        return {
            "proxy_fid": float(value),
            "proxy_fid_num_samples": self.num_samples,
            "proxy_fid_sampler": self.sampler,
            "proxy_fid_steps": self.num_inference_steps,
            "proxy_fid_ref_stats": str(self.ref_path),
        }
