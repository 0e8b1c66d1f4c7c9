"""The diffusion math: the noise schedulers of the DDPM family (no ``nn.Module`` here).

* :class:`DDPMScheduler`: ancestral sampling of Ho et al. 2020 (Algorithm 2), the forward process and the
  variational-bound terms (``schedulers/ddpm.py``).
* :class:`DDIMScheduler`: Song et al. 2021's non-Markovian sampler, ``eta`` from deterministic (0) to DDPM-like (1).
* :class:`DPMSolverMultistepScheduler`: DPM-Solver++ (Lu et al. 2022), multistep orders 1-3, ODE and SDE forms.
* :class:`AnalyticDPMScheduler`: DDPM or DDIM steps with Analytic-DPM's optimal variance (Bao et al. 2022), from
  the model's moment table (:class:`AnalyticMoments`, ``ddpm analytic-dpm``).

Samplers by name (``ddpm``, ``ddim``, ``dpm-solver++``, ``analytic-ddpm``, ``analytic-ddim``): :mod:`.samplers`.

All take Diffusers' constructor arguments and read and write its ``scheduler_config.json``, so
``DDIMScheduler.from_config(pipe.scheduler.config)`` swaps a sampler into a DDPM pipeline as in Diffusers.
The vocabularies (variance, prediction, spacing) and what the family shares live in :mod:`ddpm.schedulers.common`;
the beta schedules and the likelihood building blocks in :mod:`ddpm.schedulers.diffusion_math`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes as _lazy_attributes

_LAZY = {
    "DDPMScheduler": "ddpm.schedulers.ddpm",
    "DDPMSchedulerOutput": "ddpm.schedulers.ddpm",
    "DDIMScheduler": "ddpm.schedulers.ddim",
    "DDIMSchedulerOutput": "ddpm.schedulers.ddim",
    "DPMSolverMultistepScheduler": "ddpm.schedulers.dpm_solver",
    "SchedulerOutput": "ddpm.schedulers.dpm_solver",
    "AnalyticDPMScheduler": "ddpm.schedulers.analytic",
    "AnalyticMoments": "ddpm.schedulers.analytic",
    "SchedulerMixin": "ddpm.schedulers.common",
    "VARIANCE_TYPES": "ddpm.schedulers.vocabulary",
    "LEARNED_VARIANCE_TYPES": "ddpm.schedulers.vocabulary",
    "PREDICTION_TYPES": "ddpm.schedulers.vocabulary",
    "TIMESTEP_SPACINGS": "ddpm.schedulers.vocabulary",
    "SAMPLERS": "ddpm.schedulers.vocabulary",
    "BETA_SCHEDULES": "ddpm.schedulers.diffusion_math",
}

#: The scheduler classes of the library by class name (the names ``model_index.json`` records).
SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "AnalyticDPMScheduler")

__all__ = [*sorted(_LAZY), "SCHEDULER_CLASSES", "scheduler_class"]


def scheduler_class(name: str) -> type:
    """The scheduler class called ``name`` (one of :data:`SCHEDULER_CLASSES`), or ``ValueError`` naming them."""
    if name not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown scheduler class {name!r}; ddpm has: {', '.join(SCHEDULER_CLASSES)}")
    return globals()[name] if name in globals() else __getattr__(name)


if TYPE_CHECKING:  # pragma: no cover
    from .analytic import AnalyticDPMScheduler, AnalyticMoments  # noqa: F401
    from .common import SchedulerMixin  # noqa: F401
    from .ddim import DDIMScheduler, DDIMSchedulerOutput  # noqa: F401
    from .ddpm import DDPMScheduler, DDPMSchedulerOutput  # noqa: F401
    from .diffusion_math import BETA_SCHEDULES  # noqa: F401
    from .dpm_solver import DPMSolverMultistepScheduler, SchedulerOutput  # noqa: F401
    from .vocabulary import (  # noqa: F401
        LEARNED_VARIANCE_TYPES,
        PREDICTION_TYPES,
        SAMPLERS,
        TIMESTEP_SPACINGS,
        VARIANCE_TYPES,
    )

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())
