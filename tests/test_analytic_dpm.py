"""Analytic-DPM (ddpm.schedulers.analytic): the moment estimate and the optimal variance against closed forms
(Gaussian data, where the exact noise predictor and the exact reverse conditionals are known), the reduction to
DDPM / DDIM, the table file and its checks, the noise stream, bad input, and the ``ddpm analytic-dpm`` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tests._helpers import tiny_unet

import ddpm
from ddpm.cli import main
from ddpm.schedulers.analytic import (
    MOMENTS_FILE_NAME,
    AnalyticDPMScheduler,
    AnalyticMoments,
    clip_variance_threshold,
    estimate_moments,
    weights_sha256,
)

S = 0.5  # data standard deviation of the Gaussian model: x_0 ~ N(0, S² I), inside [-1, 1] mostly
T = 50
SCHEDULE = dict(num_train_timesteps=T, beta_start=1e-3, beta_end=0.2)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ExactGaussianEps(torch.nn.Module):
    """The exact ε-predictor for x_0 ~ N(0, S² I): E[ε | x_t] = √(1-ᾱ_t) / (ᾱ_t S² + 1 - ᾱ_t) · x_t."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        super().__init__()
        a = alphas_cumprod.double()
        self.register_buffer("k", ((1 - a).sqrt() / (a * S**2 + 1 - a)).float(), persistent=False)

    def forward(self, x, t):
        t = torch.as_tensor(t, device=x.device).reshape(-1)
        return self.k[t].reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) * x


def gaussian_gamma(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """Γ_t = E||E[ε|x_t]||²/d = (1-ᾱ_t) / (ᾱ_t S² + 1 - ᾱ_t) for x_0 ~ N(0, S² I)."""
    a = alphas_cumprod.double().numpy()
    return (1 - a) / (a * S**2 + 1 - a)


def table_for(scheduler, moments, unet=None) -> AnalyticMoments:
    moments = np.broadcast_to(np.asarray(moments, dtype=np.float64), (scheduler.config.num_train_timesteps,))
    fingerprints = {}
    if unet is not None:
        fingerprints = {d: weights_sha256(unet, getattr(torch, d)) for d in ("float32", "float16", "bfloat16")}
    return AnalyticMoments(
        moments=moments.copy(),
        standard_errors=np.zeros_like(moments),
        num_samples_per_timestep=2,
        alphas_cumprod=scheduler.alphas_cumprod.double().numpy(),
        prediction_type=scheduler.config.prediction_type,
        weights_sha256=fingerprints,
    )


def analytic(moments=None, **kwargs) -> AnalyticDPMScheduler:
    config = {**SCHEDULE, **kwargs}
    scheduler = AnalyticDPMScheduler(**config)
    if moments is not None:
        scheduler.set_moments(table_for(scheduler, moments))
    return scheduler


# ---------------------------------------------------------------------------------------------------------------
# The moment estimate
# ---------------------------------------------------------------------------------------------------------------
def test_estimate_matches_the_gaussian_closed_form_within_its_standard_error():
    scheduler = ddpm.DDPMScheduler(**SCHEDULE)
    model = ExactGaussianEps(scheduler.alphas_cumprod)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3000, 1, 4, 4, generator=gen) * S
    N = 200
    table = estimate_moments(model, scheduler, images, N, batch_size=1000, generator=gen)
    exact = gaussian_gamma(scheduler.alphas_cumprod)
    z = (table.moments - exact) / table.standard_errors
    assert np.all(np.abs(z) < 4), z
    assert 0.6 < np.sqrt(np.mean(z**2)) < 1.5  # the stated errors are the real ones
    # ||k x_t||²/d = Γ χ²_d / d: the standard error is Γ √(2/d) / √N
    expected_se = exact * math.sqrt(2 / 16) / math.sqrt(N)
    np.testing.assert_allclose(table.standard_errors, expected_se, rtol=0.25)
    assert table.num_samples_per_timestep == N and table.num_train_timesteps == T


