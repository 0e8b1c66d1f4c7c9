"""ddpm.DDIMScheduler against Diffusers' DDIMScheduler (0.42.1) and the closed form of DDIM (Song et al. eq. 12).

"Relative error" is max|ours - ref| / max|ref| over the finite elements (non-finite elements must match exactly).
Diffusers steps from t to t - T // n whatever the spacing (diffusers issues #11347, #12633); ours steps to the next
timestep of the schedule. The two agree for ``leading`` spacing with ``steps_offset`` < T // n and for ``trailing``
with n dividing T: those are compared with Diffusers; the others (``linspace``, ``trailing`` with n not dividing T, a
large ``steps_offset``) with the closed form in float64 (docs/differences.md, DDIM).
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from ddpm import DDIMScheduler, DDPMScheduler
from ddpm.schedulers import DDIMSchedulerOutput

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler as RefScheduler  # noqa: E402

RTOL = 1e-6


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
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
    ours = DDIMScheduler(**config)
    if config.get("beta_schedule") in ("sigmoid", "laplace"):  # Diffusers' DDIM lacks them: give it our betas
        config = dict(config, beta_schedule="linear", trained_betas=ours.betas.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ours, RefScheduler(**config)


SCHEDULES = {
    "linear": {},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "squaredcos_cap_v2": {"beta_schedule": "squaredcos_cap_v2"},
    "sigmoid": {"beta_schedule": "sigmoid"},
    "laplace": {"beta_schedule": "laplace"},
    "linear_zero_snr": {"rescale_betas_zero_snr": True},
    "trained": {"trained_betas": np.linspace(1e-4, 0.02, 1000) ** 1.1},
}
# Spacings on which Diffusers' stride t - T // n is the schedule's next timestep (or both are < 0 at the end).
AGREEING = [
    ({"timestep_spacing": "leading"}, 1),
    ({"timestep_spacing": "leading"}, 50),
    ({"timestep_spacing": "leading", "steps_offset": 1}, 7),
    ({"timestep_spacing": "leading"}, 999),
    ({"timestep_spacing": "trailing"}, 10),
    ({"timestep_spacing": "trailing"}, 1),
    ({"timestep_spacing": "linspace"}, 1),
    ({"timestep_spacing": "linspace"}, 1000),
]
CLIPPING = [
    {"clip_sample": False},
    {"clip_sample": True},
    {"clip_sample": True, "clip_sample_range": 1.5},
    {"thresholding": True, "sample_max_value": 2.0, "dynamic_thresholding_ratio": 0.9},
]
STEP_OPTIONS = [(0.0, False), (0.5, False), (1.0, True), (0.0, True), (1.0, False)]  # (eta, use_clipped_model_output)


def _picks(n: int) -> list[int]:
    return sorted({0, 1, n // 2, n - 1} & set(range(n)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_step_grid(schedule, prediction_type):
    """Clipping × spacing/steps, set_alpha_to_one alternating (both for each spacing), (eta,
    use_clipped_model_output) rotating over a few t each: bit-equal."""
    failures, compared = [], 0
    for c, clipping in enumerate(CLIPPING):
        for k, (spacing, n) in enumerate(AGREEING):
            set_alpha_to_one = (c + k) % 2 == 0
            config = dict(SCHEDULES[schedule], prediction_type=prediction_type, **clipping, **spacing)
            ours, ref = pair(set_alpha_to_one=set_alpha_to_one, **config)
            ours.set_timesteps(n)
            ref.set_timesteps(n)
            assert torch.equal(ours.timesteps, ref.timesteps)
            gen = torch.Generator().manual_seed(k)
            sample = torch.randn(2, 3, 4, 4, generator=gen) * 1.5
            ts = ours.timesteps.tolist()
            for i in _picks(len(ts)):
                model_output = torch.randn(2, 3, 4, 4, generator=gen)
                eta, clipped = STEP_OPTIONS[(i + k) % len(STEP_OPTIONS)]
                a = ours.step(model_output, ts[i], sample, eta, clipped, torch.Generator().manual_seed(i))
                b = ref.step(model_output, ts[i], sample, eta, clipped, torch.Generator().manual_seed(i))
                for x, y in zip(a.to_tuple(), b.to_tuple()):
                    compared += 1
                    if not torch.equal(x.nan_to_num(), y.nan_to_num()) or rel_err(x, y) > 0:
                        failures.append((clipping, set_alpha_to_one, spacing, n, ts[i], eta, clipped))
    assert compared > 150 and not failures, failures[:5]


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("use_clipped", [False, True])
def test_every_step_options_on_every_step(eta, use_clipped):
    """All the (eta, use_clipped_model_output) combinations over a whole 10-step schedule, three prediction types."""
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        ours, ref = pair(prediction_type=prediction_type, timestep_spacing="trailing", steps_offset=3)
        ours.set_timesteps(10)
        ref.set_timesteps(10)
        gen = torch.Generator().manual_seed(0)
        for t in ours.timesteps.tolist():
            sample, model_output = torch.randn(2, 3, 4, 4, generator=gen) * 2, torch.randn(2, 3, 4, 4, generator=gen)
            a = ours.step(model_output, t, sample, eta, use_clipped, torch.Generator().manual_seed(t))
            b = ref.step(model_output, t, sample, eta, use_clipped, torch.Generator().manual_seed(t))
            for x, y in zip(a.to_tuple(), b.to_tuple()):
                assert torch.equal(x, y), (prediction_type, t)


def _closed_form(s: DDIMScheduler, model_output, t, prev_t, sample, eta, use_clipped, noise):
    """Song et al. eq. 12 in float64 with ᾱ from ``s.alphas_cumprod``: the step t -> prev_t."""
    ac = s.alphas_cumprod.double()
    a = ac[t]
    a_prev = ac[prev_t] if prev_t >= 0 else s.final_alpha_cumprod.double()
    x, m = sample.double(), model_output.double()
    kind = s.config.prediction_type
    if kind == "epsilon":
        x0, eps = (x - (1 - a).sqrt() * m) / a.sqrt(), m
    elif kind == "sample":
        x0, eps = m, (x - a.sqrt() * m) / (1 - a).sqrt()
    else:
        x0, eps = a.sqrt() * x - (1 - a).sqrt() * m, a.sqrt() * m + (1 - a).sqrt() * x
    if s.config.clip_sample:
        x0 = x0.clamp(-s.config.clip_sample_range, s.config.clip_sample_range)
    if use_clipped:
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()
    out = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * noise.double()
    return out, x0


@pytest.mark.parametrize(
    "spacing, n",
    [
        ({"timestep_spacing": "linspace"}, 10),
        ({"timestep_spacing": "linspace"}, 2),
        ({"timestep_spacing": "trailing"}, 7),
        ({"timestep_spacing": "trailing"}, 999),
        ({"timestep_spacing": "leading", "steps_offset": 145}, 7),
        ({"timestep_spacing": "leading", "steps_offset": 1}, 999),
    ],
)
def test_steps_go_to_the_next_timestep_of_the_schedule(spacing, n):
    """Where Diffusers' stride misses the schedule, ours steps to the next scheduled timestep (closed form, 1e-5)."""
    gen = torch.Generator().manual_seed(0)
    for prediction_type in ("epsilon", "sample", "v_prediction"):
        s = DDIMScheduler(prediction_type=prediction_type, clip_sample=prediction_type == "sample", **spacing)
        s.set_timesteps(n)
        ts = s.timesteps.tolist()
        assert [s.previous_timestep(t) for t in ts] == [*ts[1:], -1]
        assert int(s.previous_timestep(s.timesteps[-1])) == -1
        for i in _picks(len(ts)):
            t, prev_t = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
            sample, model_output = torch.randn(2, 3, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, generator=gen)
            noise = torch.randn(2, 3, 4, 4, generator=gen)
            for eta, clipped in STEP_OPTIONS:
                out = s.step(model_output, t, sample, eta, clipped, variance_noise=noise)
                want_prev, want_x0 = _closed_form(s, model_output, t, prev_t, sample, eta, clipped, noise)
                assert rel_err(out.prev_sample.double(), want_prev) <= 1e-5, (prediction_type, t, eta, clipped)
                assert rel_err(out.pred_original_sample.double(), want_x0) <= 1e-5


