import errno
import random

import numpy as np
import pytest
import torch

from ddpm import io as ddpm_io
from ddpm.training import checkpoint as ckpt
from ddpm.training.data_order import DataOrder, StepBatchSampler


def _state(step):
    return {"step": step, "w": torch.full((3,), float(step)), "nested": {"a": [1, 2.5, None, "x"], "t": (1, 2)}}


def test_round_trip_keep_and_listing(tmp_path):
    for step in (10, 20, 30):
        ckpt.save_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [30, 20]
    state, path = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 30 and path.name == "checkpoint-000000030.pt"
    assert torch.equal(state["w"], torch.full((3,), 30.0)) and state["nested"]["t"] == (1, 2)
    assert not list(tmp_path.glob(".*tmp"))
    assert ckpt.load_latest_checkpoint(tmp_path / "none") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_newest_checkpoint_falls_back(tmp_path, damage):
    ckpt.save_checkpoint(_state(1), tmp_path, 1, keep=3)
    newest = ckpt.save_checkpoint(_state(2), tmp_path, 2, keep=3)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        newest.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "flip":
        data[len(data) // 3] ^= 0xFF
        newest.write_bytes(bytes(data))
    else:
        newest.write_bytes(b"")
    with pytest.raises(ckpt.CorruptCheckpointError):
        ckpt.load_checkpoint(newest)
    with pytest.warns(UserWarning, match="damaged checkpoint.*checkpoint-000000002"):
        state, path = ckpt.load_latest_checkpoint(tmp_path)
    assert state["step"] == 1 and path.name == "checkpoint-000000001.pt"
    (tmp_path / "checkpoint-000000001.pt").write_bytes(b"junk" * 10)
    with pytest.warns(UserWarning), pytest.raises(ckpt.CheckpointError, match="no intact checkpoint"):
        ckpt.load_latest_checkpoint(tmp_path)


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = ckpt.save_checkpoint(_state(1), tmp_path, 1, keep=1)
    before = first.read_bytes()
    real_fdopen = ddpm_io.os.fdopen

    class _FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ddpm_io.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(ckpt.CheckpointError, match="disk is full.*checkpoint-000000001.pt is intact") as info:
        ckpt.save_checkpoint(_state(2), tmp_path, 2, keep=1)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert first.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    assert ckpt.load_latest_checkpoint(tmp_path)[0]["step"] == 1


def test_rng_state_round_trip():
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    np.random.seed(2)  # noqa: NPY002
    random.seed(3)
    state = ckpt.decode(ckpt.encode(ckpt.capture_rng_state({"noise": g})))
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))  # noqa: NPY002
    torch.manual_seed(99)
    np.random.seed(99)  # noqa: NPY002
    random.seed(99)
    g.manual_seed(99)
    ckpt.restore_rng_state(state, {"noise": g})
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))  # noqa: NPY002
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and torch.equal(got[3], expected[3])


def test_data_order_is_a_function_of_the_step():
    order = DataOrder(size=10, batch_size=4, seed=5)
    batches = [order.global_batch(s) for s in range(5)]  # 20 positions = 2 full epochs
    stream = torch.cat(batches)
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])  # a new permutation per epoch
    assert order.position(3) == {"epoch": 1, "index": 2}
    fresh = DataOrder(size=10, batch_size=4, seed=5)
    assert torch.equal(fresh.global_batch(3), batches[3])
    assert not torch.equal(DataOrder(10, 4, seed=6).global_batch(0), batches[0])
    halves = [order.local_batch(2, r, 2) for r in range(2)]
    assert torch.equal(torch.cat(halves), batches[2])
    assert list(StepBatchSampler(order, 3, 5, rank=1, world_size=2)) == [b[2:].tolist() for b in batches[3:5]]
    big = DataOrder(size=3, batch_size=8, seed=0)  # batches larger than the data set wrap into the next epochs
    assert sorted(big.global_batch(0)[:3].tolist()) == [0, 1, 2] and len(big.global_batch(1)) == 8


# ---------------------------------------------------------------------------------------------------------------
# The run's state: one object, saved and restored through a checkpoint file
# ---------------------------------------------------------------------------------------------------------------
def _config(tmp_path, **kw):
    from ddpm.training.config import resolve_config

    return resolve_config(
        **{"data": "x", "output_dir": str(tmp_path), "resolution": 8, "channels": 1, **kw}, model=TINY_UNET
    )


TINY_UNET = {
    "block_out_channels": [8],
    "down_block_types": ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 4,
}


def _run_state(seed: int, size: int = 10) -> ckpt.RunState:
    from ddpm.training.ema import EMA

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generators = {"noise": torch.Generator().manual_seed(seed)}
    return ckpt.RunState(model, optimizer, scaler, EMA(model, 0.9), DataOrder(size, 4, seed=1), generators)


