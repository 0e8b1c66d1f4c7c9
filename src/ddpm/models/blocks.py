"""Building blocks of the DDPM UNet, with Diffusers' module and parameter names.

Paper App. B: a PixelCNN++-style U-Net of Wide-ResNet blocks with GroupNorm, the sinusoidal time embedding added in
every residual block, and single-head self-attention at the 16x16 resolution. Module names (``norm1``, ``conv1``,
``time_emb_proj``, ``to_q``, ``downsamplers.0.conv``, ...) equal Diffusers' so that its ``state_dict`` loads 1:1.

Tensors are (B, C, H, W), in NCHW or channels-last memory (the UNet's ``FastPaths`` setting picks the layout). The
forwards allocate as little as they can: activations are applied in place on freshly computed tensors, the time
projection and the residual are added in place into the convolution outputs (autograd-safe: those ops do not need the
overwritten values for their gradients), and attention runs through ``F.scaled_dot_product_attention``; its output
projection is fused with the residual add (one batched GEMM accumulating into the residual for NCHW, an in-place add
in token layout for channels-last, where (B, L, C) is already the memory layout).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from .fast_paths import FastPaths


def _silu_(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=True)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, same state_dict keys) that sends mid-sized single-image 3x3 convolutions to
    oneDNN in CPU float32 inference.

    For one image of fewer than 20,480 input values PyTorch picks its im2col kernel over oneDNN. Where it was measured
    (docs/benchmarks.md), oneDNN is faster from 14x14 maps and 16x16 (input x output) channels on, and slower below,
    hence the bounds. Same results up to float rounding; training and other devices and dtypes take the usual path.
    The switch is ``fast_paths.onednn_single_image``: ``fast_paths`` is the setting of the UNet the convolution
    belongs to (its ``set_fast_paths`` hands it down), the defaults for a convolution on its own.
    """

    def __init__(self, *args, fast_paths: FastPaths | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_paths = FastPaths() if fast_paths is None else fast_paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.fast_paths.onednn_single_image
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and x.shape[0] == 1
            and self.kernel_size == (3, 3)
            and self.stride == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and x.shape[2] * x.shape[3] >= 196
            and self.in_channels * self.out_channels >= 256
            and x.numel() <= 20480
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # compiled code picks its own kernels
        ):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return super().forward(x)


