"""The EMA warm-up (issue #17): on by default for user configs, Diffusers' EMAModel rule and defaults, off in the
paper presets; the share of the random initialisation an EMA keeps after a short run."""

import inspect
import json
import math

import pytest
import torch
from torch import nn

from ddpm.cli import main
from ddpm.training.config import ConfigError, TrainConfig, resolve_config
from ddpm.training.ema import EMA, initial_weight_share


class _Scalar(nn.Module):
    def __init__(self, value: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.full((1,), value, dtype=torch.float64))


def _ema_from(cfg: TrainConfig, model: nn.Module) -> EMA:
    return EMA(model, cfg.ema_decay, cfg.ema_warmup, cfg.ema_inv_gamma, cfg.ema_power)


def _share_after(ema: EMA, steps: int, early: int) -> float:
    """Train a one-weight 'model' that is 1 for the first ``early`` updates and 0 after: the EMA after ``steps``
    updates is then the share that the weights of the first ``early`` updates keep."""
    model = _Scalar(1.0)
    for n in range(steps):
        with torch.no_grad():
            model.w.fill_(1.0 if n < early else 0.0)
        ema.update(model)
    return float(ema.params["w"])


def test_defaults_are_diffusers_ema_model_defaults():
    diffusers = pytest.importorskip("diffusers")
    defaults = inspect.signature(diffusers.training_utils.EMAModel.__init__).parameters
    cfg = TrainConfig()
    assert cfg.ema_warmup is True
    assert cfg.ema_inv_gamma == defaults["inv_gamma"].default == 1.0
    assert cfg.ema_power == defaults["power"].default == 2 / 3
    assert cfg.ema_decay == defaults["decay"].default == 0.9999  # the paper's value, as the limit


@pytest.mark.parametrize(("decay", "inv_gamma", "power"), [(0.9999, 1.0, 2 / 3), (0.999, 1.0, 0.75), (0.99, 7.0, 1.0)])
def test_decay_sequence_is_diffusers_get_decay(decay, inv_gamma, power):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.training_utils.EMAModel(
        _Scalar().parameters(), decay=decay, use_ema_warmup=True, inv_gamma=inv_gamma, power=power
    )
    ema = EMA(_Scalar(), decay, warmup=True, inv_gamma=inv_gamma, power=power)
    ours = [ema.update(_Scalar()) for _ in range(300)]
    # Diffusers' step() counts from 1 and asks get_decay(optimization_step): our update n is their step n + 1.
    assert ours == [theirs.get_decay(n + 1) for n in range(300)]
    for n in (1_000, 31_622, 10**6, 10**9):
        assert ema.decay_at(n) == theirs.get_decay(n + 1)
    assert ema.decay_at(10**12) == decay  # the limit


def test_averages_equal_diffusers_ema_model_step_by_step():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    cfg = TrainConfig()
    ours = _ema_from(cfg, net)
    theirs = diffusers.training_utils.EMAModel(
        net.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, inv_gamma=cfg.ema_inv_gamma, power=cfg.ema_power
    )
    for _ in range(40):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ours.update(net)
        theirs.step(net.parameters())
    for (name, _), shadow in zip(net.named_parameters(), theirs.shadow_params, strict=True):
        torch.testing.assert_close(ours.params[name], shadow, rtol=1e-6, atol=1e-6)


def test_after_300_steps_the_initialisation_is_gone_with_warm_up():
    steps = 300
    # The run: EMA 0.999 without warm-up keeps 0.999 ** 300 = 74 % of the initial weights.
    no_warmup = EMA(_Scalar(), 0.999, warmup=False)
    assert _share_after(no_warmup, steps, early=0) == pytest.approx(0.999**steps, rel=1e-5)
    assert 0.74 < no_warmup.initial_weight_share() == 0.999**steps < 0.75

    cfg = TrainConfig()
    ema = _ema_from(cfg, _Scalar())
    assert ema.initial_weight_share() == 1.0
    assert _share_after(ema, steps, early=0) == 0.0  # d_0 = 0: the first update replaces the initialisation
    assert ema.initial_weight_share() == 0.0 == initial_weight_share(cfg.ema_decay, True, steps)

    # The weights of the first K updates (still close to the initialisation) keep prod_{K <= n < N} d_n, below
    # exp(-sum (1 + n)^-p) <= exp(-3 ((N + 1)^(1/3) - (K + 1)^(1/3))) for p = 2/3 (the sum bounds the integral).
    for early in (1, 10, 30):
        share = _share_after(_ema_from(cfg, _Scalar()), steps, early)
        product = math.prod(1 - (1 + n) ** (-2 / 3) for n in range(early, steps))
        assert share == pytest.approx(product, rel=1e-4)
        assert share <= math.exp(-3 * ((steps + 1) ** (1 / 3) - (early + 1) ** (1 / 3)))
    assert _share_after(_ema_from(cfg, _Scalar()), steps, early=10) < 2e-6


