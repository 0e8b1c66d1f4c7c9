"""The one speed setting of the UNet's eager forward: :class:`FastPaths`, a frozen value held per model instance.

The switches choose memory layouts and kernels only; the network computes the same function with any setting (up
to float rounding, ``tests/test_fast_paths_setting.py``). Each is on by default because it was measured to pay on
the CPU (``docs/benchmarks.md``, "Fast paths"):

* ``channels_last``: on CPU the UNet runs on channels-last (NHWC) activations from
  :data:`CPU_CHANNELS_LAST_MIN_BATCH` images on, or at any batch when its weights are stored channels-last; the
  output keeps the input's layout. A pipeline with this switch on also stores its UNet's weights channels-last on
  the CPU. Off, nothing changes the layout the caller chose: NCHW input and weights run NCHW throughout.
* ``onednn_single_image``: in CPU float32 inference of a single image, mid-sized 3x3 convolutions go to oneDNN
  (:class:`ddpm.models.blocks.Conv2d`).

Who holds it: a ``UNet2DModel`` holds one instance (``unet.fast_paths``, changed with ``unet.set_fast_paths``) and
hands it to its convolutions; a pipeline holds its own (``pipe.fast_paths``) and gives it to its UNet when it
samples. There is no class-level switch: changing one model or pipeline leaves every other one alone.
"""

from __future__ import annotations

import dataclasses

import torch

#: On CPU, from this batch size on ``channels_last`` runs the network on NHWC activations even with NCHW weights.
#: With NCHW weights each convolution then copies its weight to NHWC, which pays from a few images on (measured:
#: -13% time at batch 16, +20% at batch 1).
CPU_CHANNELS_LAST_MIN_BATCH = 4


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d tensor is stored channels-last (NHWC) and not also plain contiguous (e.g. 1x1 maps)."""
    return t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@dataclasses.dataclass(frozen=True)
class FastPaths:
    """The UNet's speed switches (see the module docstring); ``FastPaths()`` is the measured default, all on.

    ``FastPaths.off()`` is the plain reference path: PyTorch's own kernel choices on the layouts it is given.
    """

    channels_last: bool = True
    onednn_single_image: bool = True

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, bool):
                raise ValueError(f"FastPaths: {field.name} must be True or False, got {value!r}")

    @classmethod
    def off(cls) -> FastPaths:
        """Every switch off."""
        return cls(**{field.name: False for field in dataclasses.fields(cls)})

    def replace(self, **changes) -> FastPaths:
        """A copy with ``changes`` (switch names as keywords) applied."""
        names = [field.name for field in dataclasses.fields(self)]
        for name in changes:
            if name not in names:
                raise ValueError(f"FastPaths has no switch {name!r}; switches: {', '.join(names)}")
        return dataclasses.replace(self, **changes)

    def runs_channels_last(self, sample: torch.Tensor, weight: torch.Tensor) -> bool:
        """Whether the UNet converts its NCHW input ``sample`` to channels-last, given its first conv ``weight``."""
        return (
            self.channels_last
            and sample.device.type == "cpu"
            and not is_channels_last(sample)
            and (sample.shape[0] >= CPU_CHANNELS_LAST_MIN_BATCH or is_channels_last(weight))
        )


def resolve_fast_paths(current: FastPaths, fast_paths: FastPaths | None = None, **changes) -> FastPaths:
    """``fast_paths`` (or ``current`` when None) with the switch ``changes`` applied: the rule of every
    ``set_fast_paths``."""
    if fast_paths is None:
        fast_paths = current
    elif not isinstance(fast_paths, FastPaths):
        raise ValueError(f"fast_paths must be a ddpm.models.FastPaths, got {type(fast_paths).__name__}")
    return fast_paths.replace(**changes) if changes else fast_paths