def _advance(state: ckpt.RunState, steps: int) -> None:
    """Updates that draw from the run's generator (the data) and from the global RNG (dropout)."""
    for _ in range(steps):
        x = torch.randn((4, 4), generator=state.generators["noise"])
        state.model(x).pow(2).mean().backward()
        state.optimizer.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.update(state.model)
        state.step += 1


def test_run_state_round_trip_through_a_checkpoint_continues_bit_for_bit(tmp_path):
    cfg = _config(tmp_path, lr_schedule="cosine", max_steps=50, warmup_steps=5)
    first = _run_state(0)
    _advance(first, 3)
    payload = first.state_dict(cfg, [ckpt.capture_rng_state(first.generators)])
    assert set(payload) == {
        "format", "version", "step", "config", "model", "ema", "optimizer", "scaler", "lr_schedule", "data_order",
        "rng",
    }  # fmt: skip
    assert (payload["format"], payload["version"], payload["step"]) == (ckpt.CHECKPOINT_FORMAT, 1, 3)
    assert payload["lr_schedule"] == {"kind": "linear_warmup_cosine", "lr": cfg.lr, "warmup_steps": 5, "max_steps": 50}
    assert payload["data_order"] == {"seed": 1, "size": 10, "batch_size": 4, "step": 3, "epoch": 1, "index": 2}
    assert payload["rng"]["world_size"] == 1 and payload["config"] == cfg.to_json()
    path = ckpt.save_checkpoint(payload, tmp_path / "checkpoints", first.step)
    _advance(first, 2)  # the uninterrupted run

    second = _run_state(7)  # other weights, other generator, other global RNG state
    second.load_state_dict(ckpt.load_checkpoint(path))
    assert second.step == 3
    _advance(second, 2)
    assert second.step == first.step == 5
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for name, a in first.ema.params.items():
        assert torch.equal(a, second.ema.params[name]), name
    assert first.ema.num_updates == second.ema.num_updates == 5
    assert torch.equal(first.generators["noise"].get_state(), second.generators["noise"].get_state())
    for a, b in zip(first.optimizer.state.values(), second.optimizer.state.values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_run_state_refuses_other_payloads_and_warns_on_other_runs(tmp_path):
    cfg = _config(tmp_path)
    state = _run_state(0)
    payload = state.state_dict(cfg, [ckpt.capture_rng_state(state.generators)] * 2)  # saved by two processes
    with pytest.raises(ValueError, match="format='other'.*not a ddpm training checkpoint"):
        _run_state(1).load_state_dict({**payload, "format": "other"})
    with pytest.warns(UserWarning, match="2-process RNG states in 1 process"):
        _run_state(1).load_state_dict(payload, rank=0, world_size=1)
    with pytest.warns(UserWarning, match="the data set has 12 images, the checkpoint's had 10"):
        _run_state(1, size=12).load_state_dict(payload, rank=1, world_size=2)


def test_a_trainer_checkpoint_is_a_run_state(tmp_path):
    """What the trainer writes reads back into a RunState of the configured model and saves to the same payload."""
    from ddpm.models import UNet2DModel
    from ddpm.training.ema import EMA
    from ddpm.training.trainer import Trainer

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8))
    cfg = _config(
        tmp_path / "run", data=str(tmp_path / "d.npz"), batch_size=4, max_steps=2, checkpoint_every=2, sample_every=0,
        num_workers=0, log_every=2,
    )  # fmt: skip
    Trainer(cfg, progress=False).run()
    payload, _ = ckpt.load_latest_checkpoint(tmp_path / "run" / "checkpoints")
    model = UNet2DModel.from_config(cfg.unet_config())
    state = ckpt.RunState(
        model,
        torch.optim.Adam(model.parameters()),
        torch.amp.GradScaler("cpu", enabled=False),
        EMA(model),
        DataOrder(8, 4, seed=cfg.seed),
        {"noise": torch.Generator()},
    )
    state.load_state_dict(payload)
    again = state.state_dict(cfg, payload["rng"]["ranks"])
    assert again["step"] == 2 and again["data_order"] == payload["data_order"]
    for key, value in payload["model"].items():
        assert torch.equal(again["model"][key], value), key
    for key, value in payload["ema"]["params"].items():
        assert torch.equal(again["ema"]["params"][key], value), key
    for idx, value in payload["optimizer"]["state"].items():
        assert torch.equal(again["optimizer"]["state"][idx]["exp_avg"], value["exp_avg"])
    assert torch.equal(state.generators["noise"].get_state(), payload["rng"]["ranks"][0]["generators"]["noise"])
