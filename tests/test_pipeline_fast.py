"""Quality guard of the sampling fast paths: each gives the reference path's images within a stated tolerance.

Float32 fast paths (channels-last weights on CPU, torch.compile with and without frozen weights) must match the plain
eager NCHW pipeline to <= 1e-4 on [0, 1]. Reduced precision is guarded separately (FID, ``test_default_model``).
"""

import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.models import FastPaths
from ddpm.models.fast_paths import is_channels_last as _is_channels_last

TOL = 1e-4  # on images in [0, 1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def attention_unet(seed: int = 0) -> ddpm.UNet2DModel:
    """Two levels with attention at 8x8: every kind of layer the fast paths touch (at batch 1 the 16-channel 16x16
    convolutions take the oneDNN route of ``ddpm.models.blocks.Conv2d``)."""
    torch.manual_seed(seed)
    unet = ddpm.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    ).eval()  # fmt: skip
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return unet


def reference_pipeline(unet) -> ddpm.DDPMPipeline:
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(variance_type="fixed_large"))
    pipe.set_fast_paths(FastPaths.off())  # plain NCHW, PyTorch's own kernel choices
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, batch=2, steps=6, seed=0):
    generators = ddpm.pipeline.image_generators(seed, range(batch))
    return pipe(batch_size=batch, generator=generators, num_inference_steps=steps, output_type="pt").images


def test_cpu_channels_last_is_the_default_and_gives_the_same_images():
    unet = attention_unet()
    expected = sample(reference_pipeline(unet))
    assert not _is_channels_last(unet.conv_in.weight)  # the reference left the weights alone

    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(variance_type="fixed_large"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.fast_paths == FastPaths() and pipe.fast_paths.channels_last
    got = sample(pipe)
    assert _is_channels_last(unet.conv_in.weight)
    assert got.is_contiguous()
    assert (got - expected).abs().max().item() <= TOL
    # The weights' values are untouched: saving gives the same state dict as before.
    before = attention_unet().state_dict()
    for key, value in unet.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_channels_last_weights_save_and_load(tmp_path):
    unet = attention_unet()
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    sample(pipe, steps=1)
    pipe.save_pretrained(tmp_path / "p")
    loaded = ddpm.DDPMPipeline.from_pretrained(tmp_path / "p")
    for key, value in attention_unet().state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[key], value), key


@pytest.mark.parametrize("freeze", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_compiled_pipeline_gives_the_same_images(freeze):
    pytest.importorskip("torch._inductor")
    unet = attention_unet()
    expected = sample(reference_pipeline(unet))
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(variance_type="fixed_large")).compile(freeze=freeze)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.is_compiled
    assert (sample(pipe) - expected).abs().max().item() <= TOL
    # Batch 1 too: eager sends its convolutions to oneDNN directly, the compiled graph must not.
    expected_one = sample(reference_pipeline(unet), batch=1)
    assert (sample(pipe, batch=1) - expected_one).abs().max().item() <= TOL
    assert isinstance(pipe.unet, ddpm.UNet2DModel)  # the component stays the plain module


def test_compiled_pipeline_follows_new_weights():
    """Frozen weights are constants of the compiled code: changing them must recompile, not reuse stale code."""
    unet = attention_unet(seed=0)
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(variance_type="fixed_large")).compile(freeze=True)
    pipe.set_progress_bar_config(disable=True)
    first = sample(pipe, steps=3)
    unet.load_state_dict(attention_unet(seed=1).state_dict())
    expected = sample(reference_pipeline(attention_unet(seed=1)), steps=3)
    got = sample(pipe, steps=3)
    assert (got - first).abs().max().item() > 1e-3  # the new weights changed the images ...
    assert (got - expected).abs().max().item() <= TOL  # ... to exactly those of the new weights

    pipe.compile(False)
    assert not pipe.is_compiled
    assert (sample(pipe, steps=3) - expected).abs().max().item() <= TOL


def test_user_compiled_unet_saves_plain_keys(tmp_path):
    unet = tiny_unet()
    pipe = ddpm.DDPMPipeline(torch.compile(unet), ddpm.DDPMScheduler())
    assert pipe.config["unet"] == ["diffusers", "UNet2DModel"]
    pipe.save_pretrained(tmp_path / "p")
    loaded = ddpm.UNet2DModel.from_pretrained(tmp_path / "p", subfolder="unet")
    assert sorted(loaded.state_dict()) == sorted(unet.state_dict())


def test_speed_plan_auto_rules():
    from ddpm.cli import speed

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # auto: channels-last on CPU (measured faster); compile nowhere (measured slower on CPU, unmeasured on a GPU).
    main_job = speed.plan(cpu)
    assert main_job.channels_last and not main_job.compile and main_job.threads == torch.get_num_threads()
    assert not speed.plan(cpu).compile
    assert speed.plan(cuda) == speed.SpeedPlan(channels_last=False, compile=False, threads=0)
    # "on" and "off" are obeyed everywhere.
    assert speed.plan(cuda, channels_last="on", compile="on") == speed.SpeedPlan(True, True, 0)
    assert not speed.plan(cpu, channels_last="off", compile="off").channels_last
    assert speed.plan(cpu, compile="on").compile
    with pytest.raises(ValueError, match="compile must be one of"):
        speed.plan(cpu, compile="yes")


def test_speed_plan_applies_to_the_pipeline():
    from ddpm.cli import speed

    pipe = ddpm.DDPMPipeline(attention_unet(), ddpm.DDPMScheduler())
    speed.apply(pipe, torch.device("cpu"), speed.SpeedPlan(channels_last=False, compile=True, threads=1))
    assert pipe.is_compiled and not pipe.fast_paths.channels_last
    speed.apply(pipe, torch.device("cpu"), speed.SpeedPlan(channels_last=True, compile=False, threads=1))
    assert not pipe.is_compiled and pipe.fast_paths.channels_last
    assert speed.SpeedPlan(True, True, 2).describe() == "2 thread(s), channels-last, compiled"
