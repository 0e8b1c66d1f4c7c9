"""Samplers in the pipelines: DDPMPipeline with a swapped-in DDIM / DPM-Solver++ scheduler and DDIMPipeline give the
same images as Diffusers' pipelines with the same weights, scheduler and seed; samplers by name (set_sampler,
ddpm.json), the one reverse loop, and the checks on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ddpm
from ddpm.pipeline import DDIMPipeline, DDPMPipeline, image_generators
from ddpm.schedulers.samplers import DEFAULT_STEPS, check_eta, check_sampler, make_scheduler, sampler_name
from ddpm.schedulers.vocabulary import SAMPLERS

diffusers = pytest.importorskip("diffusers")

ATOL = 1e-4  # images in [0, 1] (the UNets agree to float rounding; our CPU path runs channels-last)
UNET = dict(
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


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unets(seed: int = 0):
    torch.manual_seed(seed)
    theirs = diffusers.UNet2DModel(**UNET).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ours = ddpm.UNet2DModel(**UNET).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


SCHEDULER_CASES = [
    ("DDIMScheduler", {}),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}),
    ("DPMSolverMultistepScheduler", {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "timestep_spacing": "trailing"}),
]


@pytest.mark.parametrize(("name", "kwargs"), SCHEDULER_CASES)
def test_ddpm_pipeline_with_a_swapped_scheduler_matches_diffusers(name, kwargs):
    ours_unet, their_unet = unets()
    base = ddpm.DDPMScheduler()
    ours = DDPMPipeline(ours_unet, getattr(ddpm, name).from_config(base.config, **kwargs))
    theirs = diffusers.DDPMPipeline(
        unet=their_unet, scheduler=getattr(diffusers, name).from_config(diffusers.DDPMScheduler().config, **kwargs)
    )
    mine = {k: v for k, v in ours.scheduler.config.items() if not k.startswith("_")}
    assert mine == {k: v for k, v in theirs.scheduler.config.items() if k in mine}
    theirs.set_progress_bar_config(disable=True)
    a = ours(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np")
    b = theirs(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np")
    np.testing.assert_allclose(a.images, b.images, atol=ATOL, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_pipeline_matches_diffusers(eta):
    ours_unet, their_unet = unets(seed=1)
    ours = DDIMPipeline(ours_unet, ddpm.DDPMScheduler())  # converted to DDIM, as Diffusers does
    assert type(ours.scheduler).__name__ == "DDIMScheduler"
    theirs = diffusers.DDIMPipeline(unet=their_unet, scheduler=diffusers.DDPMScheduler())
    theirs.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    a = ours(batch_size=3, generator=gens(), eta=eta, num_inference_steps=10, output_type="np", progress=False)
    b = theirs(batch_size=3, generator=gens(), eta=eta, num_inference_steps=10, output_type="np")
    np.testing.assert_allclose(a.images, b.images, atol=ATOL, rtol=0)


def test_ddim_pipeline_folder_round_trip(tmp_path):
    ours_unet, _ = unets()
    pipe = DDIMPipeline(ours_unet, ddpm.DDPMScheduler())
    pipe.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline" and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    theirs = diffusers.DDIMPipeline.from_pretrained(tmp_path / "p")
    assert type(theirs.scheduler).__name__ == "DDIMScheduler"


def test_a_folder_loads_the_scheduler_class_its_index_names(tmp_path):
    ours_unet, _ = unets()
    for cls in (ddpm.DDIMScheduler, ddpm.DPMSolverMultistepScheduler):
        DDPMPipeline(ours_unet, cls()).save_pretrained(tmp_path / cls.__name__)
        loaded = DDPMPipeline.from_pretrained(tmp_path / cls.__name__)
        assert type(loaded.scheduler) is cls
        theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path / cls.__name__)
        assert type(theirs.scheduler).__name__ == cls.__name__


def test_eta_on_ddpm_pipeline_only_for_ddim_family():
    ours_unet, _ = unets()
    pipe = DDPMPipeline(ours_unet, ddpm.DDPMScheduler())
    with pytest.raises(ValueError, match="eta=0.5 applies to a DDIM scheduler"):
        pipe(batch_size=1, num_inference_steps=2, eta=0.5, progress=False)
    pipe.set_sampler("ddim")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = pipe(batch_size=1, generator=g(), num_inference_steps=4, eta=1.0, output_type="np", progress=False).images
    b = DDIMPipeline(ours_unet, pipe.scheduler)(
        batch_size=1, generator=g(), num_inference_steps=4, eta=1.0, output_type="np", progress=False
    ).images
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="eta"):
        pipe(batch_size=1, num_inference_steps=2, eta=-0.1, progress=False)
    # set_sampler's eta is used by later calls, until the scheduler changes
    c = pipe.set_sampler("ddim", eta=1.0)(
        batch_size=1, generator=g(), num_inference_steps=4, output_type="np", progress=False
    ).images
    np.testing.assert_array_equal(a, c)
    pipe.scheduler = ddpm.DDIMScheduler.from_config(pipe.scheduler.config)
    d = pipe(batch_size=1, generator=g(), num_inference_steps=4, output_type="np", progress=False).images
    assert not np.array_equal(a, d)  # eta 0 again
    with pytest.raises(ValueError, match="eta applies to the samplers ddim, analytic-ddim only"):
        pipe.set_sampler("dpm-solver++", eta=0.5)


def test_set_sampler_builds_from_the_base_config():
    ours_unet, _ = unets()
    pipe = DDPMPipeline(ours_unet, ddpm.DDPMScheduler(num_train_timesteps=500, beta_end=0.03))
    for name in ("ddim", "dpm-solver++", "ddpm"):
        pipe.set_sampler(name)
        assert sampler_name(pipe.scheduler) == name
        assert pipe.scheduler.config.num_train_timesteps == 500 and pipe.scheduler.config.beta_end == 0.03
    with pytest.raises(ValueError, match="sampler='euler' is not supported; allowed: 'ddpm', 'ddim'"):
        pipe.set_sampler("euler")
    with pytest.raises(ValueError, match="ddpm analytic-dpm"):
        make_scheduler("analytic-ddpm", pipe.scheduler.config)


def test_sampler_vocabulary_checks():
    assert set(DEFAULT_STEPS) == set(SAMPLERS)
    assert check_sampler("ddim") == "ddim"
    assert check_eta("ddim", 0) == 0.0 and check_eta("ddpm", None) is None
    for bad in (-1, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="eta"):
            check_eta("ddim", bad)
    with pytest.raises(ValueError, match="applies to the samplers ddim, analytic-ddim only"):
        check_eta("dpm-solver++", 0.5)


def test_recommended_sampler_round_trip_and_default_steps(tmp_path):
    ours_unet, _ = unets()
    pipe = DDPMPipeline(ours_unet, ddpm.DDPMScheduler(num_train_timesteps=200))
    assert pipe.default_sampler() == "ddpm" and pipe.default_steps() == 200  # min(1000, T)
    pipe.recommended_sampler, pipe.recommended_num_inference_steps = "dpm-solver++", 12
    pipe.recommended_steps_by_sampler = {"ddpm": 150}
    pipe.save_pretrained(tmp_path / "p")
    data = json.loads((tmp_path / "p" / "ddpm.json").read_text())
    assert data == {
        "num_inference_steps": 12,
        "sampler": "dpm-solver++",
        "num_inference_steps_by_sampler": {"ddpm": 150},
    }
    loaded = DDPMPipeline.from_pretrained(tmp_path / "p")
    assert loaded.default_sampler() == "dpm-solver++" and loaded.default_steps() == 12
    assert loaded.default_steps("ddpm") == 150 and loaded.default_steps("ddim") == DEFAULT_STEPS["ddim"]
    # the pipeline's own call keeps Diffusers' semantics: the scheduler it was loaded with
    assert type(loaded.scheduler).__name__ == "DDPMScheduler"
    # an older ddpm.json (steps only) recommends DDPM; an unknown sampler is ignored with its steps
    (tmp_path / "p" / "ddpm.json").write_text('{"num_inference_steps": 40}')
    old = DDPMPipeline.from_pretrained(tmp_path / "p")
    assert old.default_sampler() == "ddpm" and old.default_steps() == 40
    (tmp_path / "p" / "ddpm.json").write_text('{"num_inference_steps": 40, "sampler": "euler"}')
    odd = DDPMPipeline.from_pretrained(tmp_path / "p")
    assert odd.default_sampler() == "ddpm" and odd.default_steps() == 200


def test_callback_sees_the_x0_prediction_for_every_sampler():
    ours_unet, _ = unets()
    pipe = DDPMPipeline(ours_unet, ddpm.DDPMScheduler())
    for name in ("ddpm", "ddim", "dpm-solver++"):
        pipe.set_sampler(name)
        seen = []
        out = pipe(
            batch_size=2,
            generator=image_generators(0, range(2)),
            num_inference_steps=5,
            output_type="pt",
            callback=lambda i, t, x, x0, seen=seen: seen.append((i, t, None if x0 is None else x0.clone())),
            progress=False,
        )
        assert [i for i, _, _ in seen] == list(range(5))
        assert [t for _, t, _ in seen] == pipe.scheduler.timesteps.tolist()
        assert all(x0 is not None and x0.shape == (2, 3, 8, 8) for _, _, x0 in seen), name
        # after the last step the prediction is the sample itself (the images clamp it to [0, 1])
        torch.testing.assert_close(seen[-1][2].clamp(-1, 1), out.images * 2 - 1, atol=1e-5, rtol=0)


def test_images_do_not_depend_on_the_batch_for_every_sampler():
    ours_unet, _ = unets()
    pipe = DDPMPipeline(ours_unet, ddpm.DDPMScheduler())
    for name in ("ddim", "dpm-solver++"):
        pipe.set_sampler(name, **({"algorithm_type": "sde-dpmsolver++"} if name == "dpm-solver++" else {}))
        kw = dict(num_inference_steps=6, output_type="np", progress=False)
        together = pipe(batch_size=3, generator=image_generators(7, range(3)), **kw).images
        alone = pipe(batch_size=1, generator=image_generators(7, [2]), **kw).images
        # equal up to the UNet's float rounding, which differs between batch sizes (other convolution kernels)
        np.testing.assert_allclose(together[2:], alone, atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver++"])
def test_every_sampler_gives_the_cpu_images_on_cuda(sampler):
    ours_unet, _ = unets()
    pipe = DDPMPipeline(ours_unet, ddpm.DDPMScheduler()).set_sampler(sampler)
    kw = dict(batch_size=4, num_inference_steps=10, output_type="np", progress=False)
    cpu = pipe(generator=image_generators(0, range(4)), **kw).images
    pipe.to("cuda")
    gpu = pipe(generator=image_generators(0, range(4)), **kw).images  # CPU generators: the same noise on any device
    np.testing.assert_allclose(gpu, cpu, atol=2e-3, rtol=0)


def test_the_dpm_solver_sampler_clips_as_the_model_config_asks():
    clipped = make_scheduler("dpm-solver++", ddpm.DDPMScheduler(clip_sample=True).config)
    assert clipped.config.thresholding is True and clipped.config.sample_max_value == 1.0
    x0 = torch.linspace(-3, 3, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    # thresholding with sample_max_value 1 is exactly the clip to [-1, 1]
    from ddpm.schedulers.common import threshold_sample

    cfg = clipped.config
    got = threshold_sample(x0, cfg.dynamic_thresholding_ratio, cfg.sample_max_value)
    torch.testing.assert_close(got, x0.clamp(-1, 1), rtol=0, atol=0)
    for config in (
        ddpm.DDPMScheduler(clip_sample=False).config,
        ddpm.DDPMScheduler(clip_sample=True, clip_sample_range=2.0).config,  # not expressible: left alone
    ):
        assert make_scheduler("dpm-solver++", config).config.thresholding is False
    # the swap by class keeps Diffusers' semantics (no clipping added)
    assert ddpm.DPMSolverMultistepScheduler.from_config(ddpm.DDPMScheduler().config).config.thresholding is False
