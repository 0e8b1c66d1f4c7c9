import math

import pytest
import torch

from ddpm.training.losses import compute_loss, diffusion_loss


def _scheduler(**kw):
    from ddpm.scheduler import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", **kw)


def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randint(0, 256, (n, 3, 4, 4), generator=g).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 10, 500, 998, 999])[:n]
    return x0, noise, t


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_perfect_prediction_has_zero_simple_loss(prediction_type):
    s = _scheduler(prediction_type=prediction_type)
    x0, noise, t = _batch()
    x_t = s.add_noise(x0, noise, t)
    perfect = {"epsilon": noise, "sample": x0, "v_prediction": s.get_velocity(x0, noise, t)}[prediction_type]
    terms = diffusion_loss(perfect, s, x0, x_t, noise, t)
    assert set(terms) == {"loss", "mse"} and terms["loss"].shape == (6,)
    torch.testing.assert_close(terms["loss"], torch.zeros(6))
    wrong = diffusion_loss(perfect + 0.5, s, x0, x_t, noise, t)
    torch.testing.assert_close(wrong["mse"], torch.full((6,), 0.25))


def test_vlb_is_zero_for_true_mean_and_posterior_variance():
    s = _scheduler(variance_type="learned_range")
    x0, noise, t = _batch()
    x_t = s.add_noise(x0, noise, t)
    # v = -1 selects the (clipped) posterior log-variance; the true noise gives the true posterior mean.
    output = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    terms = diffusion_loss(output, s, x0, x_t, noise, t)
    torch.testing.assert_close(terms["vb"][1:], torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(terms["loss"][1:], terms["mse"][1:] + 1.0 * terms["vb"][1:])
    # t = 0: the decoder NLL of the data under N(mean, beta~_1) discretised to 256 bins, in bits/dim.
    from ddpm.scheduler import discretized_gaussian_log_likelihood

    mean, _, logvar = s.q_posterior_mean_variance(x0, x_t, t)
    nll = -discretized_gaussian_log_likelihood(x0[:1], mean[:1], 0.5 * logvar[:1]).mean() / math.log(2)
    torch.testing.assert_close(terms["vb"][0], nll.float(), rtol=1e-4, atol=1e-4)
    assert terms["vb"][0] > 0


def test_vlb_kl_closed_form_and_hybrid_weight():
    s = _scheduler(variance_type="learned_range")
    x0, noise, t = _batch()
    x_t = s.add_noise(x0, noise, t)
    output = torch.cat([noise, torch.ones_like(noise)], dim=1)  # v = +1: sigma^2 = beta_t, true mean
    terms = diffusion_loss(output, s, x0, x_t, noise, t, vlb_weight=0.001)
    betas = s.betas.double()
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    post = betas * (1 - abar_prev) / (1 - abar)
    tt = t[1:]
    kl = 0.5 * (-1 + betas[tt].log() - post[tt].log() + post[tt] / betas[tt]) / math.log(2)
    torch.testing.assert_close(terms["vb"][1:], kl.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.001 * 1000 * terms["vb"])


def test_vlb_trains_only_the_variance_half():
    s = _scheduler(variance_type="learned_range")
    x0, noise, t = _batch()
    x_t = s.add_noise(x0, noise, t)
    output = torch.cat([noise + 0.3, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    terms = diffusion_loss(output, s, x0, x_t, noise, t)
    (grad,) = torch.autograd.grad(terms["vb"].sum(), output)
    assert torch.all(grad[:, :3] == 0) and grad[:, 3:].abs().sum() > 0
    (grad,) = torch.autograd.grad(terms["mse"].sum(), output)
    assert torch.all(grad[:, 3:] == 0) and grad[:, :3].abs().sum() > 0


def test_channel_mismatch_is_reported_and_compute_loss_runs_the_model():
    s = _scheduler(variance_type="learned_range")
    x0, noise, t = _batch()
    with pytest.raises(ValueError, match="2\\*3 output channels"):
        diffusion_loss(noise, s, x0, x0, noise, t)

    class Oracle(torch.nn.Module):
        def forward(self, x, t, return_dict=True):
            return (torch.cat([noise, -torch.ones_like(noise)], 1),)

    terms = compute_loss(Oracle(), s, x0, noise, t)
    torch.testing.assert_close(terms["mse"], torch.zeros(6))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_min_snr_weighting_is_the_clipped_snr_times_the_x0_error(prediction_type):
    """Min-SNR-gamma: in every parameterisation the weighted loss is min(SNR_t, gamma) * ||x0_hat - x0||^2."""
    gamma = 5.0
    s = _scheduler(prediction_type=prediction_type)
    x0, noise, t = _batch()
    x_t = s.add_noise(x0, noise, t).double()
    abar = s.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    x0_hat = x0.double() + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    eps_hat = (x_t - abar.sqrt() * x0_hat) / (1 - abar).sqrt()  # the prediction consistent with x_t and x0_hat
    v_hat = abar.sqrt() * eps_hat - (1 - abar).sqrt() * x0_hat
    output = {"epsilon": eps_hat, "sample": x0_hat, "v_prediction": v_hat}[prediction_type].float()
    terms = diffusion_loss(output, s, x0, x_t.float(), noise, t, snr_gamma=gamma)
    snr = (abar / (1 - abar)).flatten()
    expected = snr.clamp(max=gamma) * ((x0_hat - x0.double()) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"].double(), expected, rtol=2e-3, atol=1e-6)
    # the logged mse stays the unweighted error of the parameterisation, and gamma = 0 is the paper's L_simple
    plain = diffusion_loss(output, s, x0, x_t.float(), noise, t)
    torch.testing.assert_close(terms["mse"], plain["mse"])
    torch.testing.assert_close(plain["loss"], plain["mse"])
    # the noisy timesteps (SNR < gamma) keep weight 1 under epsilon prediction; the clean ones are down-weighted
    if prediction_type == "epsilon":
        w = terms["loss"] / plain["mse"]
        torch.testing.assert_close(w[snr < gamma].double(), torch.ones(int((snr < gamma).sum()), dtype=torch.float64))
        assert (w[snr > gamma] < 1).all() and w[0] < 1e-3


def test_min_snr_gamma_is_validated():
    from ddpm.training.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match=r"snr_gamma=-1.*>= 0"):
        resolve_config(snr_gamma=-1)
    with pytest.raises(ValueError, match="snr_gamma must be > 0"):
        from ddpm.training.losses import min_snr_weights

        min_snr_weights(_scheduler(), torch.tensor([0]), 0.0)
