"""Parity of ddpm.DDPMScheduler with Diffusers' DDPMScheduler (0.42): tables, timesteps, step(), noise, files.

"Relative error" below is max|ours - ref| / max|ref| over the finite elements of a tensor (non-finite elements must
match exactly). The only combinations not compared with Diffusers are those where Diffusers is wrong
(``fixed_large_log``: NaN; ``learned``: sqrt of a raw output); they are tested against closed forms in
test_scheduler.py and cross-checked here through an equivalent Diffusers configuration.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from ddpm import DDPMScheduler

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler as RefScheduler  # noqa: E402

RTOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny tensors: a thread pool only adds wake-up latency (badly so on a loaded 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype and ours.device == ref.device
    ours, ref = ours.double(), ref.double()
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(ours)), "non-finite elements differ"
    assert torch.equal(ours[~finite].nan_to_num(), ref[~finite].nan_to_num()), "non-finite values differ"
    if not finite.any():
        return 0.0
    scale = ref[finite].abs().max().clamp(min=1e-30)
    return ((ours[finite] - ref[finite]).abs().max() / scale).item()


def pair(**config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DDPMScheduler(**config), RefScheduler(**config)


SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "sigmoid": {"beta_schedule": "sigmoid"},
    "laplace": {"beta_schedule": "laplace"},
    "linear_zero_snr": {"rescale_betas_zero_snr": True},
    "trained": {"trained_betas": np.linspace(1e-4, 0.02, 1000) ** 1.1},
}
# (spacing/steps_offset config, what to pass to set_timesteps; None = never call it: the full chain)
SPACINGS = [
    ({}, None),
    ({"timestep_spacing": "leading"}, {"num_inference_steps": 1}),
    ({"timestep_spacing": "leading", "steps_offset": 1}, {"num_inference_steps": 7}),
    ({"timestep_spacing": "linspace"}, {"num_inference_steps": 7}),
    ({"timestep_spacing": "trailing"}, {"num_inference_steps": 7}),
    ({"timestep_spacing": "trailing"}, {"num_inference_steps": 1}),
    ({"timestep_spacing": "linspace"}, {"num_inference_steps": 1000}),
    ({}, {"timesteps": [999, 700, 420, 31, 5]}),
]
CLIPPING = [
    {"clip_sample": False},
    {"clip_sample": True},
    {"clip_sample": True, "clip_sample_range": 1.5},
    {"thresholding": True, "sample_max_value": 2.0, "dynamic_thresholding_ratio": 0.9},
]
VARIANCES = ["fixed_small", "fixed_small_log", "fixed_large", "learned_range"]


def _compare_steps(ours, ref, timesteps, channels_out, shape=(2, 3, 4, 4), seed=0):
    worst = 0.0
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(shape, generator=gen) * 1.5
    for t in timesteps:
        model_output = torch.randn((shape[0], channels_out, *shape[2:]), generator=gen)
        a = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(int(t)))
        b = ref.step(model_output, t, sample, generator=torch.Generator().manual_seed(int(t)))
        for x, y in zip(a.to_tuple(), b.to_tuple()):
            worst = max(worst, rel_err(x, y))
    return worst


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_step_grid(schedule, prediction_type):
    """Every variance type × clipping × spacing/steps for one schedule and prediction type; a few t each."""
    failures = []
    for variance_type in VARIANCES:
        channels_out = 6 if variance_type == "learned_range" else 3
        for clipping in CLIPPING:
            for spacing, set_args in SPACINGS:
                config = dict(
                    SCHEDULES[schedule],
                    prediction_type=prediction_type,
                    variance_type=variance_type,
                    **clipping,
                    **spacing,
                )
                ours, ref = pair(**config)
                if set_args is not None:
                    ours.set_timesteps(**set_args)
                    ref.set_timesteps(**set_args)
                assert torch.equal(ours.timesteps, ref.timesteps)
                ts = ours.timesteps.tolist()
                picks = sorted({0, 1, len(ts) // 2, len(ts) - 2, len(ts) - 1} & set(range(len(ts))))
                err = _compare_steps(ours, ref, [ts[i] for i in picks], channels_out)
                if not err <= RTOL:
                    failures.append((variance_type, clipping, spacing, set_args, err))
    assert not failures, failures


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_tables_identical(schedule):
    ours, ref = pair(**SCHEDULES[schedule])
    for name in ("betas", "alphas", "alphas_cumprod", "timesteps"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert len(ours) == len(ref)
    assert ours.init_noise_sigma == ref.init_noise_sigma and ours.order == ref.order == 1


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("T", [10, 1000])
def test_timesteps_identical(spacing, T):
    for n in sorted({1, 2, 3, 5, 7, T // 3, T - 1, T}):
        for offset in (0, 1) if spacing != "leading" or n < T else (0,):
            ours, ref = pair(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            ours.set_timesteps(n)
            ref.set_timesteps(n)
            assert torch.equal(ours.timesteps, ref.timesteps), (n, offset)
            assert ours.num_inference_steps == ref.num_inference_steps
            for t in ours.timesteps[:3].tolist() + ours.timesteps[-2:].tolist():
                assert int(ours.previous_timestep(t)) == int(ref.previous_timestep(torch.tensor(t)))


def test_custom_timesteps_state_matches():
    ours, ref = pair()
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    ours.set_timesteps(timesteps=[900, 500, 3])
    ref.set_timesteps(timesteps=[900, 500, 3])
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert ours.custom_timesteps is ref.custom_timesteps is True
    assert ours.num_inference_steps == ref.num_inference_steps == 10


def test_generator_list_and_global_rng():
    ours, ref = pair(variance_type="fixed_large")
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    sample = torch.randn(3, 3, 5, 5)
    model_output = torch.randn(3, 3, 5, 5)
    t = int(ours.timesteps[10])
    for make in (
        lambda: [torch.Generator().manual_seed(i) for i in range(3)],
        lambda: [torch.Generator().manual_seed(7)],
        lambda: torch.Generator().manual_seed(7),
    ):
        a = ours.step(model_output, t, sample, generator=make())
        b = ref.step(model_output, t, sample, generator=make())
        assert rel_err(a.prev_sample, b.prev_sample) <= RTOL
    torch.manual_seed(123)
    a = ours.step(model_output, t, sample).prev_sample
    after_ours = torch.randn(2)
    torch.manual_seed(123)
    b = ref.step(model_output, t, sample).prev_sample
    after_ref = torch.randn(2)
    assert rel_err(a, b) <= RTOL
    assert torch.equal(after_ours, after_ref)  # the same amount of global RNG was consumed


def test_no_noise_drawn_at_t0():
    ours, _ = pair()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    ours.step(torch.randn(1, 3, 4, 4), 0, torch.randn(1, 3, 4, 4), generator=gen)
    assert torch.equal(gen.get_state(), state)


def test_sampling_loop_matches():
    """A whole 20-step chain: same seed, same trajectory (errors do not grow beyond 1e-6)."""
    ours, ref = pair(variance_type="fixed_large", timestep_spacing="trailing")
    ours.set_timesteps(20)
    ref.set_timesteps(20)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x_a = x_b = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for t_a, t_b in zip(ours.timesteps, ref.timesteps):
        eps = torch.tanh(x_a) * 0.7  # a deterministic stand-in for a network
        x_a = ours.step(eps, t_a, x_a, generator=gen_a).prev_sample
        x_b = ref.step(eps, t_b, x_b, generator=gen_b).prev_sample
    assert rel_err(x_a, x_b) <= RTOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    """Outputs keep the sample's dtype and are at least as close to the float32 result as Diffusers' are."""
    ours, ref = pair(variance_type="fixed_small", timestep_spacing="linspace")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, generator=gen).to(dtype)
    model_output = torch.randn(2, 3, 8, 8, generator=gen).to(dtype)
    for t in ours.timesteps[[0, 5, 9]]:
        a = ours.step(model_output, t, sample, generator=torch.Generator().manual_seed(1))
        b = ref.step(model_output, t, sample, generator=torch.Generator().manual_seed(1))
        exact = ours.step(model_output.float(), t, sample.float(), generator=torch.Generator().manual_seed(1))
        for x, y, z in zip(a.to_tuple(), b.to_tuple(), exact.to_tuple()):
            assert x.dtype == dtype
            # the noise is drawn in half precision by both, so compare against float32 math on the same noise
            err_ours, err_ref = rel_err(x.float(), z), rel_err(y.float(), z)
            assert err_ours <= max(1.5 * err_ref, 2e-2 if dtype == torch.bfloat16 else 3e-3), (err_ours, err_ref)


def test_fixed_large_log_is_fixed_large():
    """Diffusers gives NaN for fixed_large_log; ours equals Diffusers' fixed_large (same σ² = β)."""
    ours, _ = pair(variance_type="fixed_large_log")
    _, ref = pair(variance_type="fixed_large")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert _compare_steps(ours, ref, ours.timesteps.tolist(), 3) <= RTOL