def test_diffusers_stride_differs_on_these_schedules():
    """The cases above really are the ones where Diffusers steps elsewhere (so the difference is documented, not
    accidental): linspace n=10 goes 999 -> 899 in Diffusers while the schedule's next timestep is 888."""
    ours, ref = pair(timestep_spacing="linspace")
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert ours.timesteps[:2].tolist() == [999, 888] and ours.previous_timestep(999) == 888
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    a, b = ours.step(eps, 999, x).prev_sample, ref.step(eps, 999, x).prev_sample
    # Diffusers' result is the closed form towards 899, ours towards 888
    assert rel_err(b.double(), _closed_form(ours, eps, 999, 899, x, 0.0, False, torch.zeros(()))[0]) <= 1e-5
    assert rel_err(a.double(), _closed_form(ours, eps, 999, 888, x, 0.0, False, torch.zeros(()))[0]) <= 1e-5
    assert rel_err(a, b) > 1e-4


def test_eta_one_no_nan_where_diffusers_rounds_below_zero():
    """Diffusers returns NaN here: 1 - ᾱ' - σ² is ~1e-13 and rounds below zero in float32; ours takes it as 0."""
    config = dict(beta_schedule="squaredcos_cap_v2", set_alpha_to_one=False, timestep_spacing="trailing")
    ours, ref = pair(**config)
    ours.set_timesteps(1)
    ref.set_timesteps(1)
    x = torch.ones(1, 1, 2, 2)
    noise = torch.randn(1, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    b = ref.step(x * 0.3, 999, x, eta=1.0, variance_noise=noise).prev_sample
    a = ours.step(x * 0.3, 999, x, eta=1.0, variance_noise=noise).prev_sample
    assert torch.isnan(b).all() and torch.isfinite(a).all()
    want, _ = _closed_form(ours, x * 0.3, 999, -1, x, 1.0, False, noise)
    assert rel_err(a.double(), want) <= 1e-5


# -- whole loops ----------------------------------------------------------------------------------------------------
def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    """A fixed, deterministic stand-in for a network (depends on x and t)."""
    return torch.tanh(x * 0.8) * 0.7 + 0.001 * float(t) * torch.sin(x)


@pytest.mark.parametrize(
    "config, n, eta",
    [
        ({}, 50, 0.0),
        ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}, 50, 1.0),
        ({"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, 20, 0.5),
        ({"beta_schedule": "squaredcos_cap_v2", "set_alpha_to_one": False, "thresholding": True}, 10, 1.0),
        ({"prediction_type": "sample", "clip_sample_range": 0.8}, 7, 0.5),
    ],
)
def test_sampling_loop_matches(config, n, eta):
    """Whole chains with one generator: the same trajectory, bit for bit, and the same generator state after it."""
    ours, ref = pair(**config)
    ours.set_timesteps(n)
    ref.set_timesteps(n)
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x_a = x_b = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for t_a, t_b in zip(ours.timesteps, ref.timesteps):
        x_a = ours.step(fake_model(x_a, t_a), t_a, x_a, eta=eta, generator=gen_a).prev_sample
        x_b = ref.step(fake_model(x_b, t_b), t_b, x_b, eta=eta, generator=gen_b).prev_sample
    assert torch.equal(x_a, x_b)
    assert torch.equal(gen_a.get_state(), gen_b.get_state())


def test_full_chain_loop_1000_steps():
    ours, ref = pair(clip_sample=False)
    ours.set_timesteps(1000)
    ref.set_timesteps(1000)
    x_a = x_b = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for t in ours.timesteps.tolist():
        x_a = ours.step(fake_model(x_a, t), t, x_a, eta=0.5, generator=gen_a).prev_sample
        x_b = ref.step(fake_model(x_b, t), t, x_b, eta=0.5, generator=gen_b).prev_sample
    assert torch.equal(x_a, x_b)


# -- noise ----------------------------------------------------------------------------------------------------------
def test_generator_list_global_rng_and_variance_noise():
    ours, ref = pair()
    ours.set_timesteps(50)
    ref.set_timesteps(50)
    sample, model_output = torch.randn(3, 3, 5, 5), torch.randn(3, 3, 5, 5)
    t = int(ours.timesteps[10])
    for make in (
        lambda: [torch.Generator().manual_seed(i) for i in range(3)],
        lambda: [torch.Generator().manual_seed(7)],
        lambda: torch.Generator().manual_seed(7),
    ):
        a = ours.step(model_output, t, sample, eta=1.0, generator=make())
        b = ref.step(model_output, t, sample, eta=1.0, generator=make())
        assert torch.equal(a.prev_sample, b.prev_sample)
    torch.manual_seed(123)
    a = ours.step(model_output, t, sample, eta=0.5).prev_sample
    after_ours = torch.randn(2)
    torch.manual_seed(123)
    b = ref.step(model_output, t, sample, eta=0.5).prev_sample
    after_ref = torch.randn(2)
    assert torch.equal(a, b) and torch.equal(after_ours, after_ref)
    # variance_noise is the same z: equal to drawing it from a generator, and to Diffusers given it
    z = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(9))
    a = ours.step(model_output, t, sample, eta=0.5, variance_noise=z).prev_sample
    b = ref.step(model_output, t, sample, eta=0.5, variance_noise=z).prev_sample
    c = ours.step(model_output, t, sample, eta=0.5, generator=torch.Generator().manual_seed(9)).prev_sample
    assert torch.equal(a, b) and torch.equal(a, c)
    z1 = z[:1]  # broadcast over the batch, as Diffusers
    a = ours.step(model_output, t, sample, eta=0.5, variance_noise=z1).prev_sample
    b = ref.step(model_output, t, sample, eta=0.5, variance_noise=z1).prev_sample
    assert torch.equal(a, b)


