"""The variational-bound building blocks against closed forms (float64 where the identity is exact)."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm import DDPMScheduler
from ddpm.scheduler import discretized_gaussian_log_likelihood, normal_kl

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def paper_tables(s: DDPMScheduler):
    betas = s.betas.double()
    return betas, torch.cumprod(1 - betas, 0)


# -- normal_kl ------------------------------------------------------------------------------------------------------
def test_normal_kl_zero_for_identical():
    mean, logvar = torch.randn(5, 7, dtype=F64), torch.randn(5, 7, dtype=F64)
    assert torch.allclose(normal_kl(mean, logvar, mean, logvar), torch.zeros(5, 7, dtype=F64), atol=1e-15)


def test_normal_kl_hand_value_and_torch_distributions():
    # KL(N(0, 1) || N(1, 4)) = 0.5 (log 4 + 1/4 + 1/4 - 1) = 0.5 log 4 - 0.25
    kl = normal_kl(torch.tensor(0.0, dtype=F64), 0.0, 1.0, math.log(4.0))
    assert kl.item() == pytest.approx(0.5 * math.log(4.0) - 0.25, rel=1e-14)
    m1, m2 = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    lv1, lv2 = torch.randn(10, dtype=F64), torch.randn(10, dtype=F64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), ref, rtol=1e-12)


# -- discretized Gaussian (eq. 13) ------------------------------------------------------------------------------------
PIXELS = torch.arange(256, dtype=F64) / 127.5 - 1.0


@pytest.mark.parametrize("cdf", ["exact", "tanh"])
@pytest.mark.parametrize("mean, log_scale", [(0.0, math.log(0.1)), (0.7, math.log(0.003)), (-0.99, 0.0), (3.0, -1.0)])
def test_bins_sum_to_one(cdf, mean, log_scale):
    means = torch.full((256,), mean, dtype=F64)
    log_scales = torch.full((256,), log_scale, dtype=F64)
    log_p = discretized_gaussian_log_likelihood(PIXELS, means, log_scales, cdf=cdf)
    assert torch.isfinite(log_p).all()
    tol = 1e-9 if cdf == "exact" else 1e-6
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=tol)


def test_exact_bins_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = PIXELS[[0, 5, 128, 200, 255]]
    mean, scale = 0.05, 0.3
    log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)))
    for xi, lp in zip(x.tolist(), log_p.tolist()):
        hi = math.inf if xi > 0.999 else xi + 1 / 255
        lo = -math.inf if xi < -0.999 else xi - 1 / 255
        expected = stats.norm.cdf(hi, mean, scale) - stats.norm.cdf(lo, mean, scale)
        assert lp == pytest.approx(math.log(expected), rel=1e-10)


def test_tanh_variant_close_to_exact_and_safe_far_away():
    x = PIXELS
    means, log_scales = torch.zeros_like(x), torch.full_like(x, math.log(0.2))
    exact = discretized_gaussian_log_likelihood(x, means, log_scales)
    approx = discretized_gaussian_log_likelihood(x, means, log_scales, cdf="tanh")
    assert torch.allclose(exact.exp(), approx.exp(), atol=1e-3)
    # A bin 40 standard deviations away: the exact version stays finite and accurate (no 1e-12 floor).
    far = discretized_gaussian_log_likelihood(
        torch.tensor([0.5], dtype=F64), torch.tensor([-0.5], dtype=F64), torch.tensor([math.log(0.025)], dtype=F64)
    )
    assert torch.isfinite(far).all() and far.item() < -700
    # float32 in, float32 out, gradients finite
    m = torch.zeros(4, requires_grad=True)
    out = discretized_gaussian_log_likelihood(torch.tensor([-1.0, -0.2, 0.3, 1.0]), m, torch.full((4,), -3.0))
    assert out.dtype == torch.float32
    out.sum().backward()
    assert torch.isfinite(m.grad).all()


# -- q(x_t | x_0) ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_q_closed_form_matches_iteration(schedule):
    """Iterating q(x_t|x_{t-1}) = N(sqrt(1-β_t) x_{t-1}, β_t) from x_0 gives eq. 4's mean and variance."""
    s = DDPMScheduler(beta_schedule=schedule)
    betas, _ = paper_tables(s)
    x0 = torch.randn(1, 3, 2, 2, dtype=F64)
    coef, var = torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64)
    checks = {0, 1, 9, 250, 998, 999}
    for t in range(1000):
        coef = coef * (1 - betas[t]).sqrt()
        var = (1 - betas[t]) * var + betas[t]
        if t in checks:
            mean, variance, log_variance = s.q_mean_variance(x0, t)
            assert torch.allclose(mean, coef * x0, rtol=1e-12)
            assert torch.allclose(variance, var.expand_as(x0), rtol=1e-10)
            assert torch.allclose(log_variance, var.log().expand_as(x0), rtol=1e-10)