def test_learned_reads_log_variance():
    """Ours with log σ² = v equals Diffusers' ``learned`` fed σ² = exp(v) (Diffusers reads the output as σ²)."""
    ours, ref = pair(variance_type="learned")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 4, generator=gen)
    for t in ours.timesteps.tolist():
        eps, log_var = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen) - 5
        a = ours.step(torch.cat([eps, log_var], 1), t, sample, generator=torch.Generator().manual_seed(t))
        b = ref.step(torch.cat([eps, log_var.exp()], 1), t, sample, generator=torch.Generator().manual_seed(t))
        assert rel_err(a.prev_sample, b.prev_sample) <= RTOL
        assert rel_err(a.pred_original_sample, b.pred_original_sample) <= RTOL


def test_add_noise_and_velocity():
    ours, ref = pair(beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    for t in (torch.tensor([0, 10, 500, 999]), torch.tensor(250), torch.tensor([7])):
        assert rel_err(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) <= RTOL
        assert rel_err(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t)) <= RTOL


def test_reference_values_from_report():
    """Spot values measured on Diffusers 0.42.1 (shared/reference/diffusers-ddpm.md §1.3, §1.9)."""
    s = DDPMScheduler()
    assert s.betas[499].item() == pytest.approx(1.004004013e-02, rel=1e-6)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.035830352e-05, rel=1e-6)
    out = s.add_noise(torch.ones(2, 1), torch.full((2, 1), 0.5), torch.tensor([0, 999]))
    assert out[:, 0].tolist() == pytest.approx([1.0049504, 0.50634277], rel=1e-6)
    v = s.get_velocity(torch.ones(2, 1), torch.full((2, 1), 0.5), torch.tensor([0, 999]))
    assert v[:, 0].tolist() == pytest.approx([0.48997417, -0.99680346], rel=1e-6)