def test_noise_drawn_iff_eta_positive():
    """eta > 0 draws at every step, the last one (σ = 0) included, as Diffusers; eta = 0 draws nothing."""
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    s.step(x, 0, x, eta=0.0, generator=gen)
    assert torch.equal(gen.get_state(), state)
    ref_gen = torch.Generator().manual_seed(0)
    s.step(x, 0, x, eta=0.5, generator=gen)
    torch.randn(1, 3, 4, 4, generator=ref_gen)
    assert torch.equal(gen.get_state(), ref_gen.get_state())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    """Outputs keep the sample's dtype and are about as close to the float32 result as Diffusers' are."""
    ours, ref = pair()
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 8, 8, generator=gen).to(dtype)
    model_output = torch.randn(2, 3, 8, 8, generator=gen).to(dtype)
    for t in ours.timesteps[[0, 5, 9]]:
        a = ours.step(model_output, t, sample, eta=0.5, generator=torch.Generator().manual_seed(1))
        b = ref.step(model_output, t, sample, eta=0.5, generator=torch.Generator().manual_seed(1))
        noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype).float()
        exact = ours.step(model_output.float(), t, sample.float(), eta=0.5, variance_noise=noise)
        for x, y, z in zip(a.to_tuple(), b.to_tuple(), exact.to_tuple()):
            assert x.dtype == dtype
            err_ours, err_ref = rel_err(x.float(), z), rel_err(y.float(), z)
            assert err_ours <= max(1.5 * err_ref, 2e-2 if dtype == torch.bfloat16 else 3e-3), (err_ours, err_ref)


