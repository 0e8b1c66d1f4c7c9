"""Exponential moving average of the model weights, kept in float32.

After each optimiser step: ``ema <- decay * ema + (1 - decay) * weights`` (paper App. B: decay 0.9999, every step,
no warm-up, as TensorFlow's ``ExponentialMovingAverage`` without ``num_updates``). With ``warmup=True`` the decay of
update number ``n`` (0 for the first) is ``min(decay, 1 - (1 + n / inv_gamma) ** -power)``, Diffusers' ``EMAModel``
rule, so that early averages are not dominated by the random initialisation. Buffers are copied, not averaged.
Exports and training-time samples use these weights.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """A float32 shadow of a module's parameters (and a copy of its buffers), keyed like its ``state_dict``."""

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,
        warmup: bool = False,
        inv_gamma: float = 1.0,
        power: float = 0.75,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
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
        if not self.warmup:
            return self.decay
        value = 1.0 - (1.0 + self.num_updates / self.inv_gamma) ** -self.power
        return min(self.decay, max(value, 0.0))

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
