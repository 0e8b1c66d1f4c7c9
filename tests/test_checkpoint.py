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
