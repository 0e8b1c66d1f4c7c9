"""DDPMPipeline: parity with Diffusers' DDPMPipeline (same weights and seed -> same images), the extras (callback,
noise=, progress bar), input validation, devices/dtypes and pipeline folders in Diffusers' layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm
from ddpm import pipeline as ddpm_pipeline
from ddpm.pipeline import DDPMPipeline, ImagePipelineOutput, image_generators, image_seed, randn_tensor

diffusers = pytest.importorskip("diffusers")

ATOL = 1e-4  # on images in [0, 1]

# A two-level UNet with attention at 8x8 (~45k parameters, a few ms per forward on one core), DDPM flags.
TINY_UNET = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
)
# One level, no attention, 4x4: for 1000-step runs.
MICRO_UNET = dict(
    sample_size=4,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8,),
    layers_per_block=1,
    down_block_types=("DownBlock2D",),
    up_block_types=("UpBlock2D",),
    norm_num_groups=4,
    add_attention=False,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared 2-core machine: one thread avoids OpenMP contention (10-100x faster here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unet_config(base=TINY_UNET, **changes) -> dict:
    return {**base, **changes}


def make_pair(unet_kwargs: dict, scheduler_kwargs: dict | None = None, seed: int = 0):
    """(our unet, our scheduler, Diffusers' unet, Diffusers' scheduler): same config, same (perturbed) weights."""
    scheduler_kwargs = scheduler_kwargs or {}
    torch.manual_seed(seed)
    theirs = diffusers.UNet2DModel(**unet_kwargs).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = ddpm.UNet2DModel(**unet_kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, ddpm.DDPMScheduler(**scheduler_kwargs), theirs, diffusers.DDPMScheduler(**scheduler_kwargs)


def pipelines(unet_kwargs=TINY_UNET, scheduler_kwargs=None, seed=0):
    ours_unet, ours_sched, their_unet, their_sched = make_pair(unet_kwargs, scheduler_kwargs, seed)
    ours = DDPMPipeline(unet=ours_unet, scheduler=ours_sched)
    ours.set_progress_bar_config(disable=True)
    theirs = diffusers.DDPMPipeline(unet=their_unet, scheduler=their_sched)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gens(n, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def assert_same_images(ours, theirs, **kwargs):
    make = kwargs.pop("generator")
    a = ours(generator=make(), output_type="np", **kwargs).images
    b = theirs(generator=make(), output_type="np", **kwargs).images
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    assert np.isfinite(a).all()
    diff = float(np.abs(a - b).max())
    assert diff <= ATOL, diff
    assert a.std() > 0.01  # not a degenerate all-clipped output
    return a


@pytest.fixture(scope="module")
def tiny():
    return pipelines()


# ---------------------------------------------------------------------------------------------------------------
# Parity with Diffusers
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_same_images_as_diffusers_for_every_spacing(spacing, steps):
    ours, theirs = pipelines(scheduler_kwargs={"timestep_spacing": spacing})
    assert_same_images(ours, theirs, batch_size=2, generator=gen, num_inference_steps=steps)


def test_same_images_with_a_generator_per_image(tiny):
    ours, theirs = tiny
    a = assert_same_images(ours, theirs, batch_size=3, generator=lambda: gens(3), num_inference_steps=5)
    # Image i depends only on generator i: generating it alone gives the same image.
    alone = ours(batch_size=1, generator=gens(3)[1:2], num_inference_steps=5, output_type="np").images
    assert np.abs(alone[0] - a[1]).max() <= 1e-5


def test_a_list_of_one_generator_is_one_generator(tiny):
    ours, theirs = tiny
    a = assert_same_images(ours, theirs, batch_size=2, generator=lambda: [gen(3)], num_inference_steps=3)
    b = ours(batch_size=2, generator=gen(3), num_inference_steps=3, output_type="np").images
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("variance_type", "out_channels"), [("fixed_small", 3), ("fixed_large", 3), ("learned_range", 6)]
)
def test_same_images_for_each_variance_type(variance_type, out_channels):
    ours, theirs = pipelines(
        unet_config(out_channels=out_channels),
        {"variance_type": variance_type, "timestep_spacing": "trailing"},  # the last step adds noise too
    )
    assert_same_images(ours, theirs, batch_size=2, generator=gen, num_inference_steps=10)


def test_same_images_one_channel_and_pil_mode_l():
    ours, theirs = pipelines(unet_config(in_channels=1, out_channels=1))
    assert_same_images(ours, theirs, batch_size=2, generator=gen, num_inference_steps=4)
    a = ours(batch_size=2, generator=gen(), num_inference_steps=4).images
    b = theirs(batch_size=2, generator=gen(), num_inference_steps=4).images
    assert [im.mode for im in a] == ["L", "L"] and a[0].size == (8, 8)
    diff = np.abs(np.asarray(a[0], dtype=int) - np.asarray(b[0], dtype=int)).max()
    assert diff <= 1  # a 1e-7 difference may round the other way at a .5 boundary


def test_same_images_for_1000_steps():
    ours, theirs = pipelines(MICRO_UNET, {"variance_type": "fixed_large"})
    assert_same_images(ours, theirs, batch_size=2, generator=gen, num_inference_steps=1000)


def test_same_images_rectangular_sample_size():
    ours, theirs = pipelines(unet_config(sample_size=(8, 16)))
    a = assert_same_images(ours, theirs, batch_size=1, generator=gen, num_inference_steps=2)
    assert a.shape == (1, 8, 16, 3)


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------
def test_output_types_and_return_dict(tiny):
    ours, _ = tiny
    kw = dict(batch_size=2, num_inference_steps=2)
    np_images = ours(generator=gen(), output_type="np", **kw).images
    pt = ours(generator=gen(), output_type="pt", **kw)
    pil = ours(generator=gen(), **kw)
    assert isinstance(pt, ImagePipelineOutput)
    assert pt[0] is pt.images and pt["images"] is pt.images and pt.to_tuple() == (pt.images,)
    assert pt.images.shape == (2, 3, 8, 8) and pt.images.dtype == torch.float32
    assert 0 <= float(pt.images.min()) and float(pt.images.max()) <= 1
    assert not pt.images.is_inference() and not pt.images.requires_grad
    np.testing.assert_array_equal(pt.images.permute(0, 2, 3, 1).numpy(), np_images)
    assert len(pil.images) == 2 and all(isinstance(im, Image.Image) and im.mode == "RGB" for im in pil.images)
    np.testing.assert_array_equal(np.asarray(pil.images[1]), (np_images[1] * 255).round().astype(np.uint8))
    tup = ours(generator=gen(), output_type="np", return_dict=False, **kw)
    assert isinstance(tup, tuple) and len(tup) == 1
    np.testing.assert_array_equal(tup[0], np_images)


def test_runs_without_gradients(tiny):
    ours, _ = tiny
    seen = []
    ours(num_inference_steps=1, output_type="np", callback=lambda i, t, x, x0: seen.append(torch.is_grad_enabled()))
    assert seen == [False] and torch.is_grad_enabled()


def test_numpy_to_pil_is_static():
    images = np.zeros((2, 4, 4, 1), dtype=np.float32)
    images[1] = 1.0
    pil = DDPMPipeline.numpy_to_pil(images)
    assert [im.mode for im in pil] == ["L", "L"] and np.asarray(pil[1]).max() == 255
    assert DDPMPipeline.numpy_to_pil(np.full((4, 4, 3), 0.5))[0].getpixel((0, 0)) == (128, 128, 128)


# ---------------------------------------------------------------------------------------------------------------
# Beyond Diffusers: callback, noise=, progress bar
# ---------------------------------------------------------------------------------------------------------------
def test_callback_every_step_matches_the_result(tiny):
    ours, _ = tiny
    calls = []
    out = ours(
        batch_size=2,
        generator=gen(),
        num_inference_steps=4,
        output_type="pt",
        callback=lambda i, t, x, x0: calls.append((i, t, x.clone(), x0.clone())),
    ).images
    assert [(i, t) for i, t, _, _ in calls] == [(0, 750), (1, 500), (2, 250), (3, 0)]
    assert all(isinstance(t, int) for _, t, _, _ in calls)
    assert all(x.shape == (2, 3, 8, 8) and x0.shape == (2, 3, 8, 8) for _, _, x, x0 in calls)
    torch.testing.assert_close((calls[-1][2] / 2 + 0.5).clamp(0, 1), out)
    assert float(calls[-1][3].abs().max()) <= 1.0  # clipped x0 prediction


def test_callback_steps_and_last_step(tiny):
    ours, _ = tiny
    seen = []
    ours(num_inference_steps=7, output_type="np", callback=lambda i, *a: seen.append(i), callback_steps=3)
    assert seen == [0, 3, 6]
    seen.clear()
    ours(num_inference_steps=5, output_type="np", callback=lambda i, *a: seen.append(i), callback_steps=3)
    assert seen == [0, 3, 4]


def test_noise_argument_reproduces_the_drawn_noise(tiny):
    ours, _ = tiny
    reference = ours(batch_size=2, generator=gen(5), num_inference_steps=3, output_type="np").images
    g = gen(5)
    noise = torch.randn((2, 3, 8, 8), generator=g)
    kept = noise.clone()
    images = ours(noise=noise, generator=g, num_inference_steps=3, output_type="np").images  # batch from noise
    np.testing.assert_array_equal(images, reference)
    assert torch.equal(noise, kept)
    # float64 noise is cast to the UNet's dtype
    g = gen(5)
    noise = torch.randn((2, 3, 8, 8), generator=g, dtype=torch.float64)
    assert ours(noise=noise, generator=g, num_inference_steps=1, output_type="pt").images.dtype == torch.float32


@pytest.mark.parametrize(
    ("noise", "batch_size", "match"),
    [
        (torch.zeros(2, 3, 8, 7), None, "noise must have shape"),
        (torch.zeros(2, 3, 8, 8), 3, "noise must have shape"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.int64), None, "floating-point"),
        (np.zeros((1, 3, 8, 8)), None, "torch.Tensor"),
    ],
)
def test_bad_noise(tiny, noise, batch_size, match):
    ours, _ = tiny
    with pytest.raises(ValueError, match=match):
        ours(batch_size=batch_size, noise=noise, num_inference_steps=1)


def test_progress_bar_config_and_progress_flag(capsys):
    ours, _ = pipelines(MICRO_UNET)
    ours.set_progress_bar_config()
    ours(num_inference_steps=3, output_type="np")
    assert "3/3" in capsys.readouterr().err
    ours(num_inference_steps=3, output_type="np", progress=False)
    assert capsys.readouterr().err == ""
    ours.set_progress_bar_config(disable=True)
    ours(num_inference_steps=3, output_type="np")
    assert capsys.readouterr().err == ""
    ours.set_progress_bar_config(desc="denoising")
    ours(num_inference_steps=2, output_type="np")
    assert "denoising" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Bad input: ValueError up front, before any UNet call
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 3, "generator": "two"}, "generators of length 2"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -1}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 1001}, r"\[1, 1000\]"),
        ({"num_inference_steps": None}, "num_inference_steps"),
        ({"output_type": "numpy_array"}, "output_type"),
        ({"output_type": None}, "output_type"),
        ({"callback_steps": 0}, "callback_steps"),
        ({"callback": 3}, "callback"),
        ({"generator": 42}, "generator"),
    ],
)
def test_bad_arguments_raise_before_any_work(tiny, kwargs, match, monkeypatch):
    ours, _ = tiny
    if kwargs.get("generator") == "two":
        kwargs["generator"] = gens(2)

    def boom(*a, **k):
        raise AssertionError("the UNet ran before the arguments were checked")

    monkeypatch.setattr(ours.unet, "forward", boom)
    with pytest.raises(ValueError, match=match):
        ours(**kwargs)


@pytest.mark.parametrize(
    ("variance_type", "out_channels", "match"),
    [
        ("learned_range", 3, r"out_channels = 2 \* in_channels = 6"),
        ("learned", 3, "learned"),
        ("fixed_small", 6, "learned_range"),
        ("fixed_large", 4, "out_channels = in_channels = 3"),
    ],
)
def test_unet_channels_must_fit_the_variance_type(variance_type, out_channels, match):
    unet = ddpm.UNet2DModel(**unet_config(out_channels=out_channels))
    pipe = DDPMPipeline(unet, ddpm.DDPMScheduler(variance_type=variance_type))
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=1)


# ---------------------------------------------------------------------------------------------------------------
# Random numbers
# ---------------------------------------------------------------------------------------------------------------
def test_randn_tensor_draws_like_diffusers():
    from diffusers.utils.torch_utils import randn_tensor as their_randn

    for generator in (lambda: gen(1), lambda: gens(3, 1), lambda: [gen(1)]):
        a = randn_tensor((3, 2, 4, 4), generator=generator())
        b = their_randn((3, 2, 4, 4), generator=generator())
        assert torch.equal(a, b)
    assert randn_tensor((2, 2), dtype=torch.float16).dtype == torch.float16
    # A CPU generator with another target draws on the CPU and moves the result.
    moved = randn_tensor((2, 3), generator=gen(), device="meta")
    assert moved.device.type == "meta" and moved.shape == (2, 3)


def test_image_seeds_do_not_depend_on_batching():
    assert image_seed(0, 5) == image_seed(0, 5)
    seeds = {image_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= s < 2**64 for s in seeds)
    a = torch.stack([torch.randn(3, generator=g) for g in image_generators(7, range(4))])
    b = torch.stack([torch.randn(3, generator=g) for g in image_generators(7, range(2, 4))])
    assert torch.equal(a[2:], b)
    with pytest.raises(ValueError):
        image_seed(-1, 0)


# ---------------------------------------------------------------------------------------------------------------
# Components, device, dtype
# ---------------------------------------------------------------------------------------------------------------
def test_components_device_dtype_and_to():
    ours, _ = pipelines(MICRO_UNET)
    assert set(ours.components) == {"unet", "scheduler"}
    again = DDPMPipeline(**ours.components)
    assert again.unet is ours.unet
    assert ours.device == torch.device("cpu") and ours.dtype == torch.float32
    assert ours.to(torch.bfloat16) is ours and ours.dtype == torch.bfloat16
    images = ours(batch_size=2, generator=gen(), num_inference_steps=2, output_type="np").images
    assert images.dtype == np.float32 and np.isfinite(images).all()  # NumPy has no bfloat16
    assert ours(num_inference_steps=1, output_type="pt").images.dtype == torch.bfloat16
    ours.to("cpu", torch.float32)
    assert ours.dtype == torch.float32
    ours.to(device="cpu", dtype="float64")
    assert ours.dtype == torch.float64
    ours.to("cpu")
    reference = ours(batch_size=2, generator=gen(), num_inference_steps=2, output_type="np").images
    ours.to(memory_format=torch.channels_last)
    assert ours.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    same = ours(batch_size=2, generator=gen(), num_inference_steps=2, output_type="np").images
    assert np.abs(same - reference).max() <= 1e-5
    with pytest.raises(TypeError):
        ours.to(object())
    assert dict(ours.config)["unet"] == ["diffusers", "UNet2DModel"]


# ---------------------------------------------------------------------------------------------------------------
# Pipeline folders
# ---------------------------------------------------------------------------------------------------------------
def test_loads_a_folder_diffusers_saved(tmp_path):
    _, theirs = pipelines(unet_config(out_channels=6), {"variance_type": "learned_range"})
    theirs.save_pretrained(tmp_path / "pipe")
    loaded = DDPMPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.unet, ddpm.UNet2DModel) and isinstance(loaded.scheduler, ddpm.DDPMScheduler)
    assert loaded.scheduler.config.variance_type == "learned_range"
    assert loaded.recommended_num_inference_steps is None
    loaded.set_progress_bar_config(disable=True)
    assert_same_images(loaded, theirs, batch_size=2, generator=gen, num_inference_steps=5)


def test_diffusers_loads_a_folder_we_saved(tmp_path):
    ours, _ = pipelines(scheduler_kwargs={"variance_type": "fixed_large", "timestep_spacing": "trailing"})
    ours.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["_diffusers_version"]
    assert index["scheduler"] == ["diffusers", "DDPMScheduler"] and index["unet"] == ["diffusers", "UNet2DModel"]
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (tmp_path / "pipe" / "ddpm.json").exists()
    theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")
    theirs.set_progress_bar_config(disable=True)
    assert theirs.scheduler.config.timestep_spacing == "trailing"
    assert_same_images(ours, theirs, batch_size=2, generator=gen, num_inference_steps=4)


def test_recommended_steps_round_trip_and_overrides(tmp_path):
    ours, _ = pipelines(MICRO_UNET)
    ours.recommended_num_inference_steps = 25
    ours.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / "ddpm.json").read_text()) == {"num_inference_steps": 25}
    scheduler = ddpm.DDPMScheduler(variance_type="fixed_large")
    loaded = DDPMPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.float16, scheduler=scheduler)
    assert loaded.recommended_num_inference_steps == 25
    assert loaded.scheduler is scheduler and loaded.dtype == torch.float16
    assert DDPMPipeline.from_pretrained(tmp_path / "pipe", torch_dtype="bfloat16").dtype == torch.bfloat16
    unet = ddpm.UNet2DModel(**MICRO_UNET)
    assert DDPMPipeline.from_pretrained(str(tmp_path / "pipe"), unet=unet).unet is unet
    with pytest.raises(ValueError, match="disagree"):
        DDPMPipeline.from_pretrained(tmp_path / "pipe", dtype=torch.float16, torch_dtype=torch.float32)
    with pytest.warns(UserWarning, match="not expected"):
        DDPMPipeline.from_pretrained(tmp_path / "pipe", not_used=True)
    # Diffusers ignores ddpm.json.
    diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe")


def test_missing_folder_bundled_model_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        DDPMPipeline.from_pretrained(tmp_path)
    monkeypatch.setattr(ddpm_pipeline, "bundled_model_path", _no_bundle)
    with pytest.raises(ddpm_pipeline.NoBundledModelError, match="no model is bundled"):
        DDPMPipeline.from_pretrained("ddpm/default")
    with pytest.raises(ddpm_pipeline.NoBundledModelError):
        DDPMPipeline.from_pretrained()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ddpm.io.OfflineError, match="google/ddpm-cifar10-32"):
        DDPMPipeline.from_pretrained("google/ddpm-cifar10-32", cache_dir=tmp_path / "cache")


def _no_bundle():
    raise ddpm_pipeline.NoBundledModelError("no model is bundled (test)")


def test_bundled_model_path_is_in_the_package(tmp_path, monkeypatch):
    try:
        path = ddpm_pipeline.bundled_model_path()
    except ddpm_pipeline.NoBundledModelError as err:
        assert "no model is bundled" in str(err)
    else:
        assert (path / "model_index.json").is_file() and path.name == "default" and path.parent.name == "assets"


# ---------------------------------------------------------------------------------------------------------------
# Slow / GPU
# ---------------------------------------------------------------------------------------------------------------
CIFAR10_UNET = dict(
    sample_size=32,
    block_out_channels=(128, 256, 256, 256),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
)


@pytest.mark.slow
def test_same_images_with_the_cifar10_unet():
    ours, theirs = pipelines(CIFAR10_UNET, {"variance_type": "fixed_large"})
    assert_same_images(ours, theirs, batch_size=2, generator=lambda: gens(2), num_inference_steps=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cpu_generators_matches_cpu(monkeypatch):
    ours, _ = pipelines(scheduler_kwargs={"variance_type": "fixed_large"})
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = ours(batch_size=2, generator=gens(2), num_inference_steps=10, output_type="np").images
    ours.to("cuda")
    out = ours(batch_size=2, generator=gens(2), num_inference_steps=10, output_type="pt")
    assert out.images.device.type == "cuda"
    assert np.abs(out.images.permute(0, 2, 3, 1).cpu().numpy() - cpu).max() <= 1e-3
    # CUDA generators draw on the GPU; a CUDA generator for a CPU pipeline is refused.
    ours(batch_size=2, generator=torch.Generator(device="cuda").manual_seed(0), num_inference_steps=2)
    ours.to("cpu")
    with pytest.raises(ValueError, match="Cannot generate a cpu tensor"):
        ours(generator=torch.Generator(device="cuda").manual_seed(0), num_inference_steps=1)