def test_estimate_of_a_subset_and_uint8_images_and_batches():
    scheduler = ddpm.DDPMScheduler(**SCHEDULE)
    model = ExactGaussianEps(scheduler.alphas_cumprod)
    images = torch.randint(0, 256, (20, 1, 2, 2), dtype=torch.uint8)
    a = estimate_moments(model, scheduler, images, 10, 7, torch.Generator().manual_seed(1), timesteps=[3, 40])
    assert np.isfinite(a.moments[[3, 40]]).all() and np.isnan(np.delete(a.moments, [3, 40])).all()
    # an iterable of batches (read until T·N = 20 images) gives the same table as the tensor
    batches = [images[:5], images[5:10], images[10:], images[:1]]
    b = estimate_moments(model, scheduler, batches, 10, 7, torch.Generator().manual_seed(1), timesteps=[3, 40])
    np.testing.assert_array_equal(a.moments[[3, 40]], b.moments[[3, 40]])
    with pytest.raises(ValueError, match="no estimate at timesteps"):
        AnalyticDPMScheduler(**SCHEDULE, moments=a).set_timesteps(5)


def test_estimate_reads_x0_and_v_models_as_their_noise():
    base = ddpm.DDPMScheduler(**SCHEDULE)
    eps_model = ExactGaussianEps(base.alphas_cumprod)
    a = base.alphas_cumprod

    class AsX0(torch.nn.Module):
        def forward(self, x, t):
            ab = a[t].reshape(-1, 1, 1, 1)
            return (x - (1 - ab).sqrt() * eps_model(x, t)) / ab.sqrt()

    class AsV(torch.nn.Module):
        def forward(self, x, t):
            ab = a[t].reshape(-1, 1, 1, 1)
            eps = eps_model(x, t)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            return ab.sqrt() * eps - (1 - ab).sqrt() * x0

    images = torch.randn(200, 1, 2, 2, generator=torch.Generator().manual_seed(0)) * S
    ts = [0, 10, 30]
    ref = estimate_moments(eps_model, base, images, 20, 64, torch.Generator().manual_seed(2), ts)
    for model, kind in ((AsX0(), "sample"), (AsV(), "v_prediction")):
        sched = ddpm.DDPMScheduler(**SCHEDULE, prediction_type=kind)
        table = estimate_moments(model, sched, images, 20, 64, torch.Generator().manual_seed(2), ts)
        np.testing.assert_allclose(table.moments[ts], ref.moments[ts], rtol=2e-4)
        assert table.prediction_type == kind


# ---------------------------------------------------------------------------------------------------------------
# The variance
# ---------------------------------------------------------------------------------------------------------------
def reference_variances(scheduler, gamma, mean_type, eta=0.0, k=1, pixels=None):
    """σ² of each step from the formulas of the reference notes (float64 from the float32 ᾱ)."""
    a_all = scheduler.alphas_cumprod.double().numpy()
    ts = scheduler.timesteps.tolist()
    out = []
    for i, r in enumerate(ts):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        if s < 0:
            out.append(0.0)
            continue
        ar, as_ = a_all[r], a_all[s]
        beta_skip = 1 - ar / as_
        small = beta_skip * (1 - as_) / (1 - ar)
        c = min(max((1 - ar) / ar * (1 - gamma[r]), 0.0), 1.0)
        if mean_type == "ddpm":
            var = small + as_ * beta_skip**2 / (1 - ar) ** 2 * c
        else:
            lam2 = eta**2 * small
            var = lam2 + (math.sqrt(as_) - math.sqrt((1 - as_ - lam2) * ar / (1 - ar))) ** 2 * c
        if sorted(ts)[:k] and s in sorted(ts)[:k]:
            var = min(var, (pixels * 2 / 255 * math.sqrt(math.pi / 2)) ** 2)
        out.append(var)
    return np.array(out)


