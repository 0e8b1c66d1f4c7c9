import json

import pytest
import torch

from ddpm import io as ddpm_io
from ddpm.config import ConfigMixin, FrozenDict, register_to_config


class Toy(ConfigMixin):
    config_name = "toy_config.json"

    @register_to_config
    def __init__(self, a: int = 1, b: str = "x", c=(1, 2)):
        self.a = a


def test_frozen_dict_is_read_only_with_attribute_access():
    d = FrozenDict(a=1, b=2)
    assert d.a == 1 and d["b"] == 2
    for op in (lambda: d.__setitem__("a", 3), lambda: setattr(d, "a", 3), lambda: d.pop("a"), lambda: d.update(a=2)):
        with pytest.raises(TypeError, match="FrozenDict"):
            op()
    with pytest.raises(AttributeError):
        _ = d.missing


def test_config_records_defaults_and_round_trips(tmp_path):
    t = Toy(a=5)
    assert dict(t.config) == {"a": 5, "b": "x", "c": (1, 2), "_use_default_values": ["b", "c"]}
    path = t.save_config(tmp_path)
    data = json.loads(path.read_text())
    assert data["_class_name"] == "Toy" and data["a"] == 5 and data["c"] == [1, 2]
    t2 = Toy.from_pretrained(tmp_path, b="y")
    assert t2.config.a == 5 and t2.config.b == "y"
    with pytest.warns(FutureWarning):
        assert t2.b == "y"
    with pytest.raises(TypeError, match="unexpected keyword"):
        Toy.from_config(t.config, nope=1)


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="toy_config.json"):
        Toy.load_config(tmp_path)
    (tmp_path / "toy_config.json").write_text("{not json")
    with pytest.raises(OSError, match="not a valid JSON"):
        Toy.load_config(tmp_path)


def test_atomic_write_keeps_old_content_on_failure(tmp_path):
    p = tmp_path / "f.bin"
    ddpm_io.atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError), ddpm_io.atomic_open(p) as f:
        f.write(b"partial")
        raise RuntimeError("disk full")
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["f.bin"]


def test_state_dict_round_trip_and_corruption(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    p = tmp_path / "m.safetensors"
    ddpm_io.save_state_dict(sd, p)
    back = ddpm_io.load_state_dict(p)
    assert torch.equal(back["w"], sd["w"]) and torch.equal(back["b"], sd["b"])
    p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(ddpm_io.CorruptWeightsError, match="truncated or corrupt"):
        ddpm_io.load_state_dict(p)
    legacy = tmp_path / "m.bin"
    torch.save(sd, legacy)
    assert torch.equal(ddpm_io.load_state_dict(legacy)["w"], sd["w"])


def test_hub_id_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ddpm_io.OfflineError, match="cannot be reached"):
        ddpm_io.resolve_file("someone/some-model", "config.json")


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    import os

    p = tmp_path / "g.json"
    ddpm_io.atomic_write_text(p, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_saving_into_a_file_path_is_refused(tmp_path):
    from ddpm import DDPMPipeline, DDPMScheduler, UNet2DModel

    file = tmp_path / "not_a_folder"
    file.write_text("x")
    unet = UNet2DModel(
        sample_size=4, block_out_channels=(8,), down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
        norm_num_groups=4, add_attention=False,
    )  # fmt: skip
    pipe = DDPMPipeline(unet, DDPMScheduler())
    for save in (pipe.scheduler.save_config, unet.save_pretrained, pipe.save_pretrained):
        with pytest.raises(ValueError, match="should be a directory, not a file"):
            save(file)
    assert file.read_text() == "x"
