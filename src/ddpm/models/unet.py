"""``UNet2DModel``: the DDPM denoising network, configured and stored exactly as Diffusers' ``UNet2DModel``.

Paper App. B: a U-Net over a Wide ResNet with GroupNorm, 2 residual blocks per resolution, self-attention at 16x16,
and the sinusoidal time embedding added in every residual block. The network predicts epsilon (Eq. 11, 14); it knows
nothing of the noise schedule. ``timestep`` is the scheduler's ``t`` (index convention: :mod:`ddpm.schedulers.common`).

The Google DDPM checkpoints are reproduced by::

    UNet2DModel(sample_size=32, block_out_channels=(128, 256, 256, 256),
                down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6)

(35,746,307 parameters; the 256x256 models use ``block_out_channels=(128, 128, 256, 256, 512, 512)`` with attention at
the fifth level: 113,673,219 parameters.)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..config import register_to_config
from ..outputs import BaseOutput
from .blocks import DOWN_BLOCKS, UP_BLOCKS, Conv2d, UNetMidBlock2D
from .embeddings import TimestepEmbedding, Timesteps
from .fast_paths import FastPaths, resolve_fast_paths
from .modeling import ModelMixin

DOWN_BLOCK_TYPES = tuple(DOWN_BLOCKS)
UP_BLOCK_TYPES = tuple(UP_BLOCKS)
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)


@dataclass
class UNet2DOutput(BaseOutput):
    """Output of :class:`UNet2DModel`: ``sample`` (B, out_channels, H, W), the predicted noise (or noise and
    variance when ``out_channels`` is twice ``in_channels``)."""

    sample: torch.Tensor


def _not_built(key: str, value, allowed) -> NotImplementedError:
    return NotImplementedError(
        f"UNet2DModel: {key}={value!r} is not implemented in ddpm (this library builds the DDPM configurations); "
        f"supported: {allowed}."
    )


class UNet2DModel(ModelMixin):
    r"""The DDPM UNet: ``sample`` (B, C, H, W) and ``timestep`` -> :class:`UNet2DOutput` of the same spatial size.

    The constructor takes Diffusers' ``UNet2DModel`` config keys, in its order and with its defaults, so a Diffusers
    ``config.json`` maps 1:1. Values that select parts this library does not build (class conditioning, Fourier or
    learned time embeddings, skip/cross-attention blocks, activations other than SiLU, ...) raise
    ``NotImplementedError`` naming the key.

    Args:
        sample_size: height and width of the images (int or pair); informational (used by pipelines).
        in_channels / out_channels: image channels in and out (out = 2 * in for a learned variance).
        center_input_sample: map the input with ``2 x - 1`` first.
        time_embedding_type: only ``"positional"`` (sinusoidal).
        time_embedding_dim: width of the time embedding MLP (default ``4 * block_out_channels[0]``).
        freq_shift / flip_sin_to_cos: sinusoid convention; DDPM uses ``1`` / ``False`` (``[sin, cos]``, TF layout).
        down_block_types / up_block_types: per level, ``"DownBlock2D"`` or ``"AttnDownBlock2D"`` (attention after
            every residual block) and ``"UpBlock2D"`` or ``"AttnUpBlock2D"``; ``up_blocks[0]`` is the lowest level.
        mid_block_type: ``"UNetMidBlock2D"`` (res, attention, res) or None.
        block_out_channels: width of each level; layers_per_block: residual blocks per down level (up: + 1).
        mid_block_scale_factor: divides the mid block's residual outputs.
        downsample_padding: 0 pads right/bottom then convolves (the DDPM checkpoints), 1 pads symmetrically.
        downsample_type / upsample_type: only ``"conv"``.
        dropout: dropout in the residual blocks (not in ``AttnDownBlock2D``, as in Diffusers).
        act_fn: ``"silu"`` (``"swish"`` is accepted as its alias).
        attention_head_dim: channels per head; None means one head over all channels (DDPM).
        norm_num_groups / attn_norm_num_groups / norm_eps: GroupNorm groups, the mid attention's groups, epsilon.
        resnet_time_scale_shift: ``"default"`` (add the time embedding) or ``"scale_shift"`` (adaptive GroupNorm).
        add_attention: whether the mid block has its attention.
        class_embed_type / num_class_embeds: must be None (no class conditioning).
        num_train_timesteps: only used by learned time embeddings; kept in the config.

    Speed: :attr:`fast_paths` (a :class:`ddpm.models.FastPaths`, all on by default) chooses memory layouts and
    kernels without changing the function computed; it belongs to this instance (``set_fast_paths``).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        _validate(locals())
        self.sample_size = sample_size
        channels = list(block_out_channels)
        time_embed_dim = time_embedding_dim or channels[0] * 4
        self._center_input_sample = bool(center_input_sample)

        self.conv_in = Conv2d(in_channels, channels[0], kernel_size=3, padding=(1, 1))
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(channels[0], time_embed_dim)
        self.class_embedding = None

        common = {
            "temb_channels": time_embed_dim,
            "groups": norm_num_groups,
            "eps": norm_eps,
            "time_embedding_norm": resnet_time_scale_shift,
            "attention_head_dim": attention_head_dim,
        }
        # Registration order as in Diffusers (down_blocks, up_blocks, mid_block), so state_dict keys come in the
        # same order.
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        out_ch = channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, channels[i]
            self.down_blocks.append(
                DOWN_BLOCKS[block_type](
                    in_ch,
                    out_ch,
                    num_layers=layers_per_block,
                    add_downsample=i < len(channels) - 1,
                    dropout=0.0 if block_type == "AttnDownBlock2D" else dropout,
                    downsample_padding=downsample_padding,
                    **common,
                )
            )

        self.mid_block = None
        if mid_block_type is not None:
            self.mid_block = UNetMidBlock2D(
                channels[-1],
                dropout=dropout,
                output_scale_factor=mid_block_scale_factor,
                attn_groups=attn_norm_num_groups,
                add_attention=add_attention,
                **common,
            )

        reversed_channels = channels[::-1]
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            in_ch = reversed_channels[min(i + 1, len(channels) - 1)]
            self.up_blocks.append(
                UP_BLOCKS[block_type](
                    in_ch,
                    prev_ch,
                    out_ch,
                    num_layers=layers_per_block + 1,
                    add_upsample=i < len(channels) - 1,
                    dropout=dropout,
                    **common,
                )
            )

        self.conv_norm_out = nn.GroupNorm(num_groups=norm_num_groups, num_channels=channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = Conv2d(channels[0], out_channels, kernel_size=3, padding=1)
        self.set_fast_paths(FastPaths())
        # For the shape checks of forward (plain ints: a few Python comparisons per call).
        self._in_channels = int(in_channels)
        self._size_multiple = 2 ** (len(channels) - 1)

    @property
    def fast_paths(self) -> FastPaths:
        """This model's speed setting (:mod:`ddpm.models.fast_paths`); assigning it is :meth:`set_fast_paths`."""
        return self._fast_paths

    @fast_paths.setter
    def fast_paths(self, value: FastPaths) -> None:
        if not isinstance(value, FastPaths):
            raise ValueError(f"fast_paths must be a ddpm.models.FastPaths, got {type(value).__name__}")
        self.set_fast_paths(value)

    @property
    def cpu_channels_last(self) -> bool:
        """Removed switch (it is ``fast_paths.channels_last`` now); reading it still works, setting it raises."""
        return self.fast_paths.channels_last

    @cpu_channels_last.setter
    def cpu_channels_last(self, value) -> None:
        raise AttributeError(
            "cpu_channels_last was replaced by one setting object: use "
            f"set_fast_paths(channels_last={bool(value)}) (see ddpm.models.FastPaths)"
        )

    def set_fast_paths(self, fast_paths: FastPaths | None = None, **changes: bool) -> UNet2DModel:
        """Use ``fast_paths`` (or the current setting) with the switch ``changes``, e.g.
        ``unet.set_fast_paths(channels_last=False)``, in this model and its convolutions only; returns ``self``."""
        value = resolve_fast_paths(getattr(self, "_fast_paths", FastPaths()), fast_paths, **changes)
        self._fast_paths = value
        for module in self.modules():
            if isinstance(module, Conv2d):
                module.fast_paths = value
        return self

    def _check_sample(self, sample) -> None:
        """``TypeError``/``ValueError`` naming the expected and the given shape unless ``sample`` is a [B, C, H, W]
        tensor with the UNet's channels and H, W divisible by its total downsampling. Shape comparisons only."""
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a torch.Tensor of shape [B, C, H, W], got {type(sample).__name__}")
        shape = sample.shape
        m = self._size_multiple
        if len(shape) != 4 or shape[1] != self._in_channels or shape[2] % m or shape[3] % m:
            raise ValueError(
                f"sample has shape {tuple(shape)}; this UNet takes a 4-D batch [B, {self._in_channels}, H, W] "
                f"({self._in_channels} channels) with H and W divisible by {m} (2 to the power of the "
                f"{len(self.down_blocks) - 1} downsampling(s), the number of levels minus one)"
            )

    def _timesteps(self, timestep, batch: int, device: torch.device) -> torch.Tensor:
        if not torch.is_tensor(timestep):
            if not isinstance(timestep, numbers.Real):
                raise TypeError(
                    f"timestep={timestep!r} must be a number or a tensor (a scalar, or 1 or {batch} values), got "
                    f"{type(timestep).__name__}"
                )
            if isinstance(timestep, float) and not -math.inf < timestep < math.inf:  # (a comparison: traceable)
                raise ValueError(f"timestep={timestep!r} must be a finite number")
            # As Diffusers: a Python float is truncated toward zero by the integer conversion.
            return torch.tensor([timestep], dtype=torch.long, device=device).expand(batch)
        if timestep.ndim > 1 or timestep.numel() not in (1, batch):
            raise ValueError(
                f"timestep has shape {tuple(timestep.shape)} for a sample batch of {batch}; allowed: a scalar, or a "
                f"1-d tensor of 1 or {batch} values (one per image)"
            )
        if timestep.device != device:
            timestep = timestep.to(device, non_blocking=True)
        return timestep.reshape(-1).expand(batch)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict the noise in ``sample`` at step ``timestep`` (an int, float, 0-d or 1-d tensor of length 1 or B).

        Returns :class:`UNet2DOutput` (or ``(sample,)`` when ``return_dict=False``).
        """
        if class_labels is not None:
            raise ValueError("class_embedding needs to be initialized in order to use class conditioning")
        self._check_sample(sample)
        # Fast path: oneDNN convolutions run faster on NHWC activations (the output is given back in NCHW).
        nhwc = self._fast_paths.runs_channels_last(sample, self.conv_in.weight)
        if nhwc:
            sample = sample.contiguous(memory_format=torch.channels_last)
        if self._center_input_sample:
            sample = 2 * sample - 1.0

        t = self._timesteps(timestep, sample.shape[0], sample.device)
        t_emb = self.time_proj(t).to(self.time_embedding.linear_1.weight.dtype)
        emb = self.time_embedding(t_emb)

        h = self.conv_in(sample)
        skips = (h,)
        for block in self.down_blocks:
            h, outputs = block(h, emb)
            skips += outputs
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(h, skips[-n:], emb)
            skips = skips[:-n]

        h = self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))
        if nhwc:
            h = h.contiguous()
        if not return_dict:
            return (h,)
        return UNet2DOutput(sample=h)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _validate(args: dict) -> None:
    """Refuse configurations this library does not build (NotImplementedError) or that are inconsistent."""
    down, up = tuple(args["down_block_types"]), tuple(args["up_block_types"])
    channels = tuple(args["block_out_channels"])
    if len(down) != len(up):
        raise ValueError(
            "Must provide the same number of `down_block_types` as `up_block_types`. "
            f"`down_block_types`: {down}. `up_block_types`: {up}."
        )
    if len(channels) != len(down):
        raise ValueError(
            "Must provide the same number of `block_out_channels` as `down_block_types`. "
            f"`block_out_channels`: {channels}. `down_block_types`: {down}."
        )
    if not channels:
        raise ValueError("block_out_channels must not be empty")
    for key in ("in_channels", "out_channels"):
        if not _is_int(args[key]) or args[key] < 1:
            raise ValueError(f"{key}={args[key]!r} must be a positive integer (image channels).")
    if not all(_is_int(c) and c >= 1 for c in channels):
        raise ValueError(f"block_out_channels={channels!r} must hold positive integers (the width of each level).")
    dim = args["time_embedding_dim"]
    if dim is not None and (not _is_int(dim) or dim < 1):
        raise ValueError(f"time_embedding_dim={dim!r} must be None (4 * block_out_channels[0]) or a positive integer.")
    for key, value in (("down_block_types", down), ("up_block_types", up)):
        allowed = DOWN_BLOCK_TYPES if key == "down_block_types" else UP_BLOCK_TYPES
        for v in value:
            if v not in allowed:
                raise _not_built(key, v, allowed)
    checks = (
        ("mid_block_type", MID_BLOCK_TYPES),
        ("time_embedding_type", ("positional",)),
        ("downsample_type", ("conv",)),
        ("upsample_type", ("conv",)),
        ("act_fn", ("silu", "swish")),
        ("resnet_time_scale_shift", ("default", "scale_shift")),
        ("class_embed_type", (None,)),
        ("num_class_embeds", (None,)),
    )
    for key, allowed in checks:
        if args[key] not in allowed:
            raise _not_built(key, args[key], allowed)
    if args["norm_num_groups"] is None:
        raise _not_built("norm_num_groups", None, "an int dividing every block_out_channels entry")
    if not _is_int(args["layers_per_block"]):
        raise _not_built("layers_per_block", args["layers_per_block"], "a positive int (one value for all levels)")
    if args["layers_per_block"] < 1:
        raise ValueError(f"layers_per_block={args['layers_per_block']!r} must be a positive integer")
    groups = args["norm_num_groups"]
    if not _is_int(groups) or groups < 1:
        raise ValueError(
            f"norm_num_groups={groups!r} must be a positive integer dividing every block_out_channels entry"
        )
    for c in channels:
        if c % groups:
            raise ValueError(f"norm_num_groups={groups} must divide every block_out_channels entry, got {c}")
    attn_groups = args["attn_norm_num_groups"]
    if attn_groups is not None and (not _is_int(attn_groups) or attn_groups < 1 or channels[-1] % attn_groups):
        raise ValueError(
            f"attn_norm_num_groups={attn_groups!r} must be None (norm_num_groups) or a positive integer dividing the "
            f"mid block's width block_out_channels[-1]={channels[-1]}"
        )
    head_dim = args["attention_head_dim"]
    if head_dim is not None and (not _is_int(head_dim) or head_dim < 1):
        raise ValueError(f"attention_head_dim={head_dim!r} must be None (one head) or a positive integer")
    eps = args["norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"norm_eps={eps!r} must be a finite number >= 0")
    dropout = args["dropout"]
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"dropout={dropout!r} must be a probability in [0, 1]")
    if args["downsample_padding"] not in (0, 1):
        raise _not_built("downsample_padding", args["downsample_padding"], (0, 1))
    size = args["sample_size"]
    if size is not None:
        sides = size if isinstance(size, (list, tuple)) else (size,)
        if (isinstance(size, (list, tuple)) and len(size) != 2) or not all(_is_int(v) and v >= 1 for v in sides):
            raise ValueError(
                f"sample_size={size!r} is not a valid image size; allowed: None, a positive int or a (height, width) "
                "pair of positive ints."
            )
