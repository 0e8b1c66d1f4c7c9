import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm.cli import main
from ddpm.training.config import (
    PRESET_DIR,
    ConfigError,
    TrainConfig,
    preset_names,
    resolve_config,
)

ROOT = Path(__file__).resolve().parents[1]

# google/ddpm-cifar10-32 and google/ddpm-*-256 UNet configs (Diffusers keys; see the reference notes §3.5).
GOOGLE_CIFAR10 = {
    "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip
GOOGLE_256 = {
    "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
}  # fmt: skip


def _param_count(unet_config: dict) -> int:
    from ddpm.models import UNet2DModel

    with torch.device("meta"):
        model = UNet2DModel.from_config(unet_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "google", "params", "lr", "batch", "dropout", "variance"),
    [
        ("cifar10", GOOGLE_CIFAR10, 35_746_307, 2e-4, 128, 0.1, "fixed_large"),
        ("celebahq256", GOOGLE_256, 113_673_219, 2e-5, 64, 0.0, "fixed_small"),
        ("lsun256", GOOGLE_256, 113_673_219, 2e-5, 64, 0.0, "fixed_small"),
    ],
)
def test_paper_presets(name, google, params, lr, batch, dropout, variance):
    cfg = resolve_config(name)
    unet = cfg.unet_config()
    assert unet.pop("dropout") == dropout
    assert unet == google
    assert _param_count(cfg.unet_config()) == params
    assert (cfg.lr, cfg.batch_size, cfg.dropout, cfg.scheduler["variance_type"]) == (lr, batch, dropout, variance)
    assert (cfg.warmup_steps, cfg.grad_clip, cfg.ema_decay, cfg.ema_warmup) == (5000, 1.0, 0.9999, False)
    sched = cfg.scheduler
    assert (sched["num_train_timesteps"], sched["beta_schedule"], sched["beta_start"], sched["beta_end"]) == (
        1000, "linear", 1e-4, 0.02,
    )  # fmt: skip
    assert sched["prediction_type"] == "epsilon" and not cfg.learned_variance
    if name == "cifar10":
        assert cfg.hflip and cfg.max_steps == 800_000


def test_defaults_are_the_cifar10_recipe():
    # ... except the EMA warm-up: on by default (issue #17), off in the paper's presets
    defaults = TrainConfig().validate().to_dict()
    assert defaults["ema_warmup"] is True and resolve_config("cifar10").ema_warmup is False
    assert resolve_config("cifar10").to_dict() | {"description": "", "ema_warmup": True} == defaults


def test_presets_live_in_one_folder():
    assert {"cifar10", "celebahq256", "lsun256", "fashion-mnist-small"} <= set(preset_names())
    assert sorted(p.stem for p in PRESET_DIR.glob("*.json")) == preset_names()
    assert not (ROOT / "configs").exists()  # no second copy to drift


def test_a_preset_name_resolves_the_same_from_any_directory(tmp_path, monkeypatch, capsys):
    shipped = resolve_config("fashion-mnist-small").to_dict()
    # decoys that the old lookup (working directory first) would have picked up
    (tmp_path / "configs").mkdir()
    for decoy in (tmp_path / "configs" / "fashion-mnist-small.json", tmp_path / "fashion-mnist-small"):
        decoy.write_text(json.dumps({"batch_size": 3}))
    monkeypatch.chdir(tmp_path)
    assert resolve_config("fashion-mnist-small").to_dict() == shipped
    assert main(["train", "--config", "fashion-mnist-small", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == shipped["batch_size"] != 3
    # a path names a file: relative to the working directory, as any path
    assert resolve_config("./fashion-mnist-small").batch_size == 3
    assert resolve_config("configs/fashion-mnist-small.json").batch_size == 3
    with pytest.raises(ConfigError, match=r"no preset 'missing\.json': no such file"):
        resolve_config("missing.json")


def test_precedence_and_model_config(tmp_path):
    cfg = resolve_config("celebahq256", lr=1e-3)
    assert cfg.lr == 1e-3 and cfg.batch_size == 64
    model_file = tmp_path / "config.json"
    model_file.write_text(json.dumps({"_class_name": "UNet2DModel", **GOOGLE_CIFAR10, "sample_size": 16}))
    cfg = resolve_config("celebahq256", model_config=model_file)
    assert cfg.resolution == 16 and cfg.unet_config()["block_out_channels"] == [128, 256, 256, 256]
    assert resolve_config(model_config=model_file, resolution=32).resolution == 32
    learned = resolve_config(scheduler={"variance_type": "learned_range"}, channels=1)
    assert learned.unet_config()["out_channels"] == 2 and learned.unet_config()["in_channels"] == 1


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="precision"):
        resolve_config(precision="fp8")
    with pytest.raises(ConfigError, match="unknown option 'learning_rate'"):
        resolve_config(learning_rate=1)
    with pytest.raises(ConfigError, match="no preset 'nope'"):
        resolve_config("nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"batch_size": "many"}')
    with pytest.raises(ConfigError, match="batch_size must be int"):
        resolve_config(bad)
    with pytest.raises(ConfigError, match="prediction_type"):
        resolve_config(scheduler={"prediction_type": "x"})
    with pytest.raises(ConfigError, match=r"lr_schedule='step'.*constant, cosine, linear"):
        resolve_config(lr_schedule="step")


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_decaying_lr_follows_diffusers_after_the_warm_up(kind):
    """After the warm-up, lr_schedule cosine/linear is Diffusers' get_scheduler(kind) at the same optimiser step."""
    optimization = pytest.importorskip("diffusers.optimization")
    from ddpm.training.trainer import learning_rate

    cfg = resolve_config(lr=5e-4, warmup_steps=50, max_steps=400, lr_schedule=kind)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ref = optimization.get_scheduler(kind, optimizer=opt, num_warmup_steps=50, num_training_steps=400)
    theirs = []
    for _ in range(400):
        theirs.append(ref.get_last_lr()[0])  # the LR Diffusers' loop uses for this update
        opt.step()
        ref.step()
    ours = [learning_rate(cfg, s) for s in range(400)]
    np.testing.assert_allclose(ours[50:], theirs[50:], rtol=1e-9, atol=1e-12)
    # the warm-up is ours (the first update already moves: (s+1)/warmup) and ends at the full rate
    assert ours[0] == pytest.approx(5e-4 / 50) and ours[49] == pytest.approx(5e-4)
    # closed form: half-way through the decay, and the last update is small but not zero
    assert ours[225] == pytest.approx(5e-4 * 0.5)
    assert 0 < ours[399] < 5e-4 * 1e-3 * (100 if kind == "linear" else 1)
    assert all(a >= b for a, b in itertools.pairwise(ours[50:]))
    constant = resolve_config(lr=5e-4, warmup_steps=50, max_steps=400)
    assert [learning_rate(constant, s) for s in range(50, 400)] == [5e-4] * 350


def test_cli_help_dry_run_and_precedence(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--data", "--resolution", "--batch-size", "--precision", "--resume", "--dry-run", "--hflip"):
        assert option in text
    assert "(default: 0.0002)" in text and "(default: 128)" in text
    assert main(["train", "--config", "celebahq256", "--batch-size", "8", "--dry-run", "--output-dir", "x"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch_size"] == 8 and data["lr"] == 2e-5 and data["resolution"] == 256 and data["output_dir"] == "x"
    assert main(["train", "--no-hflip", "--variance-type", "learned_range", "--dry-run"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hflip"] is False and data["scheduler"]["variance_type"] == "learned_range"
    assert main(["train", "--config", "nope", "--dry-run"]) == 2
    assert "no preset" in capsys.readouterr().err
