"""``ddpm`` as a drop-in for Diffusers in user code (issue #16, item 5; docs/diffusers-drop-in.md).

One typical Diffusers script, run twice: once as written for Diffusers and once with only its import line changed to
``ddpm``. It loads a pipeline folder, swaps the scheduler, samples, saves, reloads with ``torch_dtype``, moves the
pipeline with ``.to()``, loads the UNet alone, turns on gradient checkpointing and takes a training step, and reads
``num_parameters()``, ``dtype`` and ``device``. Both runs must give the same results.
"""

from __future__ import annotations

import logging
import warnings

import huggingface_hub
import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

# The user's script. Only the line `from diffusers import ...` differs between the two runs.
SCRIPT = """
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

try:
    from diffusers import DDIMScheduler
except ImportError:
    DDIMScheduler = None


def main(pipe_folder, out_folder):
    out = {}
    pipe = DDPMPipeline.from_pretrained(pipe_folder)
    pipe.set_progress_bar_config(disable=True)

    # Swap the scheduler for one with other settings (a config round trip).
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    generator = torch.Generator(device="cpu").manual_seed(0)
    out["images"] = pipe(batch_size=2, generator=generator, num_inference_steps=4, output_type="np").images
    out["pil"] = pipe(generator=torch.manual_seed(1), num_inference_steps=2).images[0]
    if DDIMScheduler is not None:  # the usual swap to DDIM
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        generator = torch.Generator(device="cpu").manual_seed(0)
        out["ddim_images"] = pipe(batch_size=2, generator=generator, num_inference_steps=5, output_type="np").images
        out["ddim_timesteps"] = pipe.scheduler.timesteps.tolist()

    pipe.save_pretrained(out_folder)
    half = DDPMPipeline.from_pretrained(out_folder, torch_dtype=torch.float16)
    out["half_dtype"] = (half.dtype, half.unet.dtype)
    half.to("cpu")
    half = half.to(torch.float32)
    out["moved"] = (half.device, half.dtype)

    unet = UNet2DModel.from_pretrained(out_folder, subfolder="unet")
    out["loaded_in_eval_mode"] = not unet.training
    out["properties"] = (unet.dtype, unet.device, unet.num_parameters(), unet.num_parameters(only_trainable=True))
    out["config"] = (unet.config.sample_size, unet.config.in_channels, list(unet.config.block_out_channels))
    unet.enable_gradient_checkpointing()
    unet.train()
    noise_scheduler = DDPMScheduler.from_pretrained(out_folder, subfolder="scheduler")
    clean = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    timesteps = torch.tensor([10, 40])
    noisy = noise_scheduler.add_noise(clean, noise, timesteps)
    loss = torch.nn.functional.mse_loss(unet(noisy, timesteps).sample, noise)
    loss.backward()
    out["loss"] = loss.item()
    out["grad"] = unet.conv_in.weight.grad.clone()
    out["checkpointing"] = unet.is_gradient_checkpointing
    return out
"""

TINY = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=None,
)


def run(script: str, pipe_folder, out_folder) -> dict:
    namespace: dict = {}
    exec(compile(script, "user_script.py", "exec"), namespace)
    return namespace["main"](pipe_folder, out_folder)


def test_a_diffusers_script_runs_unchanged_on_ddpm(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = diffusers.UNet2DModel(**TINY)
        diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50)).save_pretrained(
            tmp_path / "pipe"
        )
        ours_script = SCRIPT.replace("from diffusers import", "from ddpm import")
        assert [a for a, b in zip(SCRIPT.splitlines(), ours_script.splitlines()) if a != b] == [
            "from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel",
            "    from diffusers import DDIMScheduler",
        ]
        theirs = run(SCRIPT, tmp_path / "pipe", tmp_path / "theirs")
        ours = run(ours_script, tmp_path / "pipe", tmp_path / "ours")

    np.testing.assert_allclose(ours["images"], theirs["images"], rtol=0, atol=1e-5)
    assert (ours["pil"].size, ours["pil"].mode) == (theirs["pil"].size, theirs["pil"].mode) == ((8, 8), "RGB")
    assert ours["half_dtype"] == theirs["half_dtype"] == (torch.float16, torch.float16)
    assert ours["moved"] == theirs["moved"] == (torch.device("cpu"), torch.float32)
    for key in ("loaded_in_eval_mode", "properties", "config", "checkpointing"):
        assert ours[key] == theirs[key], key
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    torch.testing.assert_close(ours["grad"], theirs["grad"], rtol=1e-4, atol=1e-6)
    # ddpm.DDIMScheduler exists: the DDIM swap must agree too (5 steps divide T = 50: with "trailing" spacing and
    # steps that do not, DDIM's step target differs on purpose, docs/differences.md).
    if "ddim_timesteps" in ours:
        assert ours["ddim_timesteps"] == theirs["ddim_timesteps"]
        np.testing.assert_allclose(ours["ddim_images"], theirs["ddim_images"], rtol=0, atol=1e-5)
    # The folders each library saved hold the same files.
    listing = [
        sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
        for root in (tmp_path / "ours", tmp_path / "theirs")
    ]
    assert listing[0] == listing[1]
