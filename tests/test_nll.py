"""The variational bound in bits/dim against closed forms: an oracle model makes every KL term zero, the prior term
and the decoder term match hand computations, parts add up, batching does not change results."""

import math

import numpy as np
import pytest
import torch

import ddpm
from _helpers import tiny_unet
from ddpm.evaluation.nll import bits_per_dim, prior_bpd, summarize, to_model_space, variational_bound

T = 40


class Oracle(torch.nn.Module):
    """Knows the single training image: returns the true ε of x_t (ε-prediction), optionally followed by a
    variance channel set to ``v`` (for learned_range)."""

    def __init__(self, scheduler, x0, v=None):
        super().__init__()
        self.scheduler, self.x0, self.v = scheduler, x0, v

    def forward(self, x_t, t):
        a = self.scheduler.alphas_cumprod.double()[t].to(x_t.dtype).reshape(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()
        if self.v is not None:
            eps = torch.cat([eps, torch.full_like(eps, self.v)], dim=1)
        return eps


def _image(seed=0, shape=(1, 3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def _decoder_closed_form(x0, log_variance):
    """-log2 of the Gaussian mass of each pixel's bin (edge bins open), mean over pixels, with the exact CDF."""
    from scipy.stats import norm

    x = x0.double().numpy()
    s = math.exp(0.5 * log_variance)
    hi = np.where(x > 0.999, np.inf, x + 1 / 255)
    lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
    mass = norm.cdf(hi, loc=x, scale=s) - norm.cdf(lo, loc=x, scale=s)
    return float(np.mean(-np.log2(mass)))


@pytest.mark.parametrize("variance_type", ["fixed_small", "learned_range"])
def test_oracle_model_makes_every_kl_term_zero(variance_type):
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    x0 = to_model_space(_image()).double()
    model = Oracle(scheduler, x0, v=-1.0 if variance_type == "learned_range" else None)
    res = variational_bound(model, scheduler, x0, generator=torch.Generator().manual_seed(0))
    assert res["terms_bpd"].shape == (1, T)
    assert res["terms_bpd"][:, 1:].abs().max() < 1e-9
    assert res["mse"].max() < 1e-10
    # The decoder: mean x_0 exactly, variance β̃ at t = 1 (the clipped log-variance).
    betas = scheduler.betas.double()  # the schedule in float64, as the paper's code precomputes it
    a = torch.cumprod(1 - betas, 0)
    beta_tilde_1 = float(betas[1] * (1 - a[0]) / (1 - a[1]))
    assert res["decoder_bpd"].item() == pytest.approx(_decoder_closed_form(x0, math.log(beta_tilde_1)), rel=1e-6)
    assert res["total_bpd"].item() == pytest.approx(res["decoder_bpd"].item() + res["prior_bpd"].item(), abs=1e-8)


def test_prior_term_equals_hand_computed_kl():
    scheduler = ddpm.DDPMScheduler()  # the paper's T = 1000, linear 1e-4 .. 0.02
    x0 = to_model_space(_image(1, (2, 3, 8, 8))).double()
    a_T = float(torch.cumprod(1 - scheduler.betas.double(), 0)[-1])
    m = math.sqrt(a_T) * x0.numpy()
    v = 1 - a_T
    kl = 0.5 * (-1 - math.log(v) + v + m**2)  # KL(N(m, v) || N(0, 1)) per dimension, nats
    expected = kl.reshape(2, -1).mean(1) / math.log(2)
    np.testing.assert_allclose(prior_bpd(scheduler, x0).numpy(), expected, rtol=1e-6)
    assert 1e-7 < expected.max() < 1e-4  # "L_T ≈ 1e-5 bits/dim" (paper section 4)


def test_bits_per_dim_conversion():
    assert bits_per_dim(3 * 32 * 32 * math.log(2) * 3.5, 3 * 32 * 32) == pytest.approx(3.5)
    assert bits_per_dim(torch.tensor([math.log(2)]), 1).item() == pytest.approx(1.0)


def _tiny_unet(out_channels=3):
    unet = tiny_unet(3, out_channels)
    return unet


@pytest.mark.parametrize("variance_type", ["fixed_large", "learned_range"])
def test_parts_add_up_and_batching_does_not_matter(variance_type):
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=T, variance_type=variance_type)
    unet = _tiny_unet(6 if variance_type == "learned_range" else 3)
    x = _image(2, (3, 3, 8, 8))

    def gens(idx):
        return [torch.Generator().manual_seed(100 + i) for i in idx]

    ref = variational_bound(unet, scheduler, x, generator=gens(range(3)))
    parts = ref["prior_bpd"] + ref["terms_bpd"].sum(1)
    torch.testing.assert_close(ref["total_bpd"], parts)
    torch.testing.assert_close(ref["decoder_bpd"], ref["terms_bpd"][:, 0])
    assert torch.isfinite(ref["terms_bpd"]).all() and (ref["terms_bpd"] >= 0).all()
    # Several timesteps per model call, and an image on its own, give the same numbers.
    batched = variational_bound(unet, scheduler, x, generator=gens(range(3)), t_batch=7)
    torch.testing.assert_close(batched["terms_bpd"], ref["terms_bpd"], rtol=1e-5, atol=1e-6)
    alone = variational_bound(unet, scheduler, x[1:2], generator=gens([1]))
    torch.testing.assert_close(alone["terms_bpd"][0], ref["terms_bpd"][1], rtol=1e-5, atol=1e-6)
    summary = summarize(ref)
    assert summary["num_images"] == 3
    assert summary["total_bpd"] == pytest.approx(float(ref["total_bpd"].mean()))
    assert summary["rate_bpd"] + summary["decoder_bpd"] == pytest.approx(summary["total_bpd"])


def test_uint8_nhwc_and_float_inputs_agree():
    scheduler = ddpm.DDPMScheduler(num_train_timesteps=5)
    unet = _tiny_unet()
    x = _image(3, (1, 3, 8, 8))
    a = variational_bound(unet, scheduler, x, generator=torch.Generator().manual_seed(0))
    b = variational_bound(unet, scheduler, x.permute(0, 2, 3, 1).numpy(), generator=torch.Generator().manual_seed(0))
    c = variational_bound(unet, scheduler, x.float() / 127.5 - 1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a["total_bpd"], b["total_bpd"])
    torch.testing.assert_close(a["total_bpd"], c["total_bpd"])
    with pytest.raises(ValueError, match="t_batch"):
        variational_bound(unet, scheduler, x, t_batch=0)
