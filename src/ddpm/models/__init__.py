"""Neural networks: the DDPM ``UNet2DModel`` (Diffusers' layout) and the generic ``ModelMixin`` it is built on."""

from ..outputs import BaseOutput
from .blocks import AttnDownBlock2D, AttnUpBlock2D, DownBlock2D, UNetMidBlock2D, UpBlock2D
from .modeling import ModelMixin, WeightsMismatchError, convert_legacy_attention_keys
from .unet import UNet2DModel, UNet2DOutput

__all__ = [
    "AttnDownBlock2D",
    "AttnUpBlock2D",
    "BaseOutput",
    "DownBlock2D",
    "ModelMixin",
    "UNet2DModel",
    "UNet2DOutput",
    "UNetMidBlock2D",
    "UpBlock2D",
    "WeightsMismatchError",
    "convert_legacy_attention_keys",
]