# -- state, tables, timesteps ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_tables_identical(schedule, set_alpha_to_one):
    ours, ref = pair(set_alpha_to_one=set_alpha_to_one, **SCHEDULES[schedule])
    for name in ("betas", "alphas", "alphas_cumprod", "final_alpha_cumprod", "timesteps"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), name
    assert len(ours) == len(ref) == 1000
    assert ours.init_noise_sigma == ref.init_noise_sigma == 1.0 and ours.order == ref.order == 1
    assert ours.num_inference_steps is ref.num_inference_steps is None
    x = torch.randn(1, 3, 2, 2)
    assert ours.scale_model_input(x, 5) is x


@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("T", [10, 1000])
def test_timesteps_identical(spacing, T):
    for n in sorted({1, 2, 7, 10, 50, T // 3, T - 1, T} & set(range(1, T + 1))):
        for offset in (0, 1) if spacing != "leading" or n < T else (0,):
            ours, ref = pair(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
            ours.set_timesteps(n, device="cpu")
            ref.set_timesteps(n, device="cpu")
            assert torch.equal(ours.timesteps, ref.timesteps), (n, offset)
            assert ours.timesteps.dtype == torch.int64
            assert ours.num_inference_steps == ref.num_inference_steps == n


def test_add_noise_and_velocity():
    ours, ref = pair(beta_schedule="squaredcos_cap_v2")
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    for t in (torch.tensor([0, 10, 500, 999]), torch.tensor(250), torch.tensor([7])):
        assert rel_err(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)) <= RTOL
        assert rel_err(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t)) <= RTOL
    assert ours.alphas_cumprod.device.type == "cpu"
    assert torch.equal(ours.add_noise(x0, noise, 250), ours.add_noise(x0, noise, torch.tensor(250)))


def test_tensor_timesteps_and_outputs():
    s = DDIMScheduler()
    s.set_timesteps(10)
    x, eps = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    by_int = s.step(eps, 900, x)
    for t in (s.timesteps[0], torch.tensor([900]), np.int64(900), 900.0):
        assert torch.equal(s.step(eps, t, x).prev_sample, by_int.prev_sample)
    assert isinstance(by_int, DDIMSchedulerOutput)
    prev, x0 = s.step(eps, 900, x, return_dict=False)
    assert torch.equal(prev, by_int.prev_sample) and torch.equal(x0, by_int.pred_original_sample)
    assert s.previous_timestep(900) == 800 and int(s.previous_timestep(s.timesteps[0])) == 800


def test_timesteps_assignment_validated():
    s = DDIMScheduler()
    s.set_timesteps(10)
    s.timesteps = torch.tensor([900, 500, 3])
    assert s.previous_timestep(500) == 3 and s.num_inference_steps == 10
    with pytest.raises(ValueError, match="strictly descending"):
        s.timesteps = [3, 500]


def test_sigmoid_and_laplace_schedules_supported():
    """Diffusers' DDIM refuses them (NotImplementedError); ours builds the DDPM betas, so a DDPM model trained with
    them can be sampled with DDIM (the step grid above compares these with Diffusers given the same betas)."""
    for schedule in ("sigmoid", "laplace"):
        with pytest.raises(NotImplementedError):
            RefScheduler(beta_schedule=schedule)
        assert torch.equal(DDIMScheduler(beta_schedule=schedule).betas, DDPMScheduler(beta_schedule=schedule).betas)


# -- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eta": -0.1}, "eta"),
        ({"eta": float("nan")}, "eta"),
        ({"eta": float("inf")}, "eta"),
        ({"eta": "1"}, "eta"),
        ({"timestep": 901}, "timestep=901 is not in the current schedule"),
        ({"timestep": 900.5}, "timestep"),
        ({"generator": "both"}, "generator or variance_noise"),
        ({"model_output": torch.zeros(1, 6, 4, 4)}, "model_output has shape"),
        ({"variance_noise": torch.zeros(2, 3, 4, 4)}, "variance_noise has shape"),
        ({"eta": 5.0, "timestep": 900}, "largest eta for this step"),
    ],
)
def test_step_bad_input(kwargs, match):
    s = DDIMScheduler()
    s.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    args = {"model_output": torch.zeros(1, 3, 4, 4), "timestep": 900, "sample": torch.zeros(1, 3, 4, 4), "eta": 1.0}
    args.update(kwargs)
    if args.pop("generator", None) == "both":
        args.update(generator=gen, variance_noise=torch.zeros(1, 3, 4, 4))
    elif "variance_noise" not in args:
        args.update(generator=gen)
    with pytest.raises(ValueError, match=match):
        s.step(**args)
    assert torch.equal(gen.get_state(), state)  # refused before any work


