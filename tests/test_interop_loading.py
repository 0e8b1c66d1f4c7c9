"""Diffusers' ``from_pretrained`` keyword arguments, side by side with Diffusers itself (issue #16, item 1).

Every test loads the same folder with both libraries and compares what comes out (weights, dtype, device, the
returned tuple); where ddpm differs on purpose (docs/differences.md) the test says so. Nothing here reaches the network:
Hub-only options are given a local folder, where Diffusers ignores them, or the Hub is switched off.
"""

from __future__ import annotations

import logging
import warnings

import huggingface_hub
import pytest
import torch

import ddpm
from ddpm import DDPMPipeline, DDPMScheduler, UNet2DModel
from ddpm.io import OfflineError
from ddpm.models.modeling import accelerator_device

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=None,
)


@pytest.fixture(autouse=True)
def offline_and_quiet(monkeypatch):
    """No test may reach the Hub; Diffusers' warnings about a missing `accelerate` are noise here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _has_accelerate() -> bool:
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


def their_unet(seed=0):
    torch.manual_seed(seed)
    return diffusers.UNet2DModel(**TINY).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("interop") / "unet"
    their_unet().save_pretrained(path)
    return path


def same_weights(ours, theirs):
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


# ---------------------------------------------------------------------------------------------------------------
# dtype / torch_dtype
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": torch.float16},
        {"torch_dtype": torch.bfloat16},
        {"dtype": torch.float16, "torch_dtype": torch.float32},  # `dtype` wins, as in Diffusers
        {"dtype": torch.float64},
    ],
)
def test_dtype_and_torch_dtype(folder, kwargs):
    ours = UNet2DModel.from_pretrained(folder, **kwargs)
    theirs = diffusers.UNet2DModel.from_pretrained(folder, **kwargs)
    assert ours.dtype == theirs.dtype == kwargs.get("dtype", kwargs.get("torch_dtype"))
    same_weights(ours, theirs)


def test_dtype_name_is_parsed_where_diffusers_falls_back_to_float32(folder):
    """Deliberate difference: Diffusers turns a dtype given as a string into float32 (with a warning)."""
    assert diffusers.UNet2DModel.from_pretrained(folder, torch_dtype="float16").dtype == torch.float32
    assert UNet2DModel.from_pretrained(folder, torch_dtype="float16").dtype == torch.float16
    assert UNet2DModel.from_pretrained(folder, dtype="torch.bfloat16").dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype"):
        UNet2DModel.from_pretrained(folder, dtype=16)


# ---------------------------------------------------------------------------------------------------------------
# low_cpu_mem_usage, device_map, disable_mmap
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("low_cpu_mem_usage", [True, False, None])
def test_low_cpu_mem_usage(folder, low_cpu_mem_usage):
    ours = UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=low_cpu_mem_usage)
    theirs = diffusers.UNet2DModel.from_pretrained(folder, low_cpu_mem_usage=low_cpu_mem_usage)
    same_weights(ours, theirs)
    assert not ours.training and not theirs.training


@pytest.mark.parametrize("device_map", ["cpu", torch.device("cpu"), {"": "cpu"}, "auto", "balanced", "sequential"])
def test_device_map_on_one_device(folder, device_map):
    ours = UNet2DModel.from_pretrained(folder, device_map=device_map)
    expected = accelerator_device() if isinstance(device_map, str) and device_map != "cpu" else torch.device("cpu")
    assert ours.device.type == expected.type
    reference = diffusers.UNet2DModel.from_pretrained(folder).to(expected)
    if _has_accelerate():  # Diffusers needs accelerate for device_map; compare with it where it is installed
        if isinstance(device_map, str) and device_map != "cpu":
            # Deliberate difference: Diffusers refuses the strategies for UNet2DModel (it declares no
            # `_no_split_modules`); ddpm puts the whole model on the one device.
            with pytest.raises(ValueError, match="_no_split_modules"):
                diffusers.UNet2DModel.from_pretrained(folder, device_map=device_map)
        else:
            reference = diffusers.UNet2DModel.from_pretrained(folder, device_map=device_map)
    assert ours.device.type == reference.device.type
    assert ours.hf_device_map == (device_map if isinstance(device_map, dict) else {"": ours.device})
    if hasattr(reference, "hf_device_map"):
        assert ours.hf_device_map == reference.hf_device_map
    same_weights(ours.cpu(), reference.cpu())


def test_device_map_errors(folder):
    with pytest.raises(ValueError, match="negative int"):
        UNet2DModel.from_pretrained(folder, device_map=-1)
    with pytest.raises(ValueError, match="device name"):
        UNet2DModel.from_pretrained(folder, device_map="not-a-device")
    with pytest.raises(ValueError, match="low_cpu_mem_usage"):
        UNet2DModel.from_pretrained(folder, device_map="cpu", low_cpu_mem_usage=False)
    with pytest.raises(NotImplementedError, match="several devices"):
        UNet2DModel.from_pretrained(folder, device_map={"conv_in": "cpu", "down_blocks": "meta"})
    with pytest.raises(ValueError, match="disagree"):
        UNet2DModel.from_pretrained(folder, device_map="cpu", device="meta")
    if _has_accelerate():
        with pytest.raises(ValueError, match="low_cpu_mem_usage"):
            diffusers.UNet2DModel.from_pretrained(folder, device_map="cpu", low_cpu_mem_usage=False)


def test_disable_mmap(folder):
    ours = UNet2DModel.from_pretrained(folder, disable_mmap=True)
    same_weights(ours, diffusers.UNet2DModel.from_pretrained(folder, disable_mmap=True))


# ---------------------------------------------------------------------------------------------------------------
# variant, use_safetensors, subfolder
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """One folder with four weight files, each from another seed: safetensors, .bin, and their fp16 variants."""
    path = tmp_path_factory.mktemp("formats") / "unet"
    their_unet(seed=1).save_pretrained(path)
    their_unet(seed=2).save_pretrained(path, safe_serialization=False)
    their_unet(seed=3).half().save_pretrained(path, variant="fp16")
    their_unet(seed=4).half().save_pretrained(path, variant="fp16", safe_serialization=False)
    return path


@pytest.mark.parametrize("use_safetensors", [None, True, False])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_variant_and_use_safetensors_pick_the_same_file(formats, variant, use_safetensors):
    ours = UNet2DModel.from_pretrained(formats, variant=variant, use_safetensors=use_safetensors)
    theirs = diffusers.UNet2DModel.from_pretrained(formats, variant=variant, use_safetensors=use_safetensors)
    same_weights(ours, theirs)


def test_use_safetensors_true_without_safetensors_file(tmp_path):
    their_unet().save_pretrained(tmp_path, safe_serialization=False)
    with pytest.raises(OSError) as theirs:
        diffusers.UNet2DModel.from_pretrained(tmp_path, use_safetensors=True)
    with pytest.raises(type(theirs.value), match="diffusion_pytorch_model.safetensors"):
        UNet2DModel.from_pretrained(tmp_path, use_safetensors=True)
    with pytest.raises(ValueError, match="use_safetensors"):
        UNet2DModel.from_pretrained(tmp_path, use_safetensors="yes")


def test_subfolder(tmp_path):
    their_unet().save_pretrained(tmp_path / "pipe" / "unet")
    ours = UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet")
    same_weights(ours, diffusers.UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet"))


# ---------------------------------------------------------------------------------------------------------------
# Hub options with a local folder, and offline
# ---------------------------------------------------------------------------------------------------------------
HUB_OPTIONS = dict(
    revision="v1.0", cache_dir="/nonexistent/cache", local_files_only=True, force_download=True, token="hf_x"
)


def test_hub_options_have_no_effect_on_a_local_folder(folder):
    ours = UNet2DModel.from_pretrained(folder, proxies={"https": "http://proxy:1"}, **HUB_OPTIONS)
    theirs = diffusers.UNet2DModel.from_pretrained(folder, proxies={"https": "http://proxy:1"}, **HUB_OPTIONS)
    same_weights(ours, theirs)
    scheduler_folder = folder.parent / "scheduler"
    diffusers.DDPMScheduler(beta_end=0.03).save_pretrained(scheduler_folder)
    assert DDPMScheduler.from_pretrained(scheduler_folder, **HUB_OPTIONS).config.beta_end == 0.03


def test_force_download_while_offline_is_a_clear_error(tmp_path):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / ("0" * 40)
    UNet2DModel(**TINY).save_pretrained(snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    UNet2DModel.from_pretrained("someone/tiny", cache_dir=cache)  # cached: loads offline
    diffusers.UNet2DModel.from_pretrained("someone/tiny", cache_dir=cache)
    with pytest.raises(OSError) as theirs:
        diffusers.UNet2DModel.from_pretrained("someone/tiny", cache_dir=cache, force_download=True)
    with pytest.raises(OfflineError, match="force_download") as ours:
        UNet2DModel.from_pretrained("someone/tiny", cache_dir=cache, force_download=True)
    assert isinstance(ours.value, type(theirs.value))


# ---------------------------------------------------------------------------------------------------------------
# output_loading_info, ignore_mismatched_sizes, config overrides, unsupported options
# ---------------------------------------------------------------------------------------------------------------
def test_output_loading_info(folder):
    ours, info = UNet2DModel.from_pretrained(folder, output_loading_info=True)
    theirs, their_info = diffusers.UNet2DModel.from_pretrained(folder, output_loading_info=True)
    assert info == their_info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    same_weights(ours, theirs)


def test_ignore_mismatched_sizes(folder):
    kwargs = dict(out_channels=6, ignore_mismatched_sizes=True, output_loading_info=True)
    ours, info = UNet2DModel.from_pretrained(folder, **kwargs)
    theirs, their_info = diffusers.UNet2DModel.from_pretrained(folder, **kwargs)
    assert info == their_info
    assert [k for k, _, _ in info["mismatched_keys"]] == ["conv_out.bias", "conv_out.weight"]
    assert ours.conv_out.weight.shape == (6, 8, 3, 3) and ours.config.out_channels == 6
    a, b = ours.state_dict(), theirs.state_dict()
    for key in a:
        if not key.startswith("conv_out."):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(ddpm.models.WeightsMismatchError, match="conv_out.weight"):
        UNet2DModel.from_pretrained(folder, out_channels=6)


def test_config_overrides_and_unknown_keywords(folder):
    ours = UNet2DModel.from_pretrained(folder, sample_size=16, dropout=0.1)
    theirs = diffusers.UNet2DModel.from_pretrained(folder, sample_size=16, dropout=0.1)
    assert ours.config.sample_size == theirs.config.sample_size == 16
    assert ours.config.dropout == theirs.config.dropout == 0.1
    # Deliberate difference: Diffusers silently ignores a keyword it does not know (a typo included).
    diffusers.UNet2DModel.from_pretrained(folder, torch_dtpye=torch.float16)
    with pytest.raises(TypeError, match="torch_dtpye"):
        UNet2DModel.from_pretrained(folder, torch_dtpye=torch.float16)


@pytest.mark.parametrize(
    "kwargs", [{"quantization_config": object()}, {"use_flashpack": True}, {"parallel_config": object()}]
)
def test_unsupported_options_raise(folder, kwargs):
    with pytest.raises(NotImplementedError, match=next(iter(kwargs))):
        UNet2DModel.from_pretrained(folder, **kwargs)


def test_accepted_options_without_effect(folder):
    ours = UNet2DModel.from_pretrained(
        folder, max_memory={"cpu": "1GB"}, offload_folder="/nonexistent", offload_state_dict=False, use_flashpack=False
    )
    same_weights(ours, diffusers.UNet2DModel.from_pretrained(folder))


# ---------------------------------------------------------------------------------------------------------------
# DDPMScheduler.from_pretrained
# ---------------------------------------------------------------------------------------------------------------
LOADING_OPTIONS = dict(
    dtype=torch.float16,
    torch_dtype=torch.float16,
    low_cpu_mem_usage=True,
    device_map="cpu",
    variant="fp16",
    use_safetensors=True,
    output_loading_info=True,
)


def test_scheduler_takes_the_loading_options(tmp_path):
    diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large").save_pretrained(tmp_path)
    ours = DDPMScheduler.from_pretrained(tmp_path, **LOADING_OPTIONS, **HUB_OPTIONS, timestep_spacing="trailing")
    # Diffusers itself fails on `dtype` here (TypeError: DDPMScheduler.__init__() got an unexpected keyword argument
    # 'dtype'); it takes every other option.
    with pytest.raises(TypeError, match="dtype"):
        diffusers.DDPMScheduler.from_pretrained(tmp_path, dtype=torch.float16)
    their_options = {k: v for k, v in LOADING_OPTIONS.items() if k != "dtype"}
    theirs = diffusers.DDPMScheduler.from_pretrained(tmp_path, **their_options, timestep_spacing="trailing")
    assert isinstance(ours, DDPMScheduler)  # not a tuple: output_loading_info concerns weights
    for key, value in theirs.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    assert ours.config.timestep_spacing == "trailing"


def test_scheduler_return_unused_kwargs(tmp_path):
    diffusers.DDPMScheduler().save_pretrained(tmp_path)
    kwargs = dict(return_unused_kwargs=True, variant="fp16", torch_dtype=torch.float16, foo=1, beta_end=0.03)
    ours, unused = DDPMScheduler.from_pretrained(tmp_path, **kwargs)
    theirs, their_unused = diffusers.DDPMScheduler.from_pretrained(tmp_path, **kwargs)
    assert ours.config.beta_end == theirs.config.beta_end == 0.03
    assert unused == their_unused
    with pytest.raises(TypeError, match="foo"):
        DDPMScheduler.from_pretrained(tmp_path, foo=1)


# ---------------------------------------------------------------------------------------------------------------
# DDPMPipeline.from_pretrained
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "pipe"
    pipe = diffusers.DDPMPipeline(unet=their_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=50))
    pipe.save_pretrained(path)
    their_unet(seed=5).half().save_pretrained(path / "unet", variant="fp16")
    return path


def images(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(batch_size=2, generator=generator, num_inference_steps=3, output_type="np").images


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"variant": "fp16", "torch_dtype": torch.float32},
        {"use_safetensors": True, "low_cpu_mem_usage": True, "disable_mmap": True},
        HUB_OPTIONS,
    ],
)
def test_pipeline_options(pipe_folder, kwargs):
    ours = DDPMPipeline.from_pretrained(pipe_folder, **kwargs)
    theirs = diffusers.DDPMPipeline.from_pretrained(pipe_folder, **kwargs)
    same_weights(ours.unet, theirs.unet)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(images(ours), images(theirs), rtol=0, atol=1e-5)


def test_pipeline_dtype(pipe_folder):
    ours = DDPMPipeline.from_pretrained(pipe_folder, dtype=torch.bfloat16)
    theirs = diffusers.DDPMPipeline.from_pretrained(pipe_folder, dtype=torch.bfloat16)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    same_weights(ours.unet, theirs.unet)


@pytest.mark.parametrize("device_map", ["cpu", "balanced", accelerator_device().type])
def test_pipeline_device_map(pipe_folder, device_map):
    ours = DDPMPipeline.from_pretrained(pipe_folder, device_map=device_map)
    expected = "cpu" if device_map == "cpu" else accelerator_device().type
    assert ours.device.type == expected
    if _has_accelerate():
        theirs = diffusers.DDPMPipeline.from_pretrained(pipe_folder, device_map=device_map)
        assert theirs.unet.device.type == expected


def test_pipeline_errors_as_diffusers(pipe_folder, tmp_path):
    with pytest.raises(OSError, match="diffusion_pytorch_model.bin") as theirs:
        diffusers.DDPMPipeline.from_pretrained(pipe_folder, use_safetensors=False)  # the folder has no .bin
    with pytest.raises(type(theirs.value), match="diffusion_pytorch_model.bin"):
        DDPMPipeline.from_pretrained(pipe_folder, use_safetensors=False)
    with pytest.raises(ValueError, match="variant=bf16") as theirs:
        diffusers.DDPMPipeline.from_pretrained(pipe_folder, variant="bf16")
    with pytest.raises(type(theirs.value), match="variant=bf16"):
        DDPMPipeline.from_pretrained(pipe_folder, variant="bf16")
    with pytest.raises(NotImplementedError, match="not supported"):
        DDPMPipeline.from_pretrained(pipe_folder, device_map="auto")
    with pytest.raises(ValueError, match="must be a string"):
        DDPMPipeline.from_pretrained(pipe_folder, device_map={"": "cpu"})
    with pytest.raises(ValueError, match="low_cpu_mem_usage"):
        DDPMPipeline.from_pretrained(pipe_folder, device_map="cpu", low_cpu_mem_usage=False)
    with pytest.raises(NotImplementedError):
        DDPMPipeline.from_pretrained(pipe_folder, quantization_config=object())
    # Unknown keywords: ignored with Diffusers' warning.
    with pytest.warns(UserWarning, match="not expected"):
        DDPMPipeline.from_pretrained(pipe_folder, output_loading_info=True)
