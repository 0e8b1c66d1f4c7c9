"""Exponential moving average of the model weights, kept in float32.

After each optimiser step: ``ema <- d_n * ema + (1 - d_n) * weights``, where ``n`` counts earlier updates (0 for the
first). Without warm-up ``d_n = decay`` (paper App. B: 0.9999, every step, as TensorFlow's
``ExponentialMovingAverage`` without ``num_updates``). With ``warmup=True``
``d_n = min(decay, 1 - (1 + n / inv_gamma) ** -power)``, the rule of Diffusers' ``EMAModel(use_ema_warmup=True)``
(its ``get_decay(n + 1)``; defaults ``inv_gamma = 1``, ``power = 2/3``): ``d_0 = 0``, so the first update copies the
weights, and the decay then rises towards ``decay``. Buffers are copied, not averaged. Exports and training-time
samples use these weights by default.

After ``N`` updates the average holds the initial weights with the share ``prod_{n<N} d_n``
(:meth:`EMA.initial_weight_share`): ``decay ** N`` without warm-up (0.999 ** 300 = 0.74: a short run's average is
mostly the random initialisation, and its samples look like noise), exactly 0 with it. The weights after update
``K`` keep the share ``prod_{K<=n<N} d_n <= exp(-sum_{K<=n<N} (1 + n / inv_gamma) ** -power)`` while the decay is
below its limit.
"""

from __future__ import annotations

import torch
from torch import nn


def initial_weight_share(decay: float, warmup: bool, num_updates: int) -> float:
    """``prod_{n < num_updates} d_n``: the share of the initial weights in an EMA after ``num_updates`` updates
    (the module docstring's ``d_n``): 1 before any update, ``decay ** num_updates`` without warm-up, 0 with it."""
    if num_updates <= 0:
        return 1.0
    if warmup:
        return 0.0  # d_0 = 0: the first update replaced them
    return float(decay) ** int(num_updates)


class EMA:
    """A float32 shadow of a module's parameters (and a copy of its buffers), keyed like its ``state_dict``."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        warmup: bool = False,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if warmup and not (inv_gamma > 0 and power > 0):
            raise ValueError(f"EMA warm-up needs inv_gamma > 0 and power > 0, got inv_gamma={inv_gamma}, power={power}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.inv_gamma = float(inv_gamma)
        self.power = float(power)
        self.num_updates = 0
        self.params: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone() for name, p in model.named_parameters()
        }
        self.buffers: dict[str, torch.Tensor] = {name: b.detach().clone() for name, b in model.named_buffers()}

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        return self.decay_at(self.num_updates)

    def decay_at(self, n: int) -> float:
        """The decay ``d_n`` of update number ``n`` (0 for the first; see the module docstring)."""
        if not self.warmup:
            return self.decay
        value = 1.0 - (1.0 + n / self.inv_gamma) ** -self.power
        return min(self.decay, max(value, 0.0))

    def initial_weight_share(self) -> float:
        """The share ``prod_{n < num_updates} d_n`` of the initial weights in the average (1 before any update)."""
        return initial_weight_share(self.decay, self.warmup, self.num_updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average towards ``model``'s current weights; returns the decay used."""
        decay = self.current_decay()
        names, shadows, currents = [], [], []
        for name, p in model.named_parameters():
            shadow = self.params[name]
            names.append(name)
            shadows.append(shadow)
            currents.append(p.detach().to(torch.float32))
        if shadows:
            # ema + (1 - decay) * (p - ema): one fused pass over all tensors.
            torch._foreach_lerp_(shadows, currents, 1.0 - decay)
        for name, b in model.named_buffers():
            self.buffers[name].copy_(b.detach())
        self.num_updates += 1
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights (and buffers) into ``model`` (cast to its dtypes)."""
        for name, p in model.named_parameters():
            p.copy_(self.params[name])
        for name, b in model.named_buffers():
            b.copy_(self.buffers[name])

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights as a model ``state_dict`` (what exports write)."""
        return {**self.params, **self.buffers}

    def to(self, device: torch.device | str) -> EMA:
        self.params = {k: v.to(device) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "inv_gamma": self.inv_gamma,
            "power": self.power,
            "num_updates": self.num_updates,
            "params": dict(self.params),
            "buffers": dict(self.buffers),
        }

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.params) ^ set(state["params"])
        if missing:
            raise KeyError(f"EMA state does not match the model: differing keys {sorted(missing)[:5]}")
        for name, value in state["params"].items():
            self.params[name].copy_(value)
        for name, value in state["buffers"].items():
            if name in self.buffers:
                self.buffers[name].copy_(value)
        # The decay settings stay those of the constructor (the run's config); only the progress is restored.
        self.num_updates = int(state["num_updates"])