@pytest.mark.parametrize("mean_type, eta, pixels", [("ddpm", 0.0, 2.0), ("ddim", 0.0, 1.0), ("ddim", 0.7, 1.0)])
@pytest.mark.parametrize("steps, spacing", [(1, "leading"), (2, "leading"), (7, "linspace"), (10, "trailing")])
def test_variance_is_the_reference_formula(mean_type, eta, pixels, steps, spacing):
    gamma = np.random.default_rng(steps).uniform(0.6, 1.05, size=T)  # Γ > 1 too: c is clipped at 0
    scheduler = analytic(gamma, mean_type=mean_type, eta=eta, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    expected = reference_variances(scheduler, gamma, mean_type, eta, k=1, pixels=pixels)
    np.testing.assert_allclose(scheduler.step_variances, expected, rtol=1e-12, atol=0)


def test_gamma_one_gives_ddpm_small_and_ddim_lambda():
    ddpm_small = analytic(1.0, mean_type="ddpm", clip_variance_steps=0)
    ddim = analytic(1.0, mean_type="ddim", eta=0.6, clip_variance_steps=0)
    for sched in (ddpm_small, ddim):
        sched.set_timesteps(9)
    a = ddpm_small.alphas_cumprod.double().numpy()
    ts = ddpm_small.timesteps.numpy()
    r, s = ts[:-1], ts[1:]
    small = (1 - a[r] / a[s]) * (1 - a[s]) / (1 - a[r])
    np.testing.assert_allclose(ddpm_small.step_variances[:-1], small, rtol=1e-12)
    np.testing.assert_allclose(ddim.step_variances[:-1], 0.36 * small, rtol=1e-12)


def test_clipping_of_the_last_steps():
    gamma = np.full(T, 0.2)  # large variances, so the clip bites
    for mean_type, pixels in (("ddpm", 2.0), ("ddim", 1.0)):
        free = analytic(gamma, mean_type=mean_type, clip_variance_steps=0)
        free.set_timesteps(8)
        for k in (1, 3):
            clipped = analytic(gamma, mean_type=mean_type, clip_variance_steps=k)
            clipped.set_timesteps(8)
            v0, v1 = free.step_variances, clipped.step_variances
            cut = slice(8 - 1 - k, 7)  # the k noisy steps into the k smallest visited timesteps
            np.testing.assert_array_equal(v1[: 8 - 1 - k], v0[: 8 - 1 - k])
            np.testing.assert_allclose(v1[cut], np.minimum(v0[cut], clip_variance_threshold(pixels)))
            assert (v1[cut] < v0[cut]).all() and v1[-1] == 0.0
    custom = analytic(gamma, clip_variance_pixels=0.5)
    custom.set_timesteps(8)
    assert custom.step_variances[-2] == pytest.approx((0.5 * 2 / 255) ** 2 * math.pi / 2)


@pytest.mark.parametrize("mean_type, eta", [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 1.0)])
def test_sampling_gaussian_data_reproduces_the_true_marginals(mean_type, eta):
    """With the exact ε-predictor of Gaussian data, E[x_s|x_r] is the step's mean and Var[x_s|x_r] is constant, so
    with the analytic variance each step is the true reverse conditional: x_s ~ N(0, ᾱ_s S² + 1 - ᾱ_s) exactly."""
    base = ddpm.DDPMScheduler(**SCHEDULE)
    model = ExactGaussianEps(base.alphas_cumprod)
    gamma = gaussian_gamma(base.alphas_cumprod)
    sched = analytic(gamma, mean_type=mean_type, eta=eta, clip_sample=False, clip_variance_steps=0)
    small = analytic(1.0, mean_type=mean_type, eta=eta, clip_sample=False, clip_variance_steps=0)  # DDPM / DDIM
    a = base.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    for s_ in (sched, small):
        s_.set_timesteps(5)
    ts = sched.timesteps.tolist()
    start = torch.randn(20000, 1, 2, 2, generator=gen, dtype=torch.float64) * math.sqrt(a[ts[0]] * S**2 + 1 - a[ts[0]])
    x, y = start.clone(), start.clone()
    errors_small = []
    for i, t in enumerate(ts[:-1]):
        x = sched.step(model(x, t), t, x, generator=gen).prev_sample
        y = small.step(model(y, t), t, y, generator=gen).prev_sample
        v_true = float(a[ts[i + 1]] * S**2 + 1 - a[ts[i + 1]])
        assert x.var().item() == pytest.approx(v_true, rel=0.03)
        assert abs(x.mean().item()) < 0.02
        errors_small.append(abs(y.var().item() / v_true - 1))
    assert max(errors_small) > 0.1  # the test can tell: without the correction the marginals are off