def test_eta_above_one_where_valid():
    """eta > 1 is allowed where σ² <= 1 - ᾱ' (e.g. the last step) and refused where it would give NaN."""
    s = DDIMScheduler()
    s.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4)
    assert torch.isfinite(s.step(x, 0, x, eta=3.0).prev_sample).all()
    with pytest.raises(ValueError, match="eta=5.0"):
        s.step(x, 900, x, eta=5.0)


def test_step_before_set_timesteps():
    s = DDIMScheduler()
    with pytest.raises(ValueError, match="set_timesteps"):
        s.step(torch.zeros(1, 3, 4, 4), 999, torch.zeros(1, 3, 4, 4))


@pytest.mark.parametrize("n", [0, -1, 1001, 2.5, None, True])
def test_set_timesteps_bad_input(n):
    with pytest.raises(ValueError, match="num_inference_steps"):
        DDIMScheduler().set_timesteps(n)


def test_steps_offset_out_of_range():
    with pytest.raises(ValueError, match="steps_offset=200"):
        DDIMScheduler(steps_offset=200).set_timesteps(10)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"beta_schedule": "cosine"}, "beta_schedule='cosine'"),
        ({"prediction_type": "eps"}, "prediction_type='eps'"),
        ({"timestep_spacing": "uniform"}, "timestep_spacing='uniform'"),
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"steps_offset": 1.5}, "steps_offset"),
        ({"dynamic_thresholding_ratio": 1.5}, "dynamic_thresholding_ratio"),
        ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
    ],
)
def test_constructor_bad_input(config, match):
    with pytest.raises(ValueError, match=match):
        DDIMScheduler(**config)


