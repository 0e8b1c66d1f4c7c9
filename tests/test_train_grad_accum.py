"""``--grad-accum K``: K micro-batches of B images make the update of one batch of K * B images (same images,
timesteps, noise and flips), with exact resume and under DDP."""

import pytest
import torch

from ddpm.training import checkpoint as ckpt
from ddpm.training.accumulation import accumulate_gradients
from ddpm.training.config import ConfigError
from ddpm.training.trainer import Trainer
from test_train_loop import _assert_same_state, _cfg, _npz

OPTIONS = dict(max_steps=4, checkpoint_every=2, log_every=2, warmup_steps=2, dropout=0.0, hflip=True, lr=1e-3)


def _state(out):
    state, _ = ckpt.load_latest_checkpoint(out / "checkpoints")
    return state


def _assert_close_states(a, b):
    assert a["step"] == b["step"]
    # The attention key bias has an exactly zero gradient in exact arithmetic, so Adam turns rounding noise into
    # full-size updates: it is left out (as in test_train_distributed.py).
    keys = [k for k in a["model"] if not k.endswith("to_k.bias")]
    for key in keys:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6, msg=key)
        torch.testing.assert_close(a["ema"]["params"][key], b["ema"]["params"][key], rtol=1e-5, atol=1e-6, msg=key)


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    data = _npz(tmp_path / "data.npz", n=20)
    big = Trainer(_cfg(data, tmp_path / "big", batch_size=8, **OPTIONS), progress=False).run()
    acc = Trainer(_cfg(data, tmp_path / "acc", batch_size=4, grad_accum=2, **OPTIONS), progress=False).run()
    assert big.step == acc.step == 4
    _assert_close_states(_state(tmp_path / "big"), _state(tmp_path / "acc"))
    assert acc.last_metrics["loss"] == pytest.approx(big.last_metrics["loss"], rel=1e-5)
    assert acc.last_metrics["grad_norm"] == pytest.approx(big.last_metrics["grad_norm"], rel=1e-4)


def test_accumulation_resumes_exactly(tmp_path):
    data = _npz(tmp_path / "data.npz", n=20)
    kw = dict(OPTIONS, batch_size=2, grad_accum=3, dropout=0.1)
    Trainer(_cfg(data, tmp_path / "ref", **kw), progress=False).run()
    Trainer(_cfg(data, tmp_path / "run", **{**kw, "max_steps": 2}), progress=False).run()
    result = Trainer(_cfg(data, tmp_path / "run", **kw), resume=True, progress=False).run()
    assert result.resumed_from.name == "checkpoint-000000002.pt"
    _assert_same_state(_state(tmp_path / "ref"), _state(tmp_path / "run"))
    assert _state(tmp_path / "run")["data_order"]["batch_size"] == 6  # one update's images


def test_accumulate_gradients_matches_the_whole_batch_and_syncs_once():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x = torch.randn(6, 3)

    def loss_fn(x0, noise, t):
        return {"loss": ((model(x0) - noise) ** 2).mean(dim=1) * t}

    noise, t = torch.randn(6, 2), torch.rand(6)
    loss_fn(x, noise, t)["loss"].mean().backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    calls = []
    model.no_sync = lambda: _Recorder(calls)
    terms, loss = accumulate_gradients(loss_fn, model, x, noise, t, 3)
    assert calls == ["enter", "enter"]  # the last of 3 micro-batches all-reduces
    for p, g in zip(model.parameters(), whole, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)
    assert terms["loss"].shape == (6,) and not loss.requires_grad
    with pytest.raises(ValueError, match="micro_batches=4"):
        accumulate_gradients(loss_fn, model, x, noise, t, 4)


class _Recorder:
    def __init__(self, calls):
        self.calls = calls

    def __enter__(self):
        self.calls.append("enter")

    def __exit__(self, *exc):
        return False


def test_bad_grad_accum_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="grad_accum=0"):
        _cfg(_npz(tmp_path / "d.npz"), tmp_path / "o", grad_accum=0)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_two_process_ddp_accumulation_matches_one_big_batch(tmp_path):
    import json

    from test_train_distributed import _torchrun
    from test_train_loop import TINY_UNET

    data = _npz(tmp_path / "data.npz", n=20)
    Trainer(_cfg(data, tmp_path / "big", batch_size=8, **OPTIONS), progress=False).run()
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps(TINY_UNET))
    args = [
        "--data", str(data), "--resolution", "8", "--channels", "3", "--model-config", str(unet), "--batch-size", "4",
        "--grad-accum", "2", "--checkpoint-every", "2", "--warmup-steps", "2", "--dropout", "0", "--hflip",
        "--lr", "1e-3", "--sample-every", "0", "--log-every", "2", "--num-workers", "0", "--no-progress",
        "--output-dir", str(tmp_path / "ddp"),
    ]  # fmt: skip
    _torchrun([*args, "--max-steps", "2"])
    _torchrun([*args, "--max-steps", "4", "--resume"])
    big, ddp = _state(tmp_path / "big"), _state(tmp_path / "ddp")
    assert ddp["rng"]["world_size"] == 2
    keys = [k for k in big["model"] if not k.endswith("to_k.bias")]
    for key in keys:
        torch.testing.assert_close(ddp["model"][key], big["model"][key], rtol=1e-4, atol=1e-5, msg=key)
