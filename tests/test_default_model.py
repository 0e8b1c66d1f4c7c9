"""The bundled default model (src/ddpm/assets/default): it loads offline, samples, and has learned the data."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import DDPMPipeline
from ddpm.cli import main
from ddpm.pipeline import bundled_model_path

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def pipe():
    p = DDPMPipeline.from_pretrained("ddpm/default")
    p.set_progress_bar_config(disable=True)
    return p


def test_bundled_model_is_small_and_loads_by_name(pipe):
    folder = bundled_model_path()
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 8_000_000
    assert pipe.unet.config.sample_size == 28 and pipe.unet.config.in_channels == 1
    assert pipe.scheduler.config.num_train_timesteps == 1000
    # ddpm.json: Analytic-DDPM at 25 steps (FID 31.69 against 36.98 for DDPM at 250, docs/samplers.md), DDPM at 250
    assert pipe.default_sampler() == "analytic-ddpm" and pipe.default_steps() == 25
    assert pipe.default_steps("ddpm") == 250
    assert type(pipe.scheduler).__name__ == "DDPMScheduler"  # the pipeline's own call keeps Diffusers' semantics
    assert DDPMPipeline.from_pretrained().unet.num_parameters() == pipe.unet.num_parameters()


def test_samples_are_images_and_deterministic(pipe):
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    a = pipe(batch_size=2, generator=g, num_inference_steps=5, output_type="np").images
    g = [torch.Generator().manual_seed(i) for i in range(2)]
    b = pipe(batch_size=2, generator=g, num_inference_steps=5, output_type="np").images
    assert a.shape == (2, 28, 28, 1) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_model_predicts_the_noise_of_real_test_images(pipe):
    # A trained epsilon-model removes most of the noise at every level; an untrained one has MSE >= 1.
    from ddpm.data import open_dataset, to_model_range

    x0 = to_model_range(open_dataset("fashion-mnist", split="test").images[:64])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    for t, bound in ((50, 0.3), (500, 0.03), (900, 0.01)):
        tt = torch.full((64,), t)
        with torch.inference_mode():
            eps = pipe.unet(pipe.scheduler.add_noise(x0, noise, tt), tt).sample
        mse = (eps - noise).square().mean().item()
        assert mse < bound, (t, mse)


def test_ddpm_sample_without_model_uses_the_bundled_one(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--num-images", "4", "--num-inference-steps", "2", "--out", str(out), "--no-progress"]) == 0
    with Image.open(out) as img:
        assert img.size[0] >= 2 * 28 and img.size[1] >= 2 * 28