def test_q_mean_variance_per_sample_t():
    s = DDPMScheduler()
    x0 = torch.randn(3, 2, 4, 4, dtype=F64)
    t = torch.tensor([0, 500, 999])
    mean, variance, log_variance = s.q_mean_variance(x0, t)
    assert mean.shape == variance.shape == log_variance.shape == x0.shape
    for i in range(3):
        m, v, lv = s.q_mean_variance(x0[i : i + 1], int(t[i]))
        assert torch.equal(mean[i], m[0]) and torch.equal(variance[i], v[0]) and torch.equal(log_variance[i], lv[0])


# -- q(x_{t-1} | x_t, x_0) -------------------------------------------------------------------------------------------
def test_posterior_is_bayes_rule():
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precision-weighted combination of two Gaussians."""
    s = DDPMScheduler()
    betas, abar = paper_tables(s)
    x0 = torch.tensor([[0.3, -0.8]], dtype=F64)
    x_t = torch.tensor([[1.1, 0.2]], dtype=F64)
    for t in (1, 2, 50, 500, 999):
        alpha, abar_prev = 1 - betas[t], abar[t - 1]
        precision = 1 / (1 - abar_prev) + alpha / betas[t]
        var = 1 / precision
        mean = var * (abar_prev.sqrt() * x0 / (1 - abar_prev) + alpha.sqrt() * x_t / betas[t])
        m, v, lv = s.q_posterior_mean_variance(x0, x_t, torch.tensor([t]))
        assert torch.allclose(m, mean, rtol=1e-10)
        assert torch.allclose(v, var.expand_as(m), rtol=1e-10)
        assert torch.allclose(lv, var.log().expand_as(m), rtol=1e-10)


def test_posterior_at_t0_is_the_data_with_clipped_log_variance():
    s = DDPMScheduler()
    x0, x_t = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    m, v, lv = s.q_posterior_mean_variance(x0, x_t, 0)
    assert torch.allclose(m, x0, atol=1e-15) and torch.all(v == 0)
    _, v1, lv1 = s.q_posterior_mean_variance(x0, x_t, 1)
    assert torch.equal(lv, lv1) and torch.allclose(lv1, v1.log())


# -- p(x_{t-1} | x_t) ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_p_with_true_prediction_gives_posterior_mean(prediction_type):
    s = DDPMScheduler(prediction_type=prediction_type)
    _, abar = paper_tables(s)
    x0 = torch.rand(3, 3, 4, 4, dtype=F64) * 2 - 1
    eps = torch.randn(3, 3, 4, 4, dtype=F64)
    t = torch.tensor([0, 10, 900])
    a = abar[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction_type]
    out = s.p_mean_variance(target, x_t, t, clip_denoised=False)
    mean, _, _ = s.q_posterior_mean_variance(x0, x_t, t)
    assert torch.allclose(out["pred_original_sample"], x0, atol=1e-9)
    assert torch.allclose(out["mean"], mean, atol=1e-9)
    # eq. 11: μ = (x_t - β_t / sqrt(1 - ᾱ_t) ε) / sqrt(α_t)
    if prediction_type == "epsilon":
        betas = s.betas.double()[t].reshape(-1, 1, 1, 1)
        mu = (x_t - betas / (1 - a).sqrt() * eps) / (1 - betas).sqrt()
        assert torch.allclose(out["mean"], mu, atol=1e-9)


def test_p_variance_types():
    t = torch.tensor([0, 1, 500])
    x_t = torch.randn(3, 2, 2, 2, dtype=F64)
    eps = torch.randn(3, 2, 2, 2, dtype=F64)
    base = DDPMScheduler()
    betas, abar = paper_tables(base)
    abar_prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    tilde = betas * (1 - abar_prev) / (1 - abar)
    clipped_log_tilde = torch.cat([tilde[1:2], tilde[1:]]).log()

    def logvar(variance_type, mo):
        out = DDPMScheduler(variance_type=variance_type).p_mean_variance(mo, x_t, t)
        assert torch.allclose(out["variance"], out["log_variance"].exp())
        return out["log_variance"][:, 0, 0, 0]

    for vt in ("fixed_small", "fixed_small_log"):
        assert torch.allclose(logvar(vt, eps), clipped_log_tilde[t])
    large = torch.cat([tilde[1:2], betas[1:]]).log()  # β̃_1 at t = 0, as improved-diffusion
    for vt in ("fixed_large", "fixed_large_log"):
        assert torch.allclose(logvar(vt, eps), large[t])
    v = torch.full_like(eps, -3.5)
    assert torch.allclose(logvar("learned", torch.cat([eps, v], 1)), torch.full((3,), -3.5, dtype=F64))
    for frac_v, expected in ((1.0, betas[t].log()), (-1.0, clipped_log_tilde[t])):
        got = logvar("learned_range", torch.cat([eps, torch.full_like(eps, frac_v)], 1))
        assert torch.allclose(got, expected)
    mid = logvar("learned_range", torch.cat([eps, torch.zeros_like(eps)], 1))
    assert torch.allclose(mid, 0.5 * (betas[t].log() + clipped_log_tilde[t]))
    with pytest.raises(ValueError, match="2\\*C"):
        DDPMScheduler(variance_type="learned").p_mean_variance(eps, x_t, t)


def test_p_clip_denoised_and_gradients():
    s = DDPMScheduler(variance_type="learned_range")
    x_t = torch.randn(2, 3, 4, 4) * 3
    mo = torch.randn(2, 6, 4, 4, requires_grad=True)
    out = s.p_mean_variance(mo, x_t, torch.tensor([999, 3]))
    assert out["pred_original_sample"].abs().max() <= 1.0
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    true_mean, _, true_logvar = s.q_posterior_mean_variance(x0, x_t, torch.tensor([999, 3]))
    kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])
    nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
    (kl.mean() + nll.mean()).backward()
    assert torch.isfinite(mo.grad).all() and mo.grad[:, 3:].abs().sum() > 0
    unclipped = s.p_mean_variance(mo.detach(), x_t, torch.tensor([999, 3]), clip_denoised=False)
    assert unclipped["pred_original_sample"].abs().max() > 1.0


def test_vlb_tables_cached_per_dtype_without_touching_state():
    s = DDPMScheduler()
    betas = s.betas
    s.q_mean_variance(torch.randn(2, 3), torch.tensor([1, 2]))
    s.q_mean_variance(torch.randn(2, 3, dtype=F64), 5)
    s.q_mean_variance(torch.randn(2, 3, dtype=F64), 6)
    keys = {(dev.type, dtype) for (_, dev, dtype) in s._device_tables}
    assert keys == {("cpu", torch.float32), ("cpu", F64)}
    assert s.betas is betas and s.betas.dtype == torch.float32
