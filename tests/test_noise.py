"""``ddpm.noise.randn_tensor``: the one noise drawer of the scheduler and the pipeline."""

from __future__ import annotations

import pytest
import torch

from ddpm import noise
from ddpm.pipeline import randn_tensor


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_pipeline_and_scheduler_share_the_drawer():
    assert randn_tensor is noise.randn_tensor


def test_std_scales_the_same_draw():
    a = randn_tensor((3, 5), generator=gens(1)[0], std=0.25)
    assert torch.equal(a, torch.randn(3, 5, generator=gens(1)[0]) * 0.25)
    rows = randn_tensor((2, 4), generator=gens(2), std=2.0)
    assert torch.equal(rows, torch.cat([torch.randn(1, 4, generator=g) for g in gens(2)]) * 2.0)


def test_generator_lists_must_fit_the_batch():
    with pytest.raises(ValueError, match="one per batch item"):
        randn_tensor((2, 3), generator=gens(3))
    with pytest.raises(ValueError, match="empty"):
        randn_tensor((2, 3), generator=[])
    assert torch.equal(randn_tensor((2, 3), generator=gens(1)), randn_tensor((2, 3), generator=gens(1)[0]))
