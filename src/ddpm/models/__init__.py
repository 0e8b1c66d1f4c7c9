"""Neural networks: the DDPM ``UNet2DModel`` (Diffusers' layout), the generic ``ModelMixin`` it is built on, and
``FastPaths``, the one speed setting of its forward."""

from ..outputs import BaseOutput
from .fast_paths import FastPaths
from .modeling import ModelMixin, WeightsMismatchError, convert_legacy_attention_keys
from .unet import UNet2DModel, UNet2DOutput

__all__ = [
    "BaseOutput",
    "FastPaths",
    "ModelMixin",
    "UNet2DModel",
    "UNet2DOutput",
    "WeightsMismatchError",
    "convert_legacy_attention_keys",
]
