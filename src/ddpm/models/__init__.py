"""Neural networks: the DDPM ``UNet2DModel`` (Diffusers' layout), the generic ``ModelMixin`` it is built on, and
``FastPaths``, the one speed setting of its forward."""

from ..outputs import BaseOutput
from .blocks import AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D
from .fast_paths import FastPaths
from .modeling import ModelMixin, WeightsMismatchError, convert_legacy_attention_keys
from .unet import UNet2DModel, UNet2DOutput

__all__ = [
    "AttnDownBlock2D",
    "AttnUpBlock2D",
    "BaseOutput",
    "DownBlock2D",
    "FastPaths",
    "ModelMixin",
    "UNet2DModel",
    "UNet2DOutput",
    "UNetMidBlock2D",
    "UpBlock2D",
    "WeightsMismatchError",
    "convert_legacy_attention_keys",
]
