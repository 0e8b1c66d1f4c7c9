"""End-to-end training runs on a tiny UNet: exact resume (SIGKILL, workers, damaged checkpoints), outputs, faults."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data import DataError
from ddpm.training import checkpoint as ckpt
from ddpm.training import trainer as trainer_mod
from ddpm.training.config import resolve_config
from ddpm.training.trainer import NonFiniteLossError, Trainer, TrainingError

TINY_UNET = {
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "downsample_padding": 0,
    "norm_eps": 1e-6,
    "attention_head_dim": None,
}


def _npz(path: Path, n=24, size=8, channels=3, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, images=rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8))
    return path


def _folder(path: Path, n=20, size=8, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size + 2, size, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def _cfg(data, out, **kw):
    base = dict(
        data=str(data), resolution=8, channels=3, model=TINY_UNET, batch_size=4, max_steps=12, checkpoint_every=3,
        keep_checkpoints=3, sample_every=0, warmup_steps=4, log_every=3, num_workers=0, dropout=0.1,
        output_dir=str(out), lr=1e-3,
    )  # fmt: skip
    base.update(kw)
    return resolve_config(**base)


def _final(out: Path) -> dict:
    state, _ = ckpt.load_latest_checkpoint(out / "checkpoints")
    return state


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["params"]:
        assert torch.equal(a["ema"]["params"][key], b["ema"]["params"][key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for idx in sa:
        assert torch.equal(sa[idx]["exp_avg_sq"], sb[idx]["exp_avg_sq"])


def _cli(args, env_extra=None, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "ddpm", "train", *args], env=env, **popen)


def test_sigkill_at_any_moment_then_resume_is_bitwise_exact(tmp_path):
    data = _npz(tmp_path / "data.npz")
    model_config = tmp_path / "unet.json"
    model_config.write_text(json.dumps(TINY_UNET))
    common = [
        "--data", str(data), "--resolution", "8", "--channels", "3", "--model-config", str(model_config),
        "--batch-size", "4", "--max-steps", "12", "--checkpoint-every", "2", "--keep-checkpoints", "2",
        "--sample-every", "0", "--warmup-steps", "4", "--lr", "1e-3", "--dropout", "0.1", "--num-workers", "0",
        "--log-every", "2", "--no-progress", "--seed", "3",
    ]  # fmt: skip
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _cli([*common, "--output-dir", str(ref_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    killed = _cli([*common, "--output-dir", str(run_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and killed.poll() is None:
        steps = [s for s, _ in ckpt.list_checkpoints(run_dir / "checkpoints")]
        if steps and steps[0] >= 4:
            break
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.05))  # land anywhere inside a later step or checkpoint write
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert ckpt.list_checkpoints(run_dir / "checkpoints")[0][0] < 12, "the run finished before it was killed"

    resumed = _cli(["--output-dir", str(run_dir), "--resume", "--no-progress"], stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err.decode()
    _, err = ref.communicate(timeout=180)
    assert ref.returncode == 0, err.decode()

    _assert_same_state(_final(ref_dir), _final(run_dir))
    from safetensors.torch import load_file

    name = "pipeline/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(ref_dir / name), load_file(run_dir / name)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # metrics.jsonl: each logged step once, in order, even though the killed run had logged past its checkpoint.
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, 13, 2))


def test_resume_with_workers_and_a_damaged_newest_checkpoint(tmp_path):
    data = _folder(tmp_path / "images")
    (data / "broken.png").write_bytes(b"\x89PNG not really")
    kw = dict(num_workers=2, hflip=True, max_steps=8, checkpoint_every=2, log_every=2)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        Trainer(_cfg(data, tmp_path / "ref", **kw), progress=False).run()
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        Trainer(_cfg(data, tmp_path / "run", **{**kw, "max_steps": 4}), progress=False).run()
    newest = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[0][1]
    newest.write_bytes(newest.read_bytes()[:-100])  # torn: the trailer is gone
    with pytest.warns(UserWarning, match="damaged checkpoint"), pytest.warns(UserWarning, match="skipped 1"):
        result = Trainer(_cfg(data, tmp_path / "run", **kw), resume=True, progress=False).run()
    assert result.resumed_from.name == "checkpoint-000000002.pt" and result.step == 8
    _assert_same_state(_final(tmp_path / "ref"), _final(tmp_path / "run"))


def test_outputs_load_in_diffusers_and_ours(tmp_path):
    data = _npz(tmp_path / "data.npz")
    out = tmp_path / "out"
    result = Trainer(
        _cfg(data, out, max_steps=4, checkpoint_every=2, sample_every=2, sample_steps=3, num_samples=4),
        progress=False,
    ).run()
    assert result.step == 4
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000000002.png", "step-000000004.png"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["batch_size"] == 4 and saved["model"]["block_out_channels"] == [8, 16]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("step", "loss", "lr", "grad_norm", "images_per_s"):
        assert key in record
    assert any(key.startswith("loss_q") for key in record)
    with Image.open(out / "loss.png") as curve:
        assert curve.size == (640, 400)

    state = _final(out)
    from ddpm import DDPMPipeline

    ours = DDPMPipeline.from_pretrained(out / "pipeline")
    for key, value in ours.unet.state_dict().items():
        assert torch.equal(value, state["ema"]["params"][key]), key  # the export holds the EMA weights
    assert ours.scheduler.config.variance_type == "fixed_large"
    from ddpm.cli import main

    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(out / "pipeline"), "--num-images", "2", "--steps", "2", "--out", str(grid),
                 "--no-progress"]) == 0  # fmt: skip
    assert grid.is_file()

    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDPMPipeline.from_pretrained(out / "pipeline")
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 700])
    with torch.no_grad():
        torch.testing.assert_close(theirs.unet(x, t).sample, ours.unet(x, t).sample, rtol=1e-5, atol=1e-5)
    assert theirs.scheduler.config.variance_type == "fixed_large"


def test_existing_run_needs_resume(tmp_path):
    data = _npz(tmp_path / "data.npz")
    Trainer(_cfg(data, tmp_path / "out", max_steps=1, checkpoint_every=1), progress=False).run()
    with pytest.raises(TrainingError, match="pass --resume"):
        Trainer(_cfg(data, tmp_path / "out", max_steps=2), progress=False).run()
    with pytest.raises(TrainingError, match="block_out_channels|model="):
        bigger = dict(TINY_UNET, block_out_channels=[8, 8])
        Trainer(_cfg(data, tmp_path / "out", max_steps=2, model=bigger), resume=True, progress=False).run()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = _npz(tmp_path / "data.npz")
    real = trainer_mod.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] == 5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(trainer_mod, "compute_loss", poisoned)
    out = tmp_path / "out"
    with pytest.raises(NonFiniteLossError, match="at step 5.*checkpoint-000000003.pt") as info:
        Trainer(_cfg(data, out, log_every=100), progress=False).run()
    assert info.value.step == 5
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [3]
    state = _final(out)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    data = _npz(tmp_path / "data.npz")
    real = ckpt.ddpm_io.atomic_write_bytes

    def write(path, payload):
        if "checkpoint-000000006" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, payload)

    monkeypatch.setattr(ckpt.ddpm_io, "atomic_write_bytes", write)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="step 6.*disk is full.*checkpoint-000000003.pt is intact"):
        Trainer(_cfg(data, out), progress=False).run()
    assert _final(out)["step"] == 3


def test_bad_data_gives_clear_errors(tmp_path, capsys):
    from ddpm.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "o")
    assert main(["train", "--data", str(empty), "--resolution", "8", "--output-dir", out, "--no-progress"]) == 2
    assert "no image files" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"nope")
    assert main(["train", "--data", str(broken), "--resolution", "8", "--output-dir", out, "--no-progress"]) == 2
    assert "none of the 1 image files could be read" in capsys.readouterr().err
    idx = tmp_path / "train-images-idx3-ubyte"
    import struct

    idx.write_bytes(struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(2 * 28 * 28))
    assert main(["train", "--data", str(idx), "--resolution", "32", "--channels", "1", "--output-dir", out]) == 2
    assert "28x28, which does not fit --resolution 32" in capsys.readouterr().err
    with pytest.raises(DataError, match="no training data"):
        Trainer(resolve_config(output_dir=out), progress=False).run()
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_and_learned_variance_run(tmp_path, precision):
    data = _npz(tmp_path / "data.npz", channels=1)
    # With attention (TINY_UNET has it), whose fused residual GEMM once failed under autocast; both memory layouts of
    # that block under autocast are tested in tests/test_unet.py.
    cfg = _cfg(
        data, tmp_path / "out", channels=1, max_steps=2, checkpoint_every=2, log_every=2, precision=precision,
        scheduler={"variance_type": "learned_range"}, model=TINY_UNET,
    )  # fmt: skip
    result = Trainer(cfg, progress=False).run()
    assert result.step == 2 and np.isfinite(result.last_metrics["loss"])
    assert any(k.startswith("vb_q") for k in result.last_metrics)
    state = _final(tmp_path / "out")
    assert state["model"]["conv_out.weight"].shape[0] == 2
    assert ("scale" in state["scaler"]) == (precision == "fp16")  # the gradient scaler is saved


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """--compile is a speed switch only: the same run compiled ends with the same weights up to float rounding."""
    data = _npz(tmp_path / "d.npz")
    kw = dict(max_steps=4, checkpoint_every=4, dropout=0.0)
    Trainer(_cfg(data, tmp_path / "eager", **kw), progress=False).run()
    Trainer(_cfg(data, tmp_path / "compiled", compile=True, **kw), progress=False).run()
    eager, compiled = _final(tmp_path / "eager"), _final(tmp_path / "compiled")
    for key, value in eager["model"].items():
        if key.endswith("to_k.bias"):
            # Softmax ignores a bias added to every key, so this gradient is zero up to rounding noise, which Adam
            # normalises into full-size steps: the value is noise in both runs and cannot be compared.
            continue
        torch.testing.assert_close(compiled["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compile_option_reaches_the_config(tmp_path):
    import argparse

    from ddpm.cli.train import add_parser, resolve_from_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--data", "x", "--compile", "--output-dir", str(tmp_path)])
    assert resolve_from_args(args).compile is True
    args = parser.parse_args(["train", "--data", "x", "--output-dir", str(tmp_path)])
    assert resolve_from_args(args).compile is False


def test_cosine_schedule_and_min_snr_reach_the_run_and_resume_warns_on_new_max_steps(tmp_path):
    from ddpm.training.trainer import learning_rate

    data = _npz(tmp_path / "d.npz")
    kw = dict(lr_schedule="cosine", snr_gamma=5.0, checkpoint_every=3, log_every=1)
    cfg = _cfg(data, tmp_path / "out", max_steps=6, **kw)
    Trainer(cfg, progress=False).run()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    for step, lr in logged.items():  # the row of step N logs the LR of the update that made step N
        assert lr == pytest.approx(learning_rate(cfg, step - 1))
    assert logged[5] == pytest.approx(1e-3) and logged[6] < logged[5] and logged[6] > 0  # warm-up 4, then decay
    # Min-SNR weights are <= 1 under epsilon prediction: the weighted objective is below the unweighted mse, logged too
    assert all(r["loss"] <= r["mse"] + 1e-7 and any(k.startswith("mse_q") for k in r) for r in rows if "lr" in r)
    assert any(r["loss"] < 0.99 * r["mse"] for r in rows if "lr" in r)
    state = _final(tmp_path / "out")
    assert state["lr_schedule"]["kind"] == "linear_warmup_cosine" and state["lr_schedule"]["max_steps"] == 6
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(logged[6])
    longer = _cfg(data, tmp_path / "out", max_steps=8, **kw)
    with pytest.warns(UserWarning, match="max_steps: 6 -> 8"):
        Trainer(longer, progress=False, resume=True).run()
