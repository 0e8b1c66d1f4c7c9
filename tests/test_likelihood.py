"""ddpm.likelihood, the one owner of the variational bound's terms: each term against its closed form (float64, from
the betas by hand), and the training loss and the evaluation's bound both reading their numbers from it."""

import math

import numpy as np
import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.likelihood import LN2, bits_per_dim, mean_flat, predicted_noise, prior_bpd, vb_terms_bpd

T = 30


def _tables(scheduler):
    """abar_t, abar_{t-1} and the posterior variance beta~_t, by hand in float64 from the betas (eqs. 4, 7)."""
    betas = scheduler.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return betas, abar, abar_prev, betas * (1 - abar_prev) / (1 - abar)


def _batch(B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (B, 3, 4, 4), generator=g).double() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    return x0, noise


def test_mean_flat_ln2_and_bits_per_dim():
    x = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    torch.testing.assert_close(mean_flat(x), torch.tensor([5.5, 17.5], dtype=torch.float64))
    assert LN2 == math.log(2.0)
    assert bits_per_dim(12 * math.log(2) * 2.5, 12) == pytest.approx(2.5)


def test_kl_terms_match_the_gaussian_kl_in_closed_form():
    """A fixed_large model with the true ε: its mean is the posterior mean, its variance beta_t, so
    L_t = KL(N(mu, beta~_t) || N(mu, beta_t)) = (beta~/beta - 1 - log(beta~/beta)) / 2 nats per dimension."""
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large")
    x0, noise = _batch()
    t = torch.tensor([1, 5, 17, T - 1])
    betas, abar, _, post = _tables(scheduler)
    a = abar[t].reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise  # eq. 4 with the float64 abar of the bound's tables
    terms = vb_terms_bpd(scheduler, noise, x0, x_t, t)
    ratio = post[t] / betas[t]
    expected = 0.5 * (ratio - 1 - ratio.log()) / math.log(2)
    torch.testing.assert_close(terms["bpd"], expected, rtol=1e-7, atol=1e-12)
    assert terms["bpd"].dtype == torch.float64 and terms["mean"].shape == x0.shape
    torch.testing.assert_close(terms["pred_original_sample"], x0, rtol=0, atol=1e-12)


def test_predicted_noise_inverts_add_noise():
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T)
    x0, noise = _batch(seed=5)
    t = torch.tensor([0, 3, 15, T - 1])
    x_t = scheduler.add_noise(x0, noise, t)
    torch.testing.assert_close(predicted_noise(scheduler, x_t, x0, t), noise, rtol=0, atol=1e-10)
    eps = predicted_noise(scheduler, x_t.float(), x0.float(), t)
    assert eps.dtype == torch.float32
    torch.testing.assert_close(eps, noise.float(), rtol=0, atol=2e-5)  # 1/sqrt(1 - abar_0) amplifies rounding


def test_kl_term_of_a_wrong_mean_adds_the_squared_error_over_the_variance():
    """fixed_small with the true variance and an x_0 off by d: the means differ by coef1_t * d, so
    L_t = (coef1_t d)^2 / (2 beta~_t) nats per dimension (coef1 = beta_t sqrt(abar_{t-1}) / (1 - abar_t))."""
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", prediction_type="sample")
    x0, noise = _batch(seed=1)
    t = torch.tensor([2, 9, 20, 28])
    x_t = scheduler.add_noise(x0, noise, t)
    d = 0.1
    terms = vb_terms_bpd(scheduler, x0 + d, x0, x_t, t)
    betas, abar, abar_prev, post = _tables(scheduler)
    coef1 = betas[t] * abar_prev[t].sqrt() / (1 - abar[t])
    expected = (coef1 * d) ** 2 / (2 * post[t]) / math.log(2)
    torch.testing.assert_close(terms["bpd"], expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("cdf", ["exact", "tanh"])
def test_decoder_term_at_t0_is_the_discretized_gaussian_nll(cdf):
    """t = 0: -log2 of the mass of each pixel's bin under N(mean, beta~_1) (the clipped log-variance), averaged."""
    from scipy.stats import norm

    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T, variance_type="fixed_small", prediction_type="sample")
    x0, noise = _batch(B=2, seed=2)
    t = torch.zeros(2, dtype=torch.int64)
    x_t = scheduler.add_noise(x0, noise, t)
    terms = vb_terms_bpd(scheduler, x0, x0, x_t, t, decoder_cdf=cdf)
    _, _, _, post = _tables(scheduler)
    x, mean, s = x0.numpy(), terms["mean"].numpy(), math.sqrt(post[1])
    np.testing.assert_allclose(terms["mean"].numpy(), x, atol=1e-9)  # the posterior mean at t = 0 is x_0
    hi = np.where(x > 0.999, np.inf, x + 1 / 255)
    lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
    expected = (-np.log2(norm.cdf(hi, mean, s) - norm.cdf(lo, mean, s))).reshape(2, -1).mean(1)
    np.testing.assert_allclose(terms["bpd"].numpy(), expected, rtol=1e-9 if cdf == "exact" else 1e-3)
    with pytest.raises(ValueError, match="cdf='erf'"):
        vb_terms_bpd(scheduler, x0, x0, x_t, t, decoder_cdf="erf")


def test_prior_term_is_the_kl_to_the_standard_normal():
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T)
    x0, _ = _batch(B=2, seed=3)
    _, abar, _, _ = _tables(scheduler)
    v = float(1 - abar[-1])
    kl = 0.5 * (-1 - math.log(v) + v + abar[-1] * x0**2)
    torch.testing.assert_close(prior_bpd(scheduler, x0), mean_flat(kl) / math.log(2), rtol=1e-10, atol=0)


def test_training_loss_and_evaluation_bound_read_the_same_terms():
    """The hybrid loss's vb is vb_terms_bpd unclipped; the bound's terms_bpd[:, t] is vb_terms_bpd clipped, at the x_t
    drawn from the same generator: bit for bit."""
    from ddpm.evaluation.nll import variational_bound
    from ddpm.training.losses import diffusion_loss

    scheduler = ddpm.DDPMScheduler(num_train_timesteps=6, variance_type="learned_range")
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(0, 256, (2, 3, 8, 8), generator=g).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 4])
    x_t = scheduler.add_noise(x0, noise, t)
    output = torch.randn((2, 6, 8, 8), generator=g)
    loss = diffusion_loss(output, scheduler, x0, x_t, noise, t)
    assert torch.equal(loss["vb"], vb_terms_bpd(scheduler, output, x0, x_t, t)["bpd"].float())

    unet = tiny_unet(3, 6)
    result = variational_bound(unet, scheduler, x0, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    for step in range(5, -1, -1):  # the bound draws one noise tensor per t, from T - 1 down to 0
        noise = torch.randn(x0.shape, generator=g)
        tt = torch.full((2,), step)
        x_t = scheduler.add_noise(x0, noise, tt)
        with torch.no_grad():
            term = vb_terms_bpd(scheduler, unet(x_t, tt).sample, x0, x_t, tt, clip_denoised=True)["bpd"]
        assert torch.equal(result["terms_bpd"][:, step], term.double()), step
    assert torch.equal(result["prior_bpd"], prior_bpd(scheduler, x0).double())
