"""The one speed setting (``ddpm.models.FastPaths``): held per UNet and per pipeline, obeyed everywhere.

Off means the plain path: NCHW activations inside the UNet at every batch size (also through ``ddpm sample
--channels-last off``) and PyTorch's own convolution kernels. No switch lives on a class, so setting one model or
pipeline leaves every other one alone. On and off compute the same function up to float rounding.
"""

import copy

import pytest
import torch

import ddpm
from ddpm.models import FastPaths
from ddpm.models.blocks import Conv2d
from ddpm.models.fast_paths import CPU_CHANNELS_LAST_MIN_BATCH, is_channels_last
from ddpm.pipeline import image_generators

BATCH = 16  # above CPU_CHANNELS_LAST_MIN_BATCH: the size at which the UNet used to go channels-last by itself


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def attention_unet(seed: int = 0) -> ddpm.UNet2DModel:
    """16x16, two levels, attention at 8x8: every layer kind the fast paths touch."""
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


def record_layouts(unet) -> list[str]:
    """Hooks on every convolution and normalisation of ``unet``; the list fills with the layout of each input."""
    seen = []

    def hook(module, args):
        x = args[0]
        seen.append("channels_last" if is_channels_last(x) else "nchw" if x.is_contiguous() else "other")

    for module in unet.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.GroupNorm)):
            module.register_forward_pre_hook(hook)
    return seen


def pipeline(unet, fast_paths: FastPaths | None = None) -> ddpm.DDPMPipeline:
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(variance_type="fixed_large"))
    pipe.set_progress_bar_config(disable=True)
    if fast_paths is not None:
        pipe.set_fast_paths(fast_paths)
    return pipe


def sample(pipe, batch: int = BATCH, steps: int = 2):
    gens = image_generators(0, range(batch))
    return pipe(batch_size=batch, generator=gens, num_inference_steps=steps, output_type="pt").images


# -- (a) off is NCHW everywhere -------------------------------------------------------------------------------
def test_channels_last_off_runs_nchw_inside_the_unet_at_batch_16():
    assert BATCH >= CPU_CHANNELS_LAST_MIN_BATCH
    unet = attention_unet()
    seen = record_layouts(unet)
    pipe = pipeline(unet).set_fast_paths(channels_last=False)
    sample(pipe)
    assert seen and set(seen) == {"nchw"}, sorted(set(seen))
    assert not is_channels_last(unet.conv_in.weight)  # the weights were left alone too
    # The default (on) goes channels-last: the hooks do see layouts.
    seen.clear()
    sample(pipe.set_fast_paths(channels_last=True))
    assert set(seen) == {"channels_last"}
    assert is_channels_last(unet.conv_in.weight)


def test_the_model_alone_keeps_nchw_when_off():
    unet = attention_unet()
    seen = record_layouts(unet)
    x = torch.randn(BATCH, 3, 16, 16)
    with torch.inference_mode():
        unet.set_fast_paths(channels_last=False)(x, 5)
        assert set(seen) == {"nchw"}
        seen.clear()
        unet.set_fast_paths(channels_last=True)(x, 5)
        assert set(seen) == {"channels_last"}  # the measured default: NHWC from batch 4 on CPU
        seen.clear()
        unet(x[:1], 5)
        assert set(seen) == {"nchw"}  # ... but not for one image with NCHW weights


def test_sample_command_channels_last_off_is_nchw(tmp_path, monkeypatch, capsys):
    from ddpm.cli import main

    pipeline(attention_unet()).save_pretrained(tmp_path / "model")
    seen = []
    load = ddpm.DDPMPipeline.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        pipe = load(cls, *args, **kwargs)
        seen.append(record_layouts(pipe.unet))
        return pipe

    monkeypatch.setattr(ddpm.DDPMPipeline, "from_pretrained", classmethod(from_pretrained))
    common = ["sample", "--model", str(tmp_path / "model"), "--num-images", str(BATCH), "--batch-size", str(BATCH)]
    common += ["--steps", "2", "--no-progress", "--compile", "off"]
    assert main([*common, "--channels-last", "off", "--out", str(tmp_path / "off.npz")]) == 0
    assert main([*common, "--channels-last", "on", "--out", str(tmp_path / "on.npz")]) == 0
    assert set(seen[0]) == {"nchw"} and set(seen[1]) == {"channels_last"}
    capsys.readouterr()


def test_onednn_switch_off_leaves_the_kernel_to_pytorch():
    from torch.profiler import ProfilerActivity, profile

    def kernels(conv, x) -> set[str]:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            conv(x)
        return {e.key for e in prof.key_averages() if "conv" in e.key and ("mkldnn" in e.key or "slow" in e.key)}

    torch.manual_seed(0)
    conv = Conv2d(64, 64, kernel_size=3, padding=1)
    x = torch.randn(1, 64, 16, 16)
    assert kernels(conv, x) == {"aten::mkldnn_convolution"}
    off = Conv2d(64, 64, kernel_size=3, padding=1, fast_paths=FastPaths(onednn_single_image=False))
    off.load_state_dict(conv.state_dict())
    assert kernels(off, x) == {"aten::_slow_conv2d_forward"}
    with torch.inference_mode():
        torch.testing.assert_close(off(x), conv(x), rtol=1e-5, atol=1e-5)