# -- files --------------------------------------------------------------------------------------------------------
def test_files_written_by_us_load_in_diffusers(tmp_path):
    ours = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="fixed_large", prediction_type="v_prediction")
    ours.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["_class_name"] == "DDPMScheduler"
    ref = RefScheduler.from_pretrained(tmp_path)
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert ref.config[key] == value, key
    assert torch.equal(ref.betas, ours.betas)


def test_files_written_by_diffusers_load_in_ours(tmp_path):
    ref = RefScheduler(beta_schedule="scaled_linear", timestep_spacing="trailing", clip_sample=False)
    ref.save_pretrained(tmp_path / "sub" / "scheduler")
    ours = DDPMScheduler.from_pretrained(tmp_path / "sub", subfolder="scheduler")
    for key, value in ref.config.items():
        if not key.startswith("_"):
            assert ours.config[key] == value, key
    assert ours.config.timestep_spacing == "trailing"
    overridden = DDPMScheduler.from_pretrained(tmp_path / "sub" / "scheduler", prediction_type="v_prediction")
    assert overridden.config.prediction_type == "v_prediction"
    assert DDPMScheduler.from_config(ref.config, clip_sample=True).config.clip_sample is True
    assert DDPMScheduler.from_config(ref.config).config.beta_schedule == "scaled_linear"


def test_old_keys_ignored(tmp_path, caplog):
    config = dict(DDPMScheduler().to_json_dict(), predict_epsilon=True, set_alpha_to_one=False)
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    ours = DDPMScheduler.from_pretrained(tmp_path)
    ref = RefScheduler.from_pretrained(tmp_path)
    assert "predict_epsilon" not in ours.config
    assert ours.config.prediction_type == ref.config.prediction_type == "epsilon"


def test_trained_betas_round_trip(tmp_path):
    betas = [0.1, 0.2, 0.3, 0.4]
    ours = DDPMScheduler(num_train_timesteps=4, trained_betas=betas)
    ours.save_pretrained(tmp_path)
    ref = RefScheduler.from_pretrained(tmp_path)
    assert torch.equal(ref.betas, ours.betas)
    back = DDPMScheduler.from_pretrained(tmp_path)
    assert torch.equal(back.betas, ours.betas)
