"""Timestep embeddings of the DDPM UNet.

The sinusoidal embedding is the Transformer's position encoding applied to the diffusion step ``t`` (paper App. B:
"the Transformer sinusoidal position embedding"), followed by a two-layer MLP (``TimestepEmbedding``).

``t`` is the scheduler's timestep (index convention: :mod:`ddpm.schedulers.common`), exactly the value Diffusers
feeds to the network.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def timestep_frequencies(half_dim: int, freq_shift: float = 0.0, max_period: float = 10000.0) -> torch.Tensor:
    """The ``half_dim`` angular frequencies ``exp(-log(max_period) * i / (half_dim - freq_shift))``, float32.

    Computed with the same float32 operations, in the same order, as Diffusers' ``get_timestep_embedding`` so the
    table is bit-identical. ``freq_shift=1`` is the original TF DDPM convention (denominator ``half_dim - 1``).
    """
    exponent = -math.log(max_period) * torch.arange(0, half_dim, dtype=torch.float32)
    exponent = exponent / (half_dim - freq_shift)
    return torch.exp(exponent)


def get_timestep_embedding(
    timesteps: torch.Tensor,
    embedding_dim: int,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal embedding of a 1-d tensor of timesteps, shape ``(N, embedding_dim)``, float32.

    Layout ``[sin, cos]`` (``[cos, sin]`` when ``flip_sin_to_cos``), a zero column appended for an odd dimension.
    A functional form of :class:`Timesteps` for use outside the model.
    """
    if timesteps.ndim != 1:
        raise ValueError(f"timesteps should be a 1-d tensor, got shape {tuple(timesteps.shape)}")
    half = embedding_dim // 2
    freqs = timestep_frequencies(half, freq_shift, max_period).to(timesteps.device)
    return _sinusoid(timesteps, freqs, embedding_dim, flip_sin_to_cos)


def _sinusoid(timesteps: torch.Tensor, freqs: torch.Tensor, embedding_dim: int, flip_sin_to_cos: bool) -> torch.Tensor:
    args = timesteps[:, None].float() * freqs[None, :]
    parts = [torch.cos(args), torch.sin(args)] if flip_sin_to_cos else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    if embedding_dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal projection of timesteps (Diffusers' ``Timesteps`` with ``scale=1``).

    The frequency table is precomputed once as a non-persistent buffer (so the state_dict has no extra key) and is
    kept in float32 whatever dtype the model is cast to: the embedding is always computed in float32, as in Diffusers.
    """

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = bool(flip_sin_to_cos)
        self.freq_shift = freq_shift
        self.max_period = max_period
        self.register_buffer("freqs", self._table(), persistent=False)

    def _table(self, device=None) -> torch.Tensor:
        return timestep_frequencies(self.num_channels // 2, self.freq_shift, self.max_period).to(device)

    def reset_buffers(self) -> None:
        """Recompute the table (after building on the meta device, for instance)."""
        device = self.freqs.device
        if device.type == "meta":
            device = torch.device("cpu")
        self.freqs = self._table(device)

    def _apply(self, fn, recurse=True):
        # ``model.half()`` / ``.to(bfloat16)`` must not round the frequency table: keep it float32 on its new device.
        result = super()._apply(fn, recurse)
        freqs = self._buffers.get("freqs")
        if freqs is not None and freqs.dtype != torch.float32:
            self._buffers["freqs"] = self._table(freqs.device) if freqs.device.type != "meta" else freqs.float()
        return result

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return _sinusoid(timesteps, self.freqs, self.num_channels, self.flip_sin_to_cos)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, flip_sin_to_cos={self.flip_sin_to_cos}, freq_shift={self.freq_shift}"


class TimestepEmbedding(nn.Module):
    """``linear_1 -> SiLU -> linear_2`` (the paper's ``dense(4ch) -> swish -> dense(4ch)``)."""

    def __init__(self, in_channels: int, time_embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(sample)))