def test_gamma_one_ddpm_steps_equal_ddpm_scheduler_fixed_small():
    ours = analytic(1.0, clip_variance_steps=0)
    ref = ddpm.DDPMScheduler(**SCHEDULE, variance_type="fixed_small")
    for s in (ours, ref):
        s.set_timesteps(6)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    y = x.clone()
    for t in ours.timesteps:
        out = torch.sin(3 * x) * 0.7
        x = ours.step(out, t, x, generator=g1).prev_sample
        y = ref.step(out, t, y, generator=g2).prev_sample
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_gamma_one_ddim_steps_equal_diffusers_ddim(eta):
    diffusers = pytest.importorskip("diffusers")
    ours = analytic(1.0, mean_type="ddim", eta=eta, clip_variance_steps=0)
    ref = diffusers.DDIMScheduler(**SCHEDULE, set_alpha_to_one=True)
    for s in (ours, ref):
        s.set_timesteps(6)
    assert ours.timesteps.tolist() == ref.timesteps.tolist()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    y = x.clone()
    for t in ours.timesteps:
        out = torch.sin(3 * x) * 0.7
        x = ours.step(out, t, x, generator=g1).prev_sample
        y = ref.step(out, t, y, eta=eta, generator=g2).prev_sample
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# The noise stream
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mean_type", ["ddpm", "ddim"])
def test_step_draws_one_noise_tensor_per_noisy_step(mean_type):
    sched = analytic(np.full(T, 0.9), mean_type=mean_type)
    sched.set_timesteps(4)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    std = np.sqrt(sched.step_variances)
    for i, t in enumerate(sched.timesteps.tolist()):
        gen = torch.Generator().manual_seed(7)
        mean = sched.step(out, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
        mean = mean - std[i] * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(7))
        result = sched.step(out, t, x, generator=gen).prev_sample
        after = gen.get_state()
        if i < 3:  # one [3, 1, 4, 4] draw
            probe = torch.Generator().manual_seed(7)
            torch.randn(3, 1, 4, 4, generator=probe)
            assert torch.equal(after, probe.get_state())
        else:  # the last step: the clean image, no draw
            assert torch.equal(after, torch.Generator().manual_seed(7).get_state())
            assert torch.equal(result, mean)
        # a list of one generator per row: row i from generator i
        gens = [torch.Generator().manual_seed(10 + j) for j in range(3)]
        rows = sched.step(out, t, x, generator=gens).prev_sample
        for j in range(3):
            single = sched.step(out[j : j + 1], t, x[j : j + 1], generator=torch.Generator().manual_seed(10 + j))
            torch.testing.assert_close(rows[j : j + 1], single.prev_sample)


def test_step_without_sync_on_timesteps_elements_and_tuple_output():
    sched = analytic(0.9)
    sched.set_timesteps(3)
    x = torch.zeros(1, 1, 2, 2)
    prev, x0 = sched.step(torch.ones_like(x), sched.timesteps[0], x, generator=None, return_dict=False)
    assert prev.shape == x.shape and x0.abs().max() <= 1.0
    assert sched.previous_timestep(sched.timesteps[0].item()) == sched.timesteps[1].item()
    assert sched.previous_timestep(0) == -1


# ---------------------------------------------------------------------------------------------------------------
# The table file and its checks
# ---------------------------------------------------------------------------------------------------------------
def test_table_round_trip_and_diffusers_ignores_it(tmp_path):
    unet = tiny_unet(in_channels=1)
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=20)
    pipe = ddpm.DDPMPipeline(unet, scheduler)
    pipe.save_pretrained(tmp_path)
    images = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    table = estimate_moments(unet, scheduler, images, 3, 16, torch.Generator().manual_seed(0), metadata={"x": 1})
    table.moments[4] = np.nan  # missing values survive as null
    path = table.save(tmp_path)
    assert path == tmp_path / MOMENTS_FILE_NAME
    assert json.loads(path.read_text())["moments"][4] is None
    back = AnalyticMoments.load(tmp_path)
    np.testing.assert_allclose(back.moments, table.moments, rtol=1e-8)
    np.testing.assert_allclose(back.standard_errors, table.standard_errors, rtol=1e-5)
    np.testing.assert_array_equal(back.alphas_cumprod, table.alphas_cumprod)
    assert back.weights_sha256 == table.weights_sha256 and back.metadata == {"x": 1}
    back.check(scheduler, unet)
    back.check_unet(tiny_unet(in_channels=1).half())  # the same weights loaded as float16 / bfloat16
    back.check_unet(tiny_unet(in_channels=1).to(torch.bfloat16))
    diffusers = pytest.importorskip("diffusers")
    loaded = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    assert loaded.scheduler.config.num_train_timesteps == 20


