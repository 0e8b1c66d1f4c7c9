"""Bad arguments to the public API end in a clear ValueError / TypeError from ddpm's own code (the campaign's `api`
class, docs/hardening.md), naming the argument and the value; legitimate values (everything Diffusers accepts) keep
working."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.schedulers.analytic import AnalyticDPMScheduler
from ddpm.schedulers.diffusion_math import make_betas

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")


def two_level_unet(**overrides) -> ddpm.UNet2DModel:
    config = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        add_attention=False,
    )
    config.update(overrides)
    return ddpm.UNet2DModel(**config).eval()


def _raised_in_ddpm(excinfo) -> bool:
    return any("/ddpm/" in str(entry.path) and "/torch/" not in str(entry.path) for entry in excinfo.traceback[-1:])


# -- betas -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"beta_start": -1.0}, "beta_start"),
        ({"beta_end": 2.0}, "beta_end"),
        ({"beta_end": float("nan")}, "beta_end"),
        ({"beta_start": float("inf")}, "beta_start"),
        ({"beta_schedule": "scaled_linear", "beta_end": 1.5}, "beta_end"),
        ({"beta_schedule": "sigmoid", "beta_start": -0.5}, "beta_start"),
        ({"num_train_timesteps": 3, "trained_betas": [0.1, float("nan"), 0.2]}, "trained_betas"),
        ({"num_train_timesteps": 3, "trained_betas": [0.1, -0.2, 0.2]}, "trained_betas"),
        ({"num_train_timesteps": 3, "trained_betas": [0.1, 1.5, 0.2]}, "trained_betas"),
    ],
)
def test_bad_betas_refused(name, kwargs, argument):
    with pytest.raises(ValueError, match=argument) as excinfo:
        getattr(ddpm, name)(**kwargs)
    assert "[0, 1]" in str(excinfo.value)


def test_bad_betas_refused_by_analytic_dpm_and_make_betas():
    with pytest.raises(ValueError, match="beta_end=2.0"):
        make_betas(10, beta_end=2.0)
    with pytest.raises(ValueError, match="trained_betas"):
        make_betas(2, trained_betas=[0.5, float("inf")])
    with pytest.raises(ValueError, match="beta_start"):
        AnalyticDPMScheduler(beta_start=-1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta_schedule": "squaredcos_cap_v2"},  # clipped at 0.999
        {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True},
        {"rescale_betas_zero_snr": True},  # last beta exactly 1
        {"beta_start": 0.0, "beta_end": 0.02},  # beta 0 is legitimate (alpha_bar = 1)
        {"beta_end": 1.0},
        {"beta_schedule": "laplace"},
        {"beta_schedule": "sigmoid"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"num_train_timesteps": 3, "trained_betas": [0.0, 0.5, 1.0]},
    ],
)
def test_legitimate_betas_still_accepted(kwargs):
    import diffusers

    ours = ddpm.DDPMScheduler(**kwargs)
    theirs = diffusers.DDPMScheduler(**kwargs)
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=0, atol=0)
    assert bool(((ours.alphas_cumprod >= 0) & (ours.alphas_cumprod <= 1)).all())


# -- add_noise ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEDULERS)
def test_add_noise_shape_mismatch_names_both_shapes(name):
    scheduler = getattr(ddpm, name)(num_train_timesteps=50)
    with pytest.raises(ValueError, match="noise") as excinfo:
        scheduler.add_noise(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    assert "(2, 3, 8, 8)" in str(excinfo.value) and "(2, 3, 4, 4)" in str(excinfo.value)


def test_add_noise_broadcasting_noise_still_works():
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=50)
    x = torch.randn(2, 3, 8, 8)
    noise = torch.randn(1, 3, 8, 8)
    out = scheduler.add_noise(x, noise, torch.tensor([0, 1]))
    torch.testing.assert_close(out, scheduler.add_noise(x, noise.expand(2, 3, 8, 8), torch.tensor([0, 1])))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_add_noise_numpy_is_a_type_error(name):
    # Diffusers does not accept numpy arrays here either (it calls torch's .to on them); ours names the argument.
    scheduler = getattr(ddpm, name)(num_train_timesteps=50)
    with pytest.raises(TypeError, match="original_samples") as excinfo:
        scheduler.add_noise(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)), np.array([0, 1]))
    assert "torch.Tensor" in str(excinfo.value) and "ndarray" in str(excinfo.value)
    with pytest.raises(TypeError, match="noise"):
        scheduler.add_noise(torch.zeros(2, 3, 8, 8), np.zeros((2, 3, 8, 8)), torch.tensor([0, 1]))


def test_analytic_add_noise_checks():
    scheduler = AnalyticDPMScheduler(num_train_timesteps=50)
    with pytest.raises(ValueError, match="noise"):
        scheduler.add_noise(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="original_samples"):
        scheduler.add_noise(np.zeros((2, 3, 8, 8)), np.zeros((2, 3, 8, 8)), np.array([0, 1]))


def test_get_velocity_checks_shapes():
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=50)
    with pytest.raises(ValueError, match="noise"):
        scheduler.get_velocity(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))


# -- UNet construction -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "argument"),
    [
        ({"sample_size": 0}, "sample_size"),
        ({"sample_size": -8}, "sample_size"),
        ({"sample_size": (8, 0)}, "sample_size"),
        ({"sample_size": 8.5}, "sample_size"),
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": -1}, "out_channels"),
        ({"block_out_channels": (8, 0)}, "block_out_channels"),
        ({"block_out_channels": (8,)}, "block_out_channels"),
        ({"up_block_types": ("UpBlock2D",)}, "up_block_types"),
        ({"norm_num_groups": 3}, "norm_num_groups"),
        ({"norm_num_groups": 0}, "norm_num_groups"),
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"time_embedding_dim": 0}, "time_embedding_dim"),
        ({"attn_norm_num_groups": 3}, "attn_norm_num_groups"),
        ({"norm_eps": -1.0}, "norm_eps"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_impossible_unet_configs_refused(overrides, argument):
    with pytest.raises((ValueError, NotImplementedError), match=argument):
        two_level_unet(**overrides)


def test_campaign_sample_size_0():
    with pytest.raises(ValueError, match="sample_size=0"):
        ddpm.UNet2DModel(
            sample_size=0,
            block_out_channels=(8,),
            down_block_types=("DownBlock2D",),
            up_block_types=("UpBlock2D",),
            norm_num_groups=4,
        )


def test_legitimate_unet_configs_build():
    two_level_unet(sample_size=None)
    two_level_unet(sample_size=(8, 16))
    two_level_unet(sample_size=[8, 16])


# -- UNet forward ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unet():
    return two_level_unet()


@pytest.mark.parametrize(
    ("sample", "timestep", "needles"),
    [
        (torch.zeros(1, 1, 8, 8), 3, ("sample", "3 channels", "(1, 1, 8, 8)")),
        (torch.zeros(1, 3, 7, 7), 3, ("sample", "divisible by 2", "(1, 3, 7, 7)")),
        (torch.zeros(1, 3, 8, 5), 3, ("sample", "divisible by 2", "(1, 3, 8, 5)")),
        (torch.zeros(3, 8, 8), 3, ("sample", "4-D", "(3, 8, 8)")),
        (torch.zeros(2, 3, 8, 8), torch.tensor([1, 2, 3]), ("timestep", "(3,)", "batch of 2")),
        (torch.zeros(2, 3, 8, 8), torch.tensor([[1, 2]]), ("timestep", "(1, 2)")),
    ],
)
def test_unet_forward_bad_inputs(unet, sample, timestep, needles):
    with pytest.raises(ValueError) as excinfo:
        unet(sample, timestep)
    for needle in needles:
        assert needle in str(excinfo.value), (needle, str(excinfo.value))


def test_unet_forward_non_tensor_sample(unet):
    with pytest.raises(TypeError, match="sample"):
        unet(np.zeros((1, 3, 8, 8), dtype=np.float32), 3)
    with pytest.raises(TypeError, match="timestep='3'"):
        unet(torch.zeros(1, 3, 8, 8), "3")
    with pytest.raises(ValueError, match="timestep=nan"):
        unet(torch.zeros(1, 3, 8, 8), float("nan"))


def test_unet_forward_legitimate_inputs(unet):
    x = torch.randn(2, 3, 16, 8)  # any size divisible by the total downsampling, not only sample_size
    with torch.no_grad():
        for t in (3, 3.0, torch.tensor(3), torch.tensor([3]), torch.tensor([3, 3])):
            assert unet(x, t).sample.shape == x.shape
        ref = unet(x, 3).sample
        torch.testing.assert_close(unet(x, torch.tensor([3, 3])).sample, ref)


def test_one_level_unet_takes_any_size():
    unet = tiny_unet(3, 3)
    with torch.no_grad():
        assert unet(torch.zeros(1, 3, 7, 5), 1).sample.shape == (1, 3, 7, 5)


# -- pipeline ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [None, "unet", torch.nn.Linear(2, 2)])
def test_pipeline_refuses_a_non_unet(bad):
    with pytest.raises(TypeError, match="unet") as excinfo:
        ddpm.DDPMPipeline(bad, ddpm.DDPMScheduler())
    assert type(bad).__name__ in str(excinfo.value)


@pytest.mark.parametrize("bad", [None, "ddpm", object()])
def test_pipeline_refuses_a_non_scheduler(bad):
    with pytest.raises(TypeError, match="scheduler") as excinfo:
        ddpm.DDPMPipeline(tiny_unet(3, 3), bad)
    assert "set_timesteps" in str(excinfo.value)
    with pytest.raises(TypeError, match="scheduler"):
        ddpm.DDIMPipeline(tiny_unet(3, 3), bad)


def test_pipeline_accepts_diffusers_components():
    import diffusers

    pipe = ddpm.DDPMPipeline(tiny_unet(3, 3), diffusers.DDPMScheduler(num_train_timesteps=10))
    out = pipe(batch_size=1, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 8, 8, 3)


@pytest.mark.parametrize("device", ["tpu", "", "cuda:x", "gpu:0"])
def test_pipeline_to_bad_device(device):
    pipe = ddpm.DDPMPipeline(tiny_unet(3, 3), ddpm.DDPMScheduler(num_train_timesteps=10))
    with pytest.raises(ValueError, match="device") as excinfo:
        pipe.to(device)
    assert repr(device) in str(excinfo.value) and "cpu" in str(excinfo.value)
    with pytest.raises(ValueError, match="device"):
        pipe.to(device=device)
    assert pipe.device.type == "cpu"


def test_pipeline_to_good_arguments():
    pipe = ddpm.DDPMPipeline(tiny_unet(3, 3), ddpm.DDPMScheduler(num_train_timesteps=10))
    assert pipe.to("cpu") is pipe and pipe.device.type == "cpu"
    pipe.to(torch.device("cpu"), torch.float64)
    assert pipe.dtype == torch.float64
    pipe.to(dtype=torch.float32, device="cpu")
    assert pipe.dtype == torch.float32
    assert math.isfinite(float(pipe.unet.conv_in.weight.detach().sum()))