# -- (b) no class-level switches ----------------------------------------------------------------------------
def test_no_class_attribute_switches():
    for cls in (ddpm.UNet2DModel, Conv2d, ddpm.DDPMPipeline):
        for name in ("cpu_channels_last", "onednn_single_image", "channels_last"):
            # the old name survives only as a read-only property that refuses to be set (see the next test)
            assert name not in vars(cls) or isinstance(vars(cls)[name], property), (cls.__name__, name)
    assert "fast_paths" not in vars(Conv2d)


def test_setting_one_unet_leaves_another_alone():
    a, b = attention_unet(), attention_unet()
    a.set_fast_paths(FastPaths.off())
    assert a.fast_paths == FastPaths.off() and b.fast_paths == FastPaths()
    convs = [m for m in a.modules() if isinstance(m, Conv2d)]
    assert convs and all(m.fast_paths is a.fast_paths for m in convs)  # one object, handed down
    assert all(m.fast_paths == FastPaths() for m in b.modules() if isinstance(m, Conv2d))
    assert Conv2d(4, 4, 3).fast_paths == FastPaths()  # a new convolution: the defaults
    c = copy.deepcopy(a).set_fast_paths(onednn_single_image=True)
    assert a.fast_paths == FastPaths.off() and c.fast_paths == FastPaths(channels_last=False)
    assert all(m.fast_paths is c.fast_paths for m in c.modules() if isinstance(m, Conv2d))


def test_pipeline_owns_its_setting_and_hands_it_to_its_unet():
    p, q = pipeline(attention_unet()), pipeline(attention_unet())
    p.fast_paths = FastPaths.off()
    assert q.fast_paths == FastPaths()
    assert p.unet.fast_paths == FastPaths()  # handed over when sampling, not before
    sample(p, batch=1, steps=1)
    assert p.unet.fast_paths == FastPaths.off() and q.unet.fast_paths == FastPaths()
    # A setting given to the UNet directly is replaced by the pipeline's when the pipeline samples.
    q.unet.set_fast_paths(channels_last=False)
    sample(q, batch=1, steps=1)
    assert q.unet.fast_paths == FastPaths()


def test_compiled_denoiser_follows_the_setting():
    """The setting is part of the traced code: a new one gets new compiled code (no compilation happens here)."""
    unet = attention_unet()
    pipe = pipeline(unet).compile(freeze=False)
    first = pipe._compiled.get(unet, torch.device("cpu"))
    assert pipe._compiled.get(unet, torch.device("cpu")) is first
    unet.set_fast_paths(channels_last=False)
    assert pipe._compiled.get(unet, torch.device("cpu")) is not first


# -- (c) same function on and off ---------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, BATCH])
def test_forward_on_and_off_agree(batch):
    on = attention_unet()
    off = copy.deepcopy(on).set_fast_paths(FastPaths.off())
    weights_cl = copy.deepcopy(on).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 16, 16)
    with torch.inference_mode():
        ref = off(x, 7).sample
        for model in (on, weights_cl):
            got = model(x, 7).sample
            assert got.is_contiguous()
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_images_on_and_off_agree():
    unet = attention_unet()
    ref = sample(pipeline(copy.deepcopy(unet), FastPaths.off()), steps=3)
    for setting in (FastPaths(), FastPaths(channels_last=False), FastPaths(onednn_single_image=False)):
        got = sample(pipeline(copy.deepcopy(unet), setting), steps=3)
        assert (got - ref).abs().max().item() <= 1e-4, setting
    one_ref = sample(pipeline(copy.deepcopy(unet), FastPaths.off()), batch=1, steps=3)
    assert (sample(pipeline(copy.deepcopy(unet)), batch=1, steps=3) - one_ref).abs().max().item() <= 1e-4


# -- bad input ----------------------------------------------------------------------------------------------
def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="channels_last must be True or False, got 'yes'"):
        FastPaths(channels_last="yes")
    with pytest.raises(ValueError, match="no switch 'fused'.*channels_last, onednn_single_image"):
        FastPaths().replace(fused=True)
    unet, pipe = attention_unet(), pipeline(attention_unet())
    with pytest.raises(ValueError, match="no switch 'channel_last'"):
        unet.set_fast_paths(channel_last=False)
    with pytest.raises(ValueError, match="fast_paths must be a ddpm.models.FastPaths, got dict"):
        unet.set_fast_paths({"channels_last": False})
    with pytest.raises(ValueError, match="fast_paths must be a ddpm.models.FastPaths, got NoneType"):
        unet.fast_paths = None
    with pytest.raises(ValueError, match="fast_paths must be a ddpm.models.FastPaths, got bool"):
        pipe.fast_paths = False
    with pytest.raises(ValueError, match="onednn_single_image must be True or False, got 1"):
        pipe.set_fast_paths(onednn_single_image=1)
    assert unet.fast_paths == FastPaths() and pipe.fast_paths == FastPaths()


def test_the_removed_switch_cannot_be_set_silently():
    pipe = ddpm.DDPMPipeline(attention_unet(), ddpm.DDPMScheduler())
    for obj in (pipe, pipe.unet):
        assert obj.cpu_channels_last is True
        with pytest.raises(AttributeError, match=r"set_fast_paths\(channels_last=False\)"):
            obj.cpu_channels_last = False
