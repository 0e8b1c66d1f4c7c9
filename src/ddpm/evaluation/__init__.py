"""The paper's evaluation: FID on real Inception features, the variational bound in bits/dim, the Inception Score,
generation at scale and the paper's figures. See docs/evaluation.md for the protocol.

Names are imported lazily (scipy and the Inception network are only needed by FID).
"""

from __future__ import annotations

from .._lazy import lazy_attributes as _lazy_attributes

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
    "bound_over_images": "ddpm.evaluation.nll_runs",
    "save_bound": "ddpm.evaluation.nll_runs",
    "load_bound_terms": "ddpm.evaluation.nll_runs",
    # which images an evaluation works on
    "model_images": "ddpm.evaluation.sources",
    "source_images": "ddpm.evaluation.sources",
    # generation
    "generate_images": "ddpm.evaluation.generate",
    "image_generators": "ddpm.evaluation.generate",
    "reverse_process": "ddpm.evaluation.generate",
    # figures
    "progressive_generation": "ddpm.evaluation.figures",
    "shared_latent_samples": "ddpm.evaluation.figures",
    "interpolate": "ddpm.evaluation.figures",
    "rate_distortion": "ddpm.evaluation.figures",
    "paper_timesteps": "ddpm.evaluation.figure_rows",
    "interpolation_rows": "ddpm.evaluation.figure_rows",
    "shared_latent_rows": "ddpm.evaluation.figure_rows",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())
