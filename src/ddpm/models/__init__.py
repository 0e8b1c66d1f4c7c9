"""Neural networks: the DDPM ``UNet2DModel`` (Diffusers' layout) and the generic ``ModelMixin`` it is built on."""

from ..outputs import BaseOutput
from .modeling import ModelMixin, WeightsMismatchError, convert_legacy_attention_keys
from .unet import UNet2DModel, UNet2DOutput

__all__ = [
    "BaseOutput",
    "ModelMixin",
    "UNet2DModel",
    "UNet2DOutput",
    "WeightsMismatchError",
    "convert_legacy_attention_keys",
]
