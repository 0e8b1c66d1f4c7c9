"""DDPMScheduler on its own: API behaviour, closed forms where Diffusers is wrong, dtypes, state, bad input."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch

from ddpm import DDPMScheduler, DDPMSchedulerOutput


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def strided_mean_and_std(s: DDPMScheduler, t: int, prev_t: int, x0: torch.Tensor, x_t: torch.Tensor):
    """Posterior mean and β of the strided step t -> prev_t, in float64 from the float32 alphas_cumprod."""
    a = s.alphas_cumprod.double()
    a_t, a_prev = a[t], (a[prev_t] if prev_t >= 0 else torch.tensor(1.0, dtype=torch.float64))
    beta = 1 - a_t / a_prev
    mean = (a_prev.sqrt() * beta / (1 - a_t)) * x0.double() + ((1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)) * x_t
    return mean, beta


# -- output object ---------------------------------------------------------------------------------------------------
def test_output_behaves_like_tuple_and_dict():
    s = DDPMScheduler()
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    out = s.step(eps, 10, x, generator=torch.Generator().manual_seed(0))
    assert isinstance(out, DDPMSchedulerOutput)
    assert out[0] is out.prev_sample is out["prev_sample"]
    assert out[1] is out.pred_original_sample is out["pred_original_sample"]
    assert list(out.keys()) == ["prev_sample", "pred_original_sample"]
    assert len(out.to_tuple()) == 2 and out.to_tuple()[0] is out.prev_sample
    plain = s.step(eps, 10, x, generator=torch.Generator().manual_seed(0), return_dict=False)
    assert type(plain) is tuple and len(plain) == 2
    assert torch.equal(plain[0], out.prev_sample) and torch.equal(plain[1], out.pred_original_sample)
    only = DDPMSchedulerOutput(prev_sample=x)
    assert only.to_tuple() == (x,) and list(only.keys()) == ["prev_sample"]
    back = pickle.loads(pickle.dumps(out))
    assert torch.equal(back.prev_sample, out.prev_sample) and torch.equal(back[1], out[1])
    with pytest.raises(TypeError):
        out.pop("prev_sample")


# -- attributes and config -------------------------------------------------------------------------------------------
def test_defaults_and_attributes():
    s = DDPMScheduler()
    assert len(s) == 1000 and s.order == 1 and s.init_noise_sigma == 1.0
    assert s.num_inference_steps is None and s.custom_timesteps is False
    assert s.timesteps.dtype == torch.int64 and s.timesteps.tolist() == list(range(999, -1, -1))
    assert s.betas.dtype == s.alphas.dtype == s.alphas_cumprod.dtype == torch.float32
    assert s.config.num_train_timesteps == s.config["num_train_timesteps"] == 1000
    assert s.variance_type == "fixed_small"
    x = torch.randn(2, 3)
    assert s.scale_model_input(x, 5) is x
    expected = [
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "beta_schedule",
        "trained_betas",
        "variance_type",
        "clip_sample",
        "prediction_type",
        "thresholding",
        "dynamic_thresholding_ratio",
        "clip_sample_range",
        "sample_max_value",
        "timestep_spacing",
        "steps_offset",
        "rescale_betas_zero_snr",
    ]
    assert [k for k in s.config if not k.startswith("_")] == expected


def test_config_is_read_only():
    s = DDPMScheduler()
    with pytest.raises(Exception):  # noqa: B017 - FrozenDict refuses every mutation
        s.config.num_train_timesteps = 10
    with pytest.raises(Exception):  # noqa: B017
        s.config["beta_start"] = 0.1
    with pytest.raises(AttributeError):
        s.variance_type = "fixed_large"


def test_step_before_set_timesteps_uses_full_chain():
    s = DDPMScheduler()
    assert s.previous_timestep(10) == 9 and s.previous_timestep(0) == -1
    assert int(s.previous_timestep(torch.tensor(10))) == 9
    for t in (999, 500, 1, 0):
        s.step(torch.randn(1, 3, 2, 2), t, torch.randn(1, 3, 2, 2), generator=torch.Generator().manual_seed(0))


def test_timestep_types_give_the_same_result():
    s = DDPMScheduler()
    s.set_timesteps(10)
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    results = [
        s.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
        for t in (500, np.int64(500), torch.tensor(500), torch.tensor([500]), s.timesteps[4], 500.0)
    ]
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_timesteps_setter_rebuilds_schedule():
    s = DDPMScheduler()
    s.timesteps = torch.tensor([900, 100])
    assert s.previous_timestep(900) == 100 and s.previous_timestep(100) == -1
    with pytest.raises(ValueError, match="descending"):
        s.timesteps = [5, 6]


def test_set_timesteps_device_keeps_int64():
    s = DDPMScheduler()
    s.set_timesteps(4, device="cpu")
    assert s.timesteps.device.type == "cpu" and s.timesteps.dtype == torch.int64
    assert s.num_inference_steps == 4 and not s.custom_timesteps


# -- correctness where Diffusers is wrong (closed forms) ---------------------------------------------------------------
@pytest.mark.parametrize("variance_type", ["fixed_large_log", "fixed_large", "fixed_small", "fixed_small_log"])
def test_fixed_variances_closed_form(variance_type):
    s = DDPMScheduler(variance_type=variance_type, clip_sample=False)
    s.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    for t in s.timesteps.tolist():
        prev_t = s.previous_timestep(t)
        out = s.step(eps, t, x, generator=torch.Generator().manual_seed(1))
        a_t = s.alphas_cumprod.double()[t]
        x0 = (x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()  # eq. 15
        mean, beta = strided_mean_and_std(s, t, prev_t, x0, x.double())
        a_prev = s.alphas_cumprod.double()[prev_t] if prev_t >= 0 else torch.tensor(1.0, dtype=torch.float64)
        var = beta if "large" in variance_type else (1 - a_prev) / (1 - a_t) * beta
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)).double()
        expected = mean + (var.clamp(min=1e-20).sqrt() * noise if t > 0 else 0)
        assert torch.isfinite(out.prev_sample).all()
        assert torch.allclose(out.prev_sample.double(), expected, rtol=0, atol=2e-4 * expected.abs().max())
        assert torch.allclose(out.pred_original_sample.double(), x0, rtol=0, atol=1e-4 * x0.abs().max())


def test_learned_variance_is_log_variance():
    s = DDPMScheduler(variance_type="learned")
    s.set_timesteps(5)
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
    log_var = torch.randn(2, 3, 4, 4, generator=gen) - 6.0  # negative: Diffusers would take sqrt of it (NaN)
    for t in s.timesteps.tolist():
        out = s.step(torch.cat([eps, -log_var.abs()], 1), t, x, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
        a_t = s.alphas_cumprod.double()[t]
        x0 = ((x.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()).clamp(-1, 1)
        mean, _ = strided_mean_and_std(s, t, s.previous_timestep(t), x0, x.double())
        expected = mean + ((0.5 * -log_var.abs().double()).exp() * noise.double() if t > 0 else 0)
        assert torch.isfinite(out.prev_sample).all()
        assert torch.allclose(out.prev_sample.double(), expected, rtol=0, atol=1e-5)


def test_learned_range_endpoints():
    """frac = 1 (v = 1) gives σ² = β, frac = 0 (v = -1) gives β̃ (improved DDPM eq. 15)."""
    s_lr = DDPMScheduler(variance_type="learned_range", clip_sample=False)
    s_large = DDPMScheduler(variance_type="fixed_large", clip_sample=False)
    s_small = DDPMScheduler(variance_type="fixed_small", clip_sample=False)
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    for t in (999, 400, 3):
        for v, ref in ((1.0, s_large), (-1.0, s_small)):
            mo = torch.cat([eps, torch.full_like(eps, v)], 1)
            a = s_lr.step(mo, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
            b = ref.step(eps, t, x, generator=torch.Generator().manual_seed(0)).prev_sample
            assert torch.allclose(a, b, rtol=0, atol=1e-5)


def test_thresholding_matches_clipping_with_max_value_one():
    a = DDPMScheduler(thresholding=True, sample_max_value=1.0)
    b = DDPMScheduler(clip_sample=True)
    x, eps = torch.randn(2, 3, 4, 4) * 3, torch.randn(2, 3, 4, 4)
    for t in (999, 10):
        assert torch.allclose(a.step(eps, t, x).pred_original_sample, b.step(eps, t, x).pred_original_sample)


# -- dtypes, inputs untouched, state -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_output_dtype_is_sample_dtype(dtype, prediction_type):
    s = DDPMScheduler(prediction_type=prediction_type, variance_type="learned_range")
    x, mo = torch.randn(2, 3, 4, 4, dtype=dtype), torch.randn(2, 6, 4, 4, dtype=dtype)
    for t in (999, 0):
        out = s.step(mo, t, x, generator=torch.Generator().manual_seed(0))
        assert out.prev_sample.dtype == out.pred_original_sample.dtype == dtype
        assert torch.isfinite(out.prev_sample).all()
    out = s.step(mo.float(), 5, x)  # model output in float32, sample in half: outputs follow the sample
    assert out.prev_sample.dtype == dtype


def test_step_does_not_modify_inputs():
    for config in ({"prediction_type": "sample", "clip_sample": False}, {"variance_type": "learned_range"}, {}):
        s = DDPMScheduler(**config)
        channels = 6 if config.get("variance_type") == "learned_range" else 3
        x, mo = torch.randn(2, 3, 4, 4), torch.randn(2, channels, 4, 4) * 3
        x_copy, mo_copy = x.clone(), mo.clone()
        for t in (999, 0):
            s.step(mo, t, x, generator=torch.Generator().manual_seed(0))
        assert torch.equal(x, x_copy) and torch.equal(mo, mo_copy)


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range", "learned"])
def test_step_is_differentiable(variance_type):
    s = DDPMScheduler(variance_type=variance_type)
    channels = 3 if variance_type == "fixed_small" else 6
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    mo = torch.randn(2, channels, 4, 4, requires_grad=True)
    out = s.step(mo, 500, x, generator=torch.Generator().manual_seed(0))
    (out.prev_sample.sum() + out.pred_original_sample.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(mo.grad).all() and mo.grad.abs().sum() > 0


def test_add_noise_does_not_touch_state_and_accepts_ints():
    s = DDPMScheduler()
    acp = s.alphas_cumprod
    snapshot = copy.deepcopy(acp)
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    per_sample = s.add_noise(x0, noise, torch.tensor([5, 5, 5]))
    assert torch.equal(s.add_noise(x0, noise, 5), per_sample)
    assert torch.equal(s.add_noise(x0, noise, torch.tensor(5)), per_sample)
    assert torch.equal(s.add_noise(x0, noise, [5, 5, 5]), per_sample)
    mixed = s.add_noise(x0, noise, torch.tensor([0, 500, 999]))
    for i, t in enumerate((0, 500, 999)):
        assert torch.equal(mixed[i], s.add_noise(x0[i : i + 1], noise[i : i + 1], t)[0])
    a = s.alphas_cumprod.double()[500]
    expected = a.sqrt() * x0[1].double() + (1 - a).sqrt() * noise[1].double()
    assert torch.allclose(mixed[1].double(), expected, atol=1e-6)
    v = s.get_velocity(x0, noise, torch.tensor([0, 500, 999]))
    assert torch.allclose(v[1].double(), a.sqrt() * noise[1].double() - (1 - a).sqrt() * x0[1].double(), atol=1e-6)
    assert s.alphas_cumprod is acp and torch.equal(acp, snapshot) and acp.device.type == "cpu"
    half = s.add_noise(x0.half(), noise.half(), 999)
    assert half.dtype == torch.float16


# -- bad input ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"beta_schedule": "cubic"}, ["beta_schedule", "'cubic'", "squaredcos_cap_v2"]),
        ({"variance_type": "other"}, ["variance_type", "'other'", "learned_range"]),
        ({"prediction_type": "x0"}, ["prediction_type", "'x0'", "v_prediction"]),
        ({"timestep_spacing": "uniform"}, ["timestep_spacing", "'uniform'", "trailing"]),
        ({"trained_betas": [0.1, 0.2]}, ["trained_betas", "num_train_timesteps=1000"]),
        ({"num_train_timesteps": 0}, ["num_train_timesteps", "0"]),
        ({"dynamic_thresholding_ratio": 1.5}, ["dynamic_thresholding_ratio", "1.5"]),
    ],
)
def test_bad_config_raises_at_construction(kwargs, words):
    with pytest.raises(ValueError) as info:
        DDPMScheduler(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_config_in_file_raises(tmp_path):
    (tmp_path / "scheduler_config.json").write_text('{"variance_type": "fixed_huge"}')
    with pytest.raises(ValueError, match="fixed_huge"):
        DDPMScheduler.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "num_inference_steps"),
        ({"num_inference_steps": 0}, "num_inference_steps=0"),
        ({"num_inference_steps": 1001}, "num_inference_steps=1001"),
        ({"num_inference_steps": 2.5}, "num_inference_steps=2.5"),
        ({"num_inference_steps": 10, "timesteps": [5, 0]}, "only one"),
        ({"timesteps": [5, 5, 0]}, "descending"),
        ({"timesteps": [0, 5]}, "descending"),
        ({"timesteps": [1000, 5]}, r"\[0, 999\]"),
        ({"timesteps": [10, -1]}, r"\[0, 999\]"),
        ({"timesteps": []}, "non-empty"),
    ],
)
def test_bad_set_timesteps(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPMScheduler().set_timesteps(**kwargs)


def test_leading_offset_past_the_end_raises():
    s = DDPMScheduler(steps_offset=1)
    with pytest.raises(ValueError, match="steps_offset=1"):
        s.set_timesteps(1000)


def test_bad_step_inputs():
    s = DDPMScheduler()
    s.set_timesteps(10)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"timestep=901 is not in the current schedule"):
        s.step(torch.randn(2, 3, 4, 4), 901, x)
    with pytest.raises(ValueError, match="timestep"):
        s.step(torch.randn(2, 3, 4, 4), 900.5, x)
    with pytest.raises(ValueError, match=r"needs the sample's C channels"):
        s.step(torch.randn(2, 6, 4, 4), 900, x)
    learned = DDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match=r"expected \(2, 6, 4, 4\).*2\*C channels"):
        learned.step(torch.randn(2, 3, 4, 4), 900, x)
    with pytest.raises(ValueError, match="one per batch item"):
        s.step(torch.randn(2, 3, 4, 4), 900, x, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match="timesteps"):
        s.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        s.add_noise(x, x, 1000)
    with pytest.raises(ValueError, match="integers"):
        s.add_noise(x, x, torch.tensor([0.5, 1.0]))


# -- GPU: no host-device synchronisation inside step() ----------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_has_no_sync_on_cuda():
    s = DDPMScheduler(variance_type="fixed_large")
    s.set_timesteps(50, device="cuda")
    x = torch.randn(4, 3, 32, 32, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    ts = list(s.timesteps)  # iterating the CUDA tensor itself is sync-free
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in ts:
            x = s.step(torch.tanh(x), t, x, generator=gen).prev_sample
            x = s.add_noise(x, x, torch.zeros(4, dtype=torch.int64, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
    cpu = DDPMScheduler(variance_type="fixed_large")
    cpu.set_timesteps(50)
    # a CPU generator draws the same numbers for a CUDA sample as for a CPU one
    y_cuda = s.step(x, s.timesteps[3], x, generator=torch.Generator().manual_seed(0)).prev_sample
    y_cpu = cpu.step(x.cpu(), int(cpu.timesteps[3]), x.cpu(), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(y_cuda.cpu(), y_cpu.prev_sample, atol=1e-5)
    assert math.isfinite(float(y_cuda.sum()))


@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2", "scaled_linear"])
def test_snr_matches_diffusers_compute_snr(beta_schedule):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_snr

    ours = DDPMScheduler(beta_schedule=beta_schedule)
    peer = diffusers.DDPMScheduler(beta_schedule=beta_schedule)
    t = torch.tensor([0, 1, 10, 250, 500, 998, 999])
    snr = ours.snr(t)
    assert snr.dtype == torch.float64 and snr.shape == t.shape
    # Diffusers squares sqrt(a)/sqrt(1 - a) in float32; we divide in float64: equal to float32 rounding.
    torch.testing.assert_close(snr.float(), compute_snr(peer, t), rtol=2e-6, atol=0)
    a = ours.alphas_cumprod.double()[t]
    torch.testing.assert_close(snr, a / (1 - a), rtol=1e-12, atol=0)
    assert torch.all(snr[1:] < snr[:-1])  # strictly decreasing in t
    assert ours.snr(10).shape == () and ours.snr([10, 500]).tolist() == snr[[2, 4]].tolist()


@pytest.mark.parametrize(("t", "words"), [(1000, "must lie in"), (-1, "must lie in"), (0.5, "must be integers")])
def test_snr_rejects_bad_timesteps(t, words):
    with pytest.raises(ValueError, match=words):
        DDPMScheduler().snr(torch.tensor([3, t]) if isinstance(t, int) else torch.tensor([t]))
