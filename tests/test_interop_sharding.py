"""Sharded weights both ways, side by side with Diffusers (issue #16, item 2).

``save_pretrained(max_shard_size=...)`` writes Diffusers' layout (``<weights>-0000i-of-0000N.<ext>`` plus the index
JSON, for safetensors and .bin, with and without ``variant``), byte-for-byte the same index as Diffusers writes for the
same weights; each library loads the other's sharded folders.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file

from ddpm import DDPMPipeline, DDPMScheduler, UNet2DModel
from ddpm import io as ddpm_io

diffusers = pytest.importorskip("diffusers")

TINY = dict(
    sample_size=8,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=4,
    attention_head_dim=None,
)
SHARD = "20KB"  # the tiny UNet (~60 KB of float32) in a handful of shards


@pytest.fixture(autouse=True)
def offline_and_quiet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def models(seed=0):
    torch.manual_seed(seed)
    theirs = diffusers.UNet2DModel(**TINY).eval()
    ours = UNet2DModel(**TINY).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def index_name(safe, variant):
    return ddpm_io.add_variant(ddpm_io.SAFETENSORS_INDEX_NAME if safe else ddpm_io.PYTORCH_INDEX_NAME, variant)


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_same_sharded_layout_as_diffusers(tmp_path, safe, variant):
    ours, theirs = models()
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe, variant=variant, max_shard_size=SHARD)
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=safe, variant=variant, max_shard_size=SHARD)
    names = listing(tmp_path / "ours")
    assert names == listing(tmp_path / "theirs")
    shards = [n for n in names if n not in ("config.json", index_name(safe, variant))]
    assert len(shards) > 2 and index_name(safe, variant) in names
    ours_index = (tmp_path / "ours" / index_name(safe, variant)).read_text()
    assert ours_index == (tmp_path / "theirs" / index_name(safe, variant)).read_text()
    assert sorted(set(json.loads(ours_index)["weight_map"].values())) == shards
    for name in shards:
        read = load_file if safe else lambda p: torch.load(p, weights_only=True)
        a, b = read(tmp_path / "ours" / name), read(tmp_path / "theirs" / name)
        assert list(a) == list(b)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_each_loads_the_others_sharded_folder(tmp_path, safe, variant):
    ours, theirs = models(seed=1)
    ours.save_pretrained(tmp_path / "ours", safe_serialization=safe, variant=variant, max_shard_size=SHARD)
    theirs.save_pretrained(tmp_path / "theirs", safe_serialization=safe, variant=variant, max_shard_size=SHARD)
    # Diffusers reads a .bin index only with use_safetensors=False; ddpm also finds it without.
    use_safetensors = None if safe else False
    loaded_theirs = diffusers.UNet2DModel.from_pretrained(
        tmp_path / "ours", variant=variant, use_safetensors=use_safetensors
    )
    same_weights(loaded_theirs, theirs)
    for kwargs in ({"use_safetensors": use_safetensors}, {}):
        loaded_ours = UNet2DModel.from_pretrained(tmp_path / "theirs", variant=variant, **kwargs)
        same_weights(loaded_ours, theirs)
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        torch.testing.assert_close(loaded_ours(x, 3).sample, theirs(x, 3).sample, rtol=1e-5, atol=1e-5)


def test_legacy_variant_shard_names(tmp_path):
    """Older Diffusers named variant shards ``...-00001-of-00003.fp16.safetensors`` with the index
    ``diffusion_pytorch_model.safetensors.fp16.index.json``; both libraries still read them."""
    _, theirs = models(seed=2)
    theirs.save_pretrained(tmp_path / "new", variant="fp16", max_shard_size=SHARD)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(tmp_path / "new" / "config.json", legacy / "config.json")
    index = json.loads((tmp_path / "new" / index_name(True, "fp16")).read_text())
    renamed = {}
    for name in set(index["weight_map"].values()):
        renamed[name] = name.replace(".fp16-", "-").replace(".safetensors", ".fp16.safetensors")
        shutil.copy(tmp_path / "new" / name, legacy / renamed[name])
    index["weight_map"] = {k: renamed[v] for k, v in index["weight_map"].items()}
    (legacy / "diffusion_pytorch_model.safetensors.fp16.index.json").write_text(json.dumps(index))
    same_weights(UNet2DModel.from_pretrained(legacy, variant="fp16"), theirs)
    same_weights(diffusers.UNet2DModel.from_pretrained(legacy, variant="fp16"), theirs)


def test_resaving_removes_stale_files(tmp_path):
    ours, _ = models(seed=3)
    folder = tmp_path / "m"
    ours.save_pretrained(folder, max_shard_size=SHARD)
    assert ddpm_io.SAFETENSORS_WEIGHTS_NAME not in listing(folder)
    ours.save_pretrained(folder)  # one file now: the index and the shards would shadow it
    assert listing(folder) == ["config.json", ddpm_io.SAFETENSORS_WEIGHTS_NAME]
    ours.save_pretrained(folder, max_shard_size="30KB")
    assert ddpm_io.SAFETENSORS_WEIGHTS_NAME not in listing(folder)
    ours.save_pretrained(folder, max_shard_size=SHARD)  # more shards than before: no leftover of the 30KB split
    index = json.loads((folder / ddpm_io.SAFETENSORS_INDEX_NAME).read_text())
    assert sorted(set(index["weight_map"].values())) == [n for n in listing(folder) if "-of-" in n]
    same_weights(diffusers.UNet2DModel.from_pretrained(folder), ours)
    # Other formats and variants are left alone.
    ours.save_pretrained(folder, safe_serialization=False)
    ours.save_pretrained(folder, variant="ema")
    assert {ddpm_io.PYTORCH_WEIGHTS_NAME, "diffusion_pytorch_model.ema.safetensors"} <= set(listing(folder))
    assert ddpm_io.SAFETENSORS_INDEX_NAME in listing(folder)


def test_missing_shard_and_bad_index_as_diffusers(tmp_path):
    _, theirs = models()
    theirs.save_pretrained(tmp_path / "m", max_shard_size=SHARD)
    index = json.loads((tmp_path / "m" / ddpm_io.SAFETENSORS_INDEX_NAME).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (tmp_path / "m" / first).unlink()
    with pytest.raises(OSError, match="required according to the checkpoint index") as their_error:
        diffusers.UNet2DModel.from_pretrained(tmp_path / "m")
    with pytest.raises(type(their_error.value), match=f"{first}.*required according to the checkpoint index"):
        UNet2DModel.from_pretrained(tmp_path / "m")

    index["weight_map"]["conv_in.weight"] = "../elsewhere.safetensors"
    (tmp_path / "m" / ddpm_io.SAFETENSORS_INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="shard filename") as their_error:
        diffusers.UNet2DModel.from_pretrained(tmp_path / "m")
    with pytest.raises(type(their_error.value), match="elsewhere.safetensors"):
        UNet2DModel.from_pretrained(tmp_path / "m")

    (tmp_path / "m" / ddpm_io.SAFETENSORS_INDEX_NAME).write_text("{not json")
    with pytest.raises(ValueError):
        diffusers.UNet2DModel.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="not a valid JSON"):
        UNet2DModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("size", ["10GB", "5MB", "20KB", "1.5GB", " 3 kb", "2TB", 12345])
def test_max_shard_size_parsing_as_huggingface_hub(size):
    from huggingface_hub.serialization._base import parse_size_to_int

    expected = size if isinstance(size, int) else parse_size_to_int(size)
    assert ddpm_io.parse_size(size) == expected


@pytest.mark.parametrize("size", ["10XB", "GB", 0, -5, 1.5, None, True])
def test_bad_max_shard_size(size, tmp_path):
    with pytest.raises(ValueError, match="max_shard_size"):
        UNet2DModel(**TINY).save_pretrained(tmp_path, max_shard_size=size)


def test_save_pretrained_arguments(tmp_path):
    ours, _ = models()
    with pytest.raises(NotImplementedError, match="push_to_hub"):
        ours.save_pretrained(tmp_path, push_to_hub=True)
    with pytest.raises(TypeError, match="max_shard"):
        ours.save_pretrained(tmp_path, max_shard=1)
    ours.save_pretrained(tmp_path, save_function=torch.save, commit_message="ignored without push_to_hub")
    assert not ours.save_pretrained(tmp_path / "other", is_main_process=False).exists()


def test_pipeline_sharded_variant_round_trip(tmp_path):
    ours, theirs = models(seed=4)
    pipe = DDPMPipeline(unet=ours, scheduler=DDPMScheduler(num_train_timesteps=50))
    pipe.save_pretrained(tmp_path / "pipe", variant="fp16", max_shard_size=SHARD)
    unet_files = listing(tmp_path / "pipe" / "unet")
    assert index_name(True, "fp16") in unet_files
    assert any(n.startswith("diffusion_pytorch_model.fp16-") for n in unet_files)
    loaded_theirs = diffusers.DDPMPipeline.from_pretrained(tmp_path / "pipe", variant="fp16")
    same_weights(loaded_theirs.unet, theirs)
    loaded_ours = DDPMPipeline.from_pretrained(tmp_path / "pipe", variant="fp16")
    same_weights(loaded_ours.unet, theirs)
    # And a Diffusers pipeline saved sharded loads in ddpm.
    loaded_theirs.save_pretrained(tmp_path / "theirs", max_shard_size=SHARD)
    same_weights(DDPMPipeline.from_pretrained(tmp_path / "theirs").unet, theirs)
