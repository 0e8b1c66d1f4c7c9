"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) in PyTorch.

The public API mirrors Hugging Face Diffusers' DDPM parts (``DDPMScheduler``, ``UNet2DModel``, ``DDPMPipeline``) and
their file format. Names are imported lazily so that ``import ddpm`` and the ``ddpm`` command start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes as _lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "DDPMScheduler": "ddpm.schedulers.ddpm",
    "DDPMSchedulerOutput": "ddpm.schedulers.ddpm",
    "DDIMScheduler": "ddpm.schedulers.ddim",
    "DPMSolverMultistepScheduler": "ddpm.schedulers.dpm_solver",
    "UNet2DModel": "ddpm.models",
    "UNet2DOutput": "ddpm.models",
    "DDPMPipeline": "ddpm.pipeline",
    "DDIMPipeline": "ddpm.pipeline",
    "ImagePipelineOutput": "ddpm.pipeline",
}

__all__ = [*sorted(_LAZY), "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .models import UNet2DModel, UNet2DOutput  # noqa: F401
    from .pipeline import DDIMPipeline, DDPMPipeline, ImagePipelineOutput  # noqa: F401
    from .schedulers import DDIMScheduler, DDPMScheduler, DDPMSchedulerOutput, DPMSolverMultistepScheduler  # noqa: F401

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())
