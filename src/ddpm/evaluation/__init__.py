"""The paper's evaluation: FID on real Inception features, the variational bound in bits/dim, the Inception Score,
generation at scale and the paper's figures. See docs/evaluation.md for the protocol.

Names are imported lazily (scipy and the Inception network are only needed by FID).
"""

from __future__ import annotations

import importlib

_LAZY = {
    # FID
    "FeatureStatistics": "ddpm.evaluation.fid",
    "RunningStatistics": "ddpm.evaluation.fid",
    "compute_statistics": "ddpm.evaluation.fid",
    "frechet_distance": "ddpm.evaluation.fid",
    "fid": "ddpm.evaluation.fid",
    "fid_from_statistics": "ddpm.evaluation.fid",
    "source_statistics": "ddpm.evaluation.fid",
    "reference_statistics": "ddpm.evaluation.fid",
    "InceptionFeatureExtractor": "ddpm.evaluation.inception",
    "InceptionNotFoundError": "ddpm.evaluation.inception",
    "find_inception": "ddpm.evaluation.inception",
    "inception_available": "ddpm.evaluation.inception",
    # Inception Score
    "inception_score": "ddpm.evaluation.inception_score",
    "InceptionLogits": "ddpm.evaluation.inception_score",
    # NLL
    "variational_bound": "ddpm.evaluation.nll",
    "bits_per_dim": "ddpm.evaluation.nll",
    # generation
    "generate_images": "ddpm.evaluation.generate",
    "image_generators": "ddpm.evaluation.generate",
    "reverse_process": "ddpm.evaluation.generate",
    # figures
    "progressive_generation": "ddpm.evaluation.figures",
    "shared_latent_samples": "ddpm.evaluation.figures",
    "interpolate": "ddpm.evaluation.figures",
    "rate_distortion": "ddpm.evaluation.figures",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpm.evaluation' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