def test_table_mismatches_are_named(tmp_path):
    unet = tiny_unet(in_channels=1)
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=20)
    table = table_for(scheduler, 0.9, unet)
    with pytest.raises(ValueError, match=r"num_train_timesteps=20.*num_train_timesteps=30.*ddpm analytic-dpm"):
        table.check_scheduler(ddpm.DDPMScheduler(num_train_timesteps=30))
    with pytest.raises(ValueError, match=r"another beta schedule: alphas_cumprod\[.*ddpm analytic-dpm"):
        table.check_scheduler(ddpm.DDPMScheduler(num_train_timesteps=20, beta_end=0.03))
    with pytest.raises(ValueError, match=r"prediction_type='epsilon'.*'v_prediction'"):
        table.check_scheduler(ddpm.DDPMScheduler(num_train_timesteps=20, prediction_type="v_prediction"))
    with pytest.raises(ValueError, match=r"other UNet weights.*ddpm analytic-dpm"):
        table.check_unet(tiny_unet(in_channels=1, seed=1))
    with pytest.raises(ValueError, match="another beta schedule"):
        AnalyticDPMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2", moments=table)
    # from_pipeline: the folder's table, checked against the pipeline's UNet
    pipe = ddpm.DDPMPipeline(unet, scheduler)
    pipe.save_pretrained(tmp_path)
    loaded = ddpm.DDPMPipeline.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"analytic_dpm.json.*ddpm analytic-dpm --model"):
        AnalyticDPMScheduler.from_pipeline(loaded)
    table_for(scheduler, 0.9, tiny_unet(in_channels=1, seed=3)).save(tmp_path)
    with pytest.raises(ValueError, match="other UNet weights"):
        AnalyticDPMScheduler.from_pipeline(loaded)
    (tmp_path / MOMENTS_FILE_NAME).write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not an Analytic-DPM moment table"):
        AnalyticMoments.load(tmp_path)


def test_scheduler_config_round_trip_keeps_the_table_out(tmp_path):
    sched = analytic(0.9, mean_type="ddim", eta=0.3, clip_variance_pixels=1.5)
    assert "moments" not in sched.config
    sched.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert data["mean_type"] == "ddim" and data["eta"] == 0.3 and "moments" not in data
    again = AnalyticDPMScheduler.from_pretrained(tmp_path)
    assert dict(again.config) == dict(sched.config) and again.moments is None
    # swapped in from a DDPM config (the usual from_config swap), without warnings about its keys
    swapped = AnalyticDPMScheduler.from_config(ddpm.DDPMScheduler(num_train_timesteps=20).config)
    assert swapped.config.num_train_timesteps == 20 and swapped.config.mean_type == "ddpm"


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eta=-0.1), "eta=-0.1 must be"),
        (dict(eta=float("nan")), "eta=nan must be"),
        (dict(mean_type="ddpm++"), "mean_type='ddpm\\+\\+' is not supported; allowed: 'ddpm', 'ddim'"),
        (dict(clip_variance_steps=-1), "clip_variance_steps=-1 must be an integer >= 0"),
        (dict(clip_variance_pixels=-2.0), "clip_variance_pixels=-2.0 must be a number >= 0"),
        (dict(prediction_type="score"), "prediction_type='score' is not supported"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AnalyticDPMScheduler(**SCHEDULE, **kwargs)


def test_bad_use():
    sched = AnalyticDPMScheduler(**SCHEDULE)
    with pytest.raises(ValueError, match=r"no moment table.*ddpm analytic-dpm"):
        sched.set_timesteps(10)
    with pytest.raises(ValueError, match="call set_timesteps"):
        sched.step(torch.zeros(1, 1, 2, 2), 49, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="must be an AnalyticMoments table"):
        sched.set_moments({"moments": [1.0] * T})
    sched.set_moments(table_for(sched, 0.9))
    for n in (0, T + 1, 2.5):
        with pytest.raises(ValueError, match=rf"num_inference_steps={n!r} must be an integer in \[1, "):
            sched.set_timesteps(n)
    with pytest.raises(ValueError, match="strictly descending"):
        sched.set_timesteps(timesteps=[3, 5])
    sched.set_timesteps(timesteps=[40, 20, 0])
    with pytest.raises(ValueError, match="timestep=7 is not in the current schedule"):
        sched.step(torch.zeros(1, 1, 2, 2), 7, torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="model_output has shape"):
        sched.step(torch.zeros(1, 2, 2, 2), 40, torch.zeros(1, 1, 2, 2))
    scheduler = ddpm.DDPMScheduler(**SCHEDULE)
    model = ExactGaussianEps(scheduler.alphas_cumprod)
    images = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError, match="num_samples_per_timestep=1 must be an integer >= 2"):
        estimate_moments(model, scheduler, images, 1)
    with pytest.raises(ValueError, match="batch_size=0 must be an integer >= 1"):
        estimate_moments(model, scheduler, images, 2, 0)
    with pytest.raises(ValueError, match=r"timesteps must be .* in \[0, 49\]"):
        estimate_moments(model, scheduler, images, 2, 4, timesteps=[50])
    with pytest.raises(ValueError, match="images must be"):
        estimate_moments(model, scheduler, torch.zeros(4, 2, 2), 2)


