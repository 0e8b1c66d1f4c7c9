"""Kept for code written against earlier releases: ``ddpm.scheduler`` is now :mod:`ddpm.schedulers.ddpm`."""

from .schedulers.ddpm import DDPMScheduler, DDPMSchedulerOutput
from .schedulers.diffusion_math import discretized_gaussian_log_likelihood, normal_kl
from .schedulers.vocabulary import LEARNED_VARIANCE_TYPES, PREDICTION_TYPES, TIMESTEP_SPACINGS, VARIANCE_TYPES

__all__ = [
    "LEARNED_VARIANCE_TYPES",
    "PREDICTION_TYPES",
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "DDPMScheduler",
    "DDPMSchedulerOutput",
    "discretized_gaussian_log_likelihood",
    "normal_kl",
]
