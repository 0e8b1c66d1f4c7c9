"""Floating-point operation count of one ``UNet2DModel`` forward, computed from the config (no forward is run); the
benchmarks use it for achieved TFLOP/s.

Convention (the one that gives the usual "11.8 GFLOP" for the CIFAR-10 DDPM model at 32x32):

* one multiply-add = 2 FLOPs;
* counted: every convolution (3x3, 1x1 shortcuts, the stride-2 downsamplers, the convolutions after upsampling) and
  the two attention products ``Q K^T`` and ``softmax(.) V``;
* not counted: the attention's q/k/v/out projections and the time-embedding MLP (``include_linear=True`` adds
  them), biases, GroupNorm, activations, softmax, additions and concatenations.

For the CIFAR-10 config: convolutions 11.423 GFLOP + attention products 0.336 GFLOP = 11.759 GFLOP per image. With
``include_linear=True`` it is 12.44 GFLOP (the projections cost 0.679 GFLOP; at 16x16 with 256 channels they happen to
cost exactly as much in multiply-adds as the attention products, L = C = 256).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _conv_out(size: int, kernel: int, stride: int, padding_total: int) -> int:
    return (size + padding_total - kernel) // stride + 1


def unet_forward_flops(
    model_or_config: Any,
    batch_size: int = 1,
    resolution: int | tuple[int, int] | None = None,
    include_linear: bool = False,
) -> int:
    """FLOPs of one forward of ``batch_size`` images at ``resolution`` (default: the config's ``sample_size``).

    ``model_or_config``: a ``UNet2DModel`` (ours or Diffusers'), its ``config``, or a plain dict of config keys.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(config, Mapping):
        raise TypeError(f"expected a UNet2DModel or its config, got {type(model_or_config).__name__}")
    from ddpm.models.unet import UNet2DModel

    defaults = {k: p.default for k, p in UNet2DModel._init_parameters().items()}
    cfg = {**defaults, **{k: v for k, v in config.items() if not str(k).startswith("_")}}

    if resolution is None:
        resolution = cfg["sample_size"]
    if resolution is None:
        raise ValueError("resolution is needed: the config has no sample_size")
    height, width = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)

    channels = list(cfg["block_out_channels"])
    layers = int(cfg["layers_per_block"])
    head_dim_cfg = cfg["attention_head_dim"]
    in_channels, out_channels = cfg["in_channels"], cfg["out_channels"]
    time_dim = cfg["time_embedding_dim"] or 4 * channels[0]
    pad = cfg["downsample_padding"]

    macs = 0  # multiply-adds per image

    def conv(cin: int, cout: int, k: int, h: int, w: int) -> None:
        nonlocal macs
        macs += cin * cout * k * k * h * w

    def resnet(cin: int, cout: int, h: int, w: int) -> None:
        nonlocal macs
        conv(cin, cout, 3, h, w)
        conv(cout, cout, 3, h, w)
        if cin != cout:
            conv(cin, cout, 1, h, w)
        if include_linear:
            scale_shift = cfg["resnet_time_scale_shift"] == "scale_shift"
            macs += time_dim * cout * (2 if scale_shift else 1)

    def attention(c: int, h: int, w: int) -> None:
        nonlocal macs
        head_dim = head_dim_cfg or c
        inner = (c // head_dim) * head_dim
        length = h * w
        macs += 2 * length * length * inner  # Q K^T and softmax(.) V over all heads
        if include_linear:
            macs += 4 * length * c * inner  # to_q, to_k, to_v, to_out.0

    h, w = height, width
    conv(in_channels, channels[0], 3, h, w)
    if include_linear:
        macs += channels[0] * time_dim + time_dim * time_dim

    sizes = [(h, w)]  # resolution at each level
    prev = channels[0]
    for i, block_type in enumerate(cfg["down_block_types"]):
        out = channels[i]
        for j in range(layers):
            resnet(prev if j == 0 else out, out, h, w)
            if block_type == "AttnDownBlock2D":
                attention(out, h, w)
        prev = out
        if i < len(channels) - 1:
            total_pad = 1 if pad == 0 else 2 * pad
            h, w = _conv_out(h, 3, 2, total_pad), _conv_out(w, 3, 2, total_pad)
            conv(out, out, 3, h, w)
            sizes.append((h, w))

    if cfg["mid_block_type"] is not None:
        c = channels[-1]
        resnet(c, c, h, w)
        if cfg["add_attention"]:
            attention(c, h, w)
        resnet(c, c, h, w)

    reversed_channels = channels[::-1]
    out = reversed_channels[0]
    for i, block_type in enumerate(cfg["up_block_types"]):
        prev_out, out = out, reversed_channels[i]
        skip_in = reversed_channels[min(i + 1, len(channels) - 1)]
        for j in range(layers + 1):
            skip = skip_in if j == layers else out
            resnet((prev_out if j == 0 else out) + skip, out, h, w)
            if block_type == "AttnUpBlock2D":
                attention(out, h, w)
        if i < len(channels) - 1:
            h, w = 2 * h, 2 * w
            conv(out, out, 3, h, w)

    conv(channels[0], out_channels, 3, h, w)
    return 2 * macs * int(batch_size)