# ---------------------------------------------------------------------------------------------------------------
# The command, then sampling with its table
# ---------------------------------------------------------------------------------------------------------------
def test_command_writes_the_table_and_the_pipeline_samples_with_it(tmp_path, capsys):
    unet = tiny_unet(in_channels=3)
    pipe = ddpm.DDPMPipeline(unet, ddpm.DDPMScheduler(num_train_timesteps=20, variance_type="fixed_large"))
    folder = tmp_path / "pipe"
    pipe.save_pretrained(folder)
    data = tmp_path / "train.npz"
    np.savez(data, images=np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    args = ["analytic-dpm", "--model", str(folder), "--data", str(data), "--no-progress"]
    assert main([*args, "--num-samples-per-timestep", "4", "--batch-size", "16", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "4 Monte Carlo samples per timestep" in err and "mean standard error" in err
    table = AnalyticMoments.load(folder)
    assert table.num_train_timesteps == 20 and table.num_samples_per_timestep == 4
    assert "--num-samples-per-timestep 4" in table.metadata["command"]
    assert np.isfinite(table.moments).all() and (table.standard_errors > 0).all()

    loaded = ddpm.DDPMPipeline.from_pretrained(folder)
    for mean_type in ("ddpm", "ddim"):
        loaded.scheduler = AnalyticDPMScheduler.from_pipeline(
            ddpm.DDPMPipeline.from_pretrained(folder), mean_type=mean_type
        )
        images = loaded(
            batch_size=2,
            num_inference_steps=5,
            output_type="pt",
            progress=False,
            generator=torch.Generator().manual_seed(0),
        ).images
        assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()

    for bad, match in (
        (["--num-samples-per-timestep", "1"], "--num-samples-per-timestep must be >= 2"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ):
        assert main([*args, *bad]) == 2
        assert match in capsys.readouterr().err
    assert main(["analytic-dpm", "--model", str(tmp_path / "nowhere"), "--data", str(data)]) == 2
    assert "--model must be a local pipeline folder" in capsys.readouterr().err
    assert main(["analytic-dpm", "--model", str(folder), "--data", str(tmp_path / "none.npz")]) == 2
    assert "--data" in capsys.readouterr().err


def test_ddim_form_with_eta_one_is_the_ddpm_form():
    """λ² = β̃ makes DDIM's mean DDPM's posterior mean, so the two analytic variances coincide too."""
    gamma = np.random.default_rng(0).uniform(0.7, 1.0, size=T)
    a = analytic(gamma, mean_type="ddpm", clip_sample=False, clip_variance_pixels=1.0)
    b = analytic(gamma, mean_type="ddim", eta=1.0, clip_sample=False, clip_variance_pixels=1.0)
    for s in (a, b):
        s.set_timesteps(7)
    np.testing.assert_allclose(a.step_variances, b.step_variances, rtol=1e-9, atol=1e-15)
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for t in a.timesteps.tolist():
        out = torch.sin(3 * x)
        xa = a.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        xb = b.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(xa, xb, rtol=1e-6, atol=1e-6)  # x̂0 uses the float32 √ᾱ, as DDPM
        x = xa


def test_bundled_model_table_belongs_to_the_bundled_weights():
    """src/ddpm/assets/default/analytic_dpm.json: recomputed whenever the bundled weights or schedule change."""
    pipe = ddpm.DDPMPipeline.from_pretrained("ddpm/default")
    for mean_type in ("ddpm", "ddim"):
        sched = AnalyticDPMScheduler.from_pipeline(pipe, mean_type=mean_type)
        sched.set_timesteps(10)
        assert np.isfinite(sched.step_variances).all()
    table = sched.moments
    assert table.num_train_timesteps == 1000 and table.num_samples_per_timestep == 100
    assert np.isfinite(table.moments).all() and table.mean_standard_error < 0.005
    # Γ_t <= 1 for a good model, up to its standard error
    assert (table.moments <= 1 + 3 * table.standard_errors).all()
    assert "--num-samples-per-timestep 100" in table.metadata["command"]
