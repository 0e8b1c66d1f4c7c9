"""Training: the loss, EMA, the data order, checkpoints and the loop. The data sets (:mod:`ddpm.data`) and the
distributed set-up (:mod:`ddpm.distributed`) are shared services at the base of the package.

>>> from ddpm.training import resolve_config, train
>>> result = train(resolve_config("fashion-mnist-small", data="fashion-mnist", output_dir="runs/fm", max_steps=2000))
"""

from __future__ import annotations

from .._lazy import lazy_attributes as _lazy_attributes

_LAZY = {
    "TrainConfig": "ddpm.training.config",
    "ConfigError": "ddpm.training.config",
    "resolve_config": "ddpm.training.config",
    "Trainer": "ddpm.training.trainer",
    "TrainResult": "ddpm.training.trainer",
    "TrainingError": "ddpm.training.trainer",
    "NonFiniteLossError": "ddpm.training.trainer",
    "train": "ddpm.training.trainer",
    "EMA": "ddpm.training.ema",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())
