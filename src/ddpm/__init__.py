"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) in PyTorch.

The public API mirrors Hugging Face Diffusers' DDPM parts (``DDPMScheduler``, ``UNet2DModel``, ``DDPMPipeline``) and
their file format. Names are imported lazily so that ``import ddpm`` and the ``ddpm`` command start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "DDPMScheduler": "ddpm.scheduler",
    "DDPMSchedulerOutput": "ddpm.scheduler",
    "UNet2DModel": "ddpm.models",
    "UNet2DOutput": "ddpm.models",
    "DDPMPipeline": "ddpm.pipeline",
    "ImagePipelineOutput": "ddpm.pipeline",
}

__all__ = [*sorted(_LAZY), "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from .models import UNet2DModel, UNet2DOutput  # noqa: F401
    from .pipeline import DDPMPipeline, ImagePipelineOutput  # noqa: F401
    from .scheduler import DDPMScheduler, DDPMSchedulerOutput  # noqa: F401


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ddpm' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
