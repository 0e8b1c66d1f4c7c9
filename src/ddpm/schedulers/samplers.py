"""Samplers by name: which scheduler each name of :data:`~ddpm.schedulers.vocabulary.SAMPLERS` runs, built from a
model's scheduler config.

A DDPM model is trained once and can be sampled with any of these (Diffusers' way of swapping a scheduler into a
DDPM pipeline, ``Other.from_config(pipe.scheduler.config)``):

==================  ======================================  ==========================================
name                scheduler                               what it is
==================  ======================================  ==========================================
``ddpm``            :class:`DDPMScheduler`                  ancestral sampling, Ho et al. 2020, Alg. 2
``ddim``            :class:`DDIMScheduler`                  Song et al. 2021; ``eta`` 0 (deterministic)..1
``dpm-solver++``    :class:`DPMSolverMultistepScheduler`    Lu et al. 2022, 2nd-order multistep ODE solver;
                                                            x0 clipped as the model's ``clip_sample`` asks
``analytic-ddpm``   :class:`AnalyticDPMScheduler` (ddpm)    Bao et al. 2022: DDPM with the optimal variance
``analytic-ddim``   :class:`AnalyticDPMScheduler` (ddim)    Bao et al. 2022: DDIM with the optimal variance
==================  ======================================  ==========================================

The Analytic-DPM samplers need the model's moment table (``analytic_dpm.json`` in its folder, made once by
``ddpm analytic-dpm``).
"""

from __future__ import annotations

import math
from typing import Any

from .vocabulary import SAMPLERS

#: Samplers whose step takes ``eta`` (the DDIM family: 0 is deterministic, 1 is DDPM-like).
ETA_SAMPLERS = ("ddim", "analytic-ddim")
#: Samplers that need an Analytic-DPM moment table.
ANALYTIC_SAMPLERS = ("analytic-ddpm", "analytic-ddim")
#: Steps a sampler runs when neither the user nor the model's ``ddpm.json`` says: the full chain for DDPM (Diffusers'
#: default), Diffusers' pipeline default for DDIM (50), and the published sweet spots of the few-step samplers.
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpm-solver++": 25, "analytic-ddpm": 100, "analytic-ddim": 50}


def check_sampler(name: Any) -> str:
    """``name`` if it is a known sampler, else ``ValueError`` naming the allowed ones."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not supported; allowed: {', '.join(repr(s) for s in SAMPLERS)}.")
    return name


def check_eta(sampler: str, eta: Any) -> float | None:
    """``eta`` as a float for the DDIM-family samplers (None: their default 0), ``ValueError`` when it is negative,
    not finite, or given to a sampler that has no eta."""
    if eta is None:
        return None
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta={eta!r} must be a finite number >= 0 (0: deterministic DDIM, 1: DDPM-like noise).")
    if sampler not in ETA_SAMPLERS:
        raise ValueError(f"eta applies to the samplers {', '.join(ETA_SAMPLERS)} only, not to {sampler!r}.")
    return float(eta)


def make_scheduler(sampler: str, config, moments=None, **overrides):
    """The scheduler that runs ``sampler``, built from a model's scheduler ``config`` (any scheduler's config: the
    keys the target does not take are dropped, as ``from_config`` does). ``moments``: the Analytic-DPM table, needed
    by the ``analytic-*`` samplers (``ValueError`` without it). ``overrides`` are passed to ``from_config``."""
    check_sampler(sampler)
    config = dict(config)
    for key in ("_class_name", "_diffusers_version"):
        config.pop(key, None)
    if sampler == "ddpm":
        from .ddpm import DDPMScheduler

        return DDPMScheduler.from_config(config, **overrides)
    if sampler == "ddim":
        from .ddim import DDIMScheduler

        return DDIMScheduler.from_config(config, **overrides)
    if sampler == "dpm-solver++":
        from .dpm_solver import DPMSolverMultistepScheduler

        overrides.setdefault("algorithm_type", "dpmsolver++")
        if config.get("clip_sample") and not config.get("thresholding") and config.get("clip_sample_range", 1.0) == 1:
            # The model's DDPM config clips x0 to [-1, 1]; DPM-Solver has no clip_sample, but its thresholding with
            # sample_max_value 1 is exactly that clip (s = clamp(quantile, 1, 1) = 1). Without it the solver
            # integrates out-of-range x0 predictions (measured on the bundled model: docs/samplers.md).
            overrides.setdefault("thresholding", True)
            overrides.setdefault("sample_max_value", 1.0)
        return DPMSolverMultistepScheduler.from_config(config, **overrides)
    from .analytic import AnalyticDPMScheduler

    if moments is None:
        raise ValueError(
            f"sampler {sampler!r} needs the model's Analytic-DPM moment table (analytic_dpm.json in the model "
            "folder); compute it once with: ddpm analytic-dpm --model FOLDER --data TRAINING_IMAGES"
        )
    overrides.setdefault("mean_type", sampler.removeprefix("analytic-"))
    scheduler = AnalyticDPMScheduler.from_config(config, **overrides)
    scheduler.set_moments(moments)
    return scheduler


def sampler_name(scheduler) -> str | None:
    """The sampler name a scheduler object runs (the inverse of :func:`make_scheduler`), or None for a foreign one."""
    name = type(scheduler).__name__
    if name == "DDPMScheduler":
        return "ddpm"
    if name == "DDIMScheduler":
        return "ddim"
    if name == "DPMSolverMultistepScheduler":
        return "dpm-solver++" if scheduler.config.get("algorithm_type") == "dpmsolver++" else None
    if name == "AnalyticDPMScheduler":
        return f"analytic-{scheduler.config.get('mean_type')}"
    return None