# -- files ----------------------------------------------------------------------------------------------------------
def test_files_round_trip_with_diffusers(tmp_path):
    ours = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
        timestep_spacing="trailing",
    )
    path = ours.save_pretrained(tmp_path / "a")
    assert path.name == "scheduler_config.json"
    data = json.loads(path.read_text())
    assert data["_class_name"] == "DDIMScheduler" and "_use_default_values" not in data
    ref = RefScheduler.from_pretrained(tmp_path / "a")
    for key, value in ours.config.items():
        if not key.startswith("_"):
            assert ref.config[key] == value, key
    assert torch.equal(ref.alphas_cumprod, ours.alphas_cumprod)
    assert torch.equal(ref.final_alpha_cumprod, ours.final_alpha_cumprod)
    ref.save_pretrained(tmp_path / "b")
    back = DDIMScheduler.from_pretrained(tmp_path / "b")
    assert {k: v for k, v in back.config.items() if not k.startswith("_")} == {
        k: v for k, v in ours.config.items() if not k.startswith("_")
    }
    assert set(RefScheduler().config) - {"_use_default_values"} == set(DDIMScheduler().config) - {"_use_default_values"}
    assert math.isclose(DDIMScheduler.from_pretrained(tmp_path / "b").config.beta_end, 0.012)


# -- GPU: no host-device synchronisation inside step() ----------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_has_no_sync_on_cuda():
    s = DDIMScheduler(prediction_type="v_prediction", thresholding=False)
    s.set_timesteps(50, device="cuda")
    x = torch.randn(4, 3, 32, 32, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    ts = list(s.timesteps)
    s.add_noise(x, x, torch.zeros(4, dtype=torch.int64, device="cuda"))  # tables moved once, before the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i, t in enumerate(ts):
            x = s.step(torch.tanh(x), t, x, eta=0.5 * (i % 3), use_clipped_model_output=i % 2 == 0, generator=gen)
            x = s.add_noise(x.prev_sample, x.prev_sample, torch.zeros(4, dtype=torch.int64, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
    # a CPU generator draws the same numbers for a CUDA sample as for a CPU one
    cpu = DDIMScheduler(prediction_type="v_prediction")
    cpu.set_timesteps(50)
    y_cuda = s.step(x, s.timesteps[3], x, eta=1.0, generator=torch.Generator().manual_seed(0)).prev_sample
    t3 = int(s.timesteps[3])
    y_cpu = cpu.step(x.cpu(), t3, x.cpu(), eta=1.0, generator=torch.Generator().manual_seed(0)).prev_sample
    torch.testing.assert_close(y_cuda.cpu(), y_cpu, rtol=1e-5, atol=1e-5)