class ResnetBlock2D(nn.Module):
    """Wide-ResNet block: ``GN -> SiLU -> conv3x3 -> +temb -> GN -> SiLU -> dropout -> conv3x3`` plus a shortcut.

    ``time_embedding_norm="scale_shift"`` replaces the additive time embedding by ``GN(h) * (1 + scale) + shift``
    (improved-DDPM's adaptive GroupNorm). The shortcut is a 1x1 convolution (with bias) when the width changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scale_shift = time_embedding_norm == "scale_shift"
        self.output_scale_factor = float(output_scale_factor)
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels if self.scale_shift else out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_silu_(self.norm1(x)))
        t = self.time_emb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), scale + 1.0)
        else:
            h = self.norm2(h.add_(t))
        h = self.conv2(self.dropout(_silu_(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        h = h.add_(shortcut)
        if self.output_scale_factor != 1.0:
            h = h.div_(self.output_scale_factor)
        return h


class Attention(nn.Module):
    """Spatial self-attention with a residual connection (Diffusers' ``Attention`` in deprecated-attention-block mode).

    ``GN -> q, k, v (Linear over channels) -> softmax(q k^T / sqrt(head_dim)) v -> to_out.0 -> + x``, then divided by
    ``rescale_output_factor``. ``heads = channels // head_dim``; the DDPM checkpoints use one head of ``channels``.
    ``norm_num_groups=None`` means no GroupNorm (Diffusers' mid block with ``resnet_time_scale_shift != "default"``).
    """

    def __init__(
        self,
        channels: int,
        head_dim: int,
        norm_num_groups: int | None = 32,
        eps: float = 1e-6,
        rescale_output_factor: float = 1.0,
    ):
        super().__init__()
        if head_dim <= 0 or head_dim > channels:
            raise ValueError(f"attention_head_dim must be in [1, {channels}] for {channels} channels, got {head_dim}")
        self.channels = channels
        self.heads = channels // head_dim
        self.head_dim = head_dim
        inner = self.heads * head_dim
        self.rescale_output_factor = float(rescale_output_factor)
        self.group_norm = (
            nn.GroupNorm(norm_num_groups, channels, eps=eps, affine=True) if norm_num_groups is not None else None
        )
        self.to_q = nn.Linear(channels, inner, bias=True)
        self.to_k = nn.Linear(channels, inner, bias=True)
        self.to_v = nn.Linear(channels, inner, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(inner, channels, bias=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        length = height * width
        h = x if self.group_norm is None else self.group_norm(x)
        tokens_layout = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        # (B, C, H, W) -> (B, L, C): a free view for channels-last input, a strided view otherwise (the projections
        # read it without an explicit copy).
        h = h.permute(0, 2, 3, 1).reshape(b, length, c)
        q = self.to_q(h)
        k = self.to_k(h)
        v = self.to_v(h)
        if self.heads == 1:
            o = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        else:
            shape = (b, length, self.heads, self.head_dim)
            o = F.scaled_dot_product_attention(
                q.view(shape).transpose(1, 2), k.view(shape).transpose(1, 2), v.view(shape).transpose(1, 2)
            )
            o = o.transpose(1, 2).reshape(b, length, self.heads * self.head_dim)
        out = self.to_out[0]
        if o.dtype != x.dtype or out.weight.dtype != x.dtype:
            # Mixed precision (autocast): the projection runs in the autocast dtype and the residual add promotes,
            # as an unfused module would; the fused in-place paths below need one dtype throughout.
            y = out(o).transpose(1, 2).reshape(b, c, height, width) + x
        elif tokens_layout:
            # channels-last: (B, L, C) is the memory layout of the result; project, add the residual in place.
            y = out(o).add_(x.permute(0, 2, 3, 1).reshape(b, length, c))
            y = y.view(b, height, width, c).permute(0, 3, 1, 2)
        else:
            # NCHW: residual + bias + W_o @ o^T in one pass, the GEMM accumulating into the (residual + bias) buffer.
            y = (x + out.bias[:, None, None]).reshape(b, c, length)
            y = y.baddbmm_(out.weight.expand(b, -1, -1), o.transpose(1, 2))
            y = y.view(b, c, height, width)
        if self.rescale_output_factor != 1.0:
            y = y.div_(self.rescale_output_factor)
        return y


class Downsample2D(nn.Module):
    """Stride-2 3x3 convolution. ``padding=0`` pads right and bottom by one first (TensorFlow "SAME", as DDPM)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0)
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        if x.device.type == "cpu" and x.is_contiguous() and height * width >= 64:
            # On CPU, nearest x2 of an NCHW tensor as one broadcast copy is faster than upsample_nearest2d
            # (docs/benchmarks.md).
            x = x[:, :, :, None, :, None].expand(b, c, height, 2, width, 2).reshape(b, c, 2 * height, 2 * width)
        else:
            if b >= 64:
                # upsample_nearest on channels-last input fails for large batches (Diffusers issue 984).
                x = x.contiguous()
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


def _resnet_layers(in_channels: list[int], out_channels: int, temb_channels: int, **kwargs) -> nn.ModuleList:
    """One ``ResnetBlock2D(c, out_channels, temb_channels, **kwargs)`` per input width ``c``, in order."""
    return nn.ModuleList([ResnetBlock2D(c, out_channels, temb_channels, **kwargs) for c in in_channels])


def _attention_layers(
    with_attention: bool, num_layers: int, channels: int, head_dim: int | None, groups: int, eps: float
) -> nn.ModuleList | None:
    """``num_layers`` attention layers of ``channels`` (one head when ``head_dim`` is None), or None without."""
    if not with_attention:
        return None
    return nn.ModuleList([Attention(channels, head_dim or channels, groups, eps) for _ in range(num_layers)])


class _Block(nn.Module):
    """Shared gradient-checkpointing switch and layer loop of the down, mid and up blocks."""

    gradient_checkpointing = False
    #: Whether each residual block is followed by an attention layer (``attentions[i]``).
    _with_attention = False

    def _layer(self, i: int, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.resnets[i](h, temb)
        if self._with_attention:
            h = self.attentions[i](h)
        return h

    def _run_layer(self, i: int, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._layer, i, h, temb, use_reentrant=False)
        return self._layer(i, h, temb)


class _DownBlock(_Block):
    """``num_layers`` residual blocks (each followed by attention in :class:`AttnDownBlock2D`) then a downsampler.

    Returns the block output and every intermediate output (the skip connections of the up path).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_downsample: bool,
        groups: int,
        eps: float,
        dropout: float,
        time_embedding_norm: str,
        downsample_padding: int,
        attention_head_dim: int | None = None,
    ):
        super().__init__()
        if self._with_attention:
            self.attentions = _attention_layers(True, num_layers, out_channels, attention_head_dim, groups, eps)
        self.resnets = _resnet_layers(
            [in_channels] + [out_channels] * (num_layers - 1),
            out_channels,
            temb_channels,
            groups=groups,
            eps=eps,
            dropout=dropout,
            time_embedding_norm=time_embedding_norm,
        )
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, downsample_padding)]) if add_downsample else None

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        outputs = ()
        for i in range(len(self.resnets)):
            h = self._run_layer(i, h, temb)
            outputs += (h,)
        if self.downsamplers is not None:
            h = self.downsamplers[0](h)
            outputs += (h,)
        return h, outputs


class DownBlock2D(_DownBlock):
    """Diffusers' ``DownBlock2D``: residual blocks then a downsampler (children ``resnets``, ``downsamplers``)."""


class AttnDownBlock2D(_DownBlock):
    """Diffusers' ``AttnDownBlock2D``: each residual block followed by self-attention, then a downsampler (children
    ``attentions``, ``resnets``, ``downsamplers``). As in Diffusers, the UNet gives its residual blocks no dropout
    (Diffusers' ``get_down_block`` does not pass ``dropout`` to ``AttnDownBlock2D``)."""

    _with_attention = True


class _UpBlock(_Block):
    """``num_layers`` residual blocks on ``cat([h, skip])`` (each followed by attention in :class:`AttnUpBlock2D`),
    then an upsampler. Skips are consumed from the end of ``skips``."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_upsample: bool,
        groups: int,
        eps: float,
        dropout: float,
        time_embedding_norm: str,
        attention_head_dim: int | None = None,
    ):
        super().__init__()
        if self._with_attention:
            self.attentions = _attention_layers(True, num_layers, out_channels, attention_head_dim, groups, eps)
        # Layer i sees the previous output (the block below's for i = 0) concatenated with one skip connection.
        previous = [prev_output_channels] + [out_channels] * (num_layers - 1)
        skips = [out_channels] * (num_layers - 1) + [in_channels]
        self.resnets = _resnet_layers(
            [a + b for a, b in zip(previous, skips)],
            out_channels,
            temb_channels,
            groups=groups,
            eps=eps,
            dropout=dropout,
            time_embedding_norm=time_embedding_norm,
        )
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, h: torch.Tensor, skips: tuple[torch.Tensor, ...], temb: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.resnets)):
            h = self._run_layer(i, torch.cat([h, skips[-1 - i]], dim=1), temb)
        if self.upsamplers is not None:
            h = self.upsamplers[0](h)
        return h


class UpBlock2D(_UpBlock):
    """Diffusers' ``UpBlock2D``: residual blocks on the skip connections, then an upsampler (children ``resnets``,
    ``upsamplers``)."""


class AttnUpBlock2D(_UpBlock):
    """Diffusers' ``AttnUpBlock2D``: each residual block followed by self-attention, then an upsampler (children
    ``attentions``, ``resnets``, ``upsamplers``)."""

    _with_attention = True


#: Block classes by the names used in ``down_block_types`` / ``up_block_types``.
DOWN_BLOCKS = {"DownBlock2D": DownBlock2D, "AttnDownBlock2D": AttnDownBlock2D}
UP_BLOCKS = {"UpBlock2D": UpBlock2D, "AttnUpBlock2D": AttnUpBlock2D}


class UNetMidBlock2D(_Block):
    """``resnets.0 -> attentions.0 -> resnets.1`` at the lowest resolution.

    Attention GroupNorm groups: ``attn_groups``, or ``resnet_groups`` when it is None and the time embedding is
    additive, or no GroupNorm at all otherwise (Diffusers' rule). ``output_scale_factor`` divides every residual output.
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        dropout: float,
        time_embedding_norm: str,
        output_scale_factor: float,
        attention_head_dim: int | None,
        attn_groups: int | None,
        add_attention: bool,
    ):
        super().__init__()
        if attn_groups is None and time_embedding_norm == "default":
            attn_groups = groups
        self.add_attention = add_attention
        self.attentions = nn.ModuleList(
            [
                Attention(
                    channels,
                    attention_head_dim or channels,
                    attn_groups,
                    eps,
                    rescale_output_factor=output_scale_factor,
                )
            ]
            if add_attention
            else [None]
        )
        self.resnets = _resnet_layers(
            [channels, channels],
            channels,
            temb_channels,
            groups=groups,
            eps=eps,
            dropout=dropout,
            time_embedding_norm=time_embedding_norm,
            output_scale_factor=output_scale_factor,
        )

    def _layer(self, i: int, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # layer 0: resnets.0 ; layer 1: attentions.0 then resnets.1
        if i == 1 and self.attentions[0] is not None:
            h = self.attentions[0](h)
        return self.resnets[i](h, temb)

    def forward(self, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self._run_layer(0, h, temb)
        return self._run_layer(1, h, temb)