def test_power_one_is_the_running_mean():
    # power 1, inv_gamma 1: d_n = n / (n + 1), the product telescopes to K / N: a plain mean of all iterates
    ema = EMA(_Scalar(), 0.9999, warmup=True, inv_gamma=1.0, power=1.0)
    assert _share_after(ema, 300, early=30) == pytest.approx(30 / 300, rel=1e-6)


def test_presets_and_options():
    for name in ("cifar10", "celebahq256", "lsun256", "fashion-mnist-default"):
        assert resolve_config(name).ema_warmup is False  # the paper's recipe; the bundled model's recipe
    for name in ("cifar10-small", "fashion-mnist-small"):
        cfg = resolve_config(name)
        assert (cfg.ema_warmup, cfg.ema_decay, cfg.ema_power) == (True, 0.999, 2 / 3)
    cfg = resolve_config(ema_power=0.75, ema_inv_gamma=2.0)
    assert _ema_from(cfg, _Scalar()).decay_at(3) == 1 - (1 + 3 / 2.0) ** -0.75
    with pytest.raises(ConfigError, match=r"ema_power=0\.0.*> 0"):
        resolve_config(ema_power=0.0)
    with pytest.raises(ValueError, match="power"):
        EMA(_Scalar(), 0.999, warmup=True, power=-1.0)


def test_train_cli_options_reach_the_config(capsys):
    assert main(["train", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["ema_warmup"], cfg["ema_inv_gamma"], cfg["ema_power"], cfg["grid_weights"]) == (True, 1.0, 2 / 3, "ema")
    argv = [
        "train",
        "--dry-run",
        "--config",
        "cifar10",
        "--ema-warmup",
        "--ema-power",
        "0.75",
        "--grid-weights",
        "both",
    ]
    assert main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["ema_warmup"], cfg["ema_power"], cfg["grid_weights"]) == (True, 0.75, "both")
    assert main(["train", "--dry-run", "--no-ema-warmup"]) == 0
    assert json.loads(capsys.readouterr().out)["ema_warmup"] is False
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--dry-run", "--grid-weights", "mean"])
    assert exit_info.value.code == 2


def test_a_default_run_warms_up_its_ema(tmp_path):
    import numpy as np

    from ddpm.training import checkpoint as ckpt
    from ddpm.training.trainer import Trainer

    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8))
    tiny = {"block_out_channels": [8], "down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4}  # fmt: skip
    states = {}
    for warmup in (True, False):
        cfg = resolve_config(
            data=str(tmp_path / "d.npz"), resolution=8, model=tiny, batch_size=4, max_steps=1, sample_every=0,
            num_workers=0, output_dir=str(tmp_path / str(warmup)), **({} if warmup else {"ema_warmup": False}),
        )  # fmt: skip
        Trainer(cfg, progress=False).run()
        states[warmup], _ = ckpt.load_latest_checkpoint(tmp_path / str(warmup) / "checkpoints")
    on, off = states[True], states[False]
    assert (on["ema"]["warmup"], on["ema"]["power"], on["ema"]["num_updates"]) == (True, 2 / 3, 1)
    # d_0 = 0: after one update the EMA is the trained weights, exactly; without warm-up it is 99.99 % initialisation
    for key, value in on["ema"]["params"].items():
        assert torch.equal(value, on["model"][key]), key
    assert torch.equal(on["model"]["conv_in.weight"], off["model"]["conv_in.weight"])  # the same update
    assert not torch.equal(off["ema"]["params"]["conv_in.weight"], off["model"]["conv_in.weight"])
