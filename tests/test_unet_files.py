"""UNet2DModel files: Diffusers' folder layout both ways, legacy .bin, errors, Hub ids offline."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file

from ddpm import UNet2DModel
from ddpm.io import PYTORCH_WEIGHTS_NAME, SAFETENSORS_WEIGHTS_NAME, CorruptWeightsError, OfflineError
from ddpm.models import WeightsMismatchError

diffusers = pytest.importorskip("diffusers")
DUNet = diffusers.UNet2DModel

SMALL = dict(
    sample_size=16,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    norm_eps=1e-6,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def their_model(seed=0, **overrides):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DUNet(**SMALL, **overrides).eval()


def outputs(model, x):
    with torch.inference_mode():
        return model(x, 17).sample


def test_diffusers_saves_we_load(tmp_path):
    theirs = their_model()
    theirs.save_pretrained(tmp_path / "m")
    ours = UNet2DModel.from_pretrained(tmp_path / "m")
    assert not ours.training
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(outputs(ours, x), outputs(theirs, x), rtol=1e-5, atol=1e-5)
    assert ours.config.block_out_channels == [32, 64] or tuple(ours.config.block_out_channels) == (32, 64)


def test_we_save_diffusers_loads(tmp_path):
    torch.manual_seed(1)
    ours = UNet2DModel(**SMALL).eval()
    folder = ours.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", SAFETENSORS_WEIGHTS_NAME]
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "UNet2DModel" and "_diffusers_version" in config
    assert config["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D"]
    assert list(load_file(folder / SAFETENSORS_WEIGHTS_NAME)) == sorted(ours.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DUNet.from_pretrained(folder).eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(outputs(theirs, x), outputs(ours, x), rtol=1e-5, atol=1e-5)
    # round trip through our own loader is exact
    again = UNet2DModel.from_pretrained(folder)
    torch.testing.assert_close(outputs(again, x), outputs(ours, x), rtol=0, atol=0)
    assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_subfolder_dtype_and_overrides(tmp_path):
    theirs = their_model()
    theirs.save_pretrained(tmp_path / "pipe" / "unet")
    ours = UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet", torch_dtype=torch.bfloat16)
    assert ours.dtype == torch.bfloat16
    assert ours.time_proj.freqs.dtype == torch.float32
    bigger = UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="unet", sample_size=32)
    assert bigger.config.sample_size == 32
    with pytest.raises(FileNotFoundError):
        UNet2DModel.from_pretrained(tmp_path / "pipe", subfolder="vae")


def test_legacy_bin_with_legacy_attention_names(tmp_path):
    theirs = their_model()
    state = theirs.state_dict()
    legacy = {}
    for key, value in state.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        legacy[key] = value
    assert any(".proj_attn." in k for k in legacy) and any(".query." in k for k in legacy)
    folder = tmp_path / "legacy"
    folder.mkdir()
    theirs.save_config(folder)
    torch.save(legacy, folder / PYTORCH_WEIGHTS_NAME)
    ours = UNet2DModel.from_pretrained(folder)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    # Diffusers agrees on the renaming
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_loaded = DUNet.from_pretrained(folder)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(outputs(ours, x), outputs(theirs_loaded, x), rtol=1e-5, atol=1e-5)


def test_we_save_legacy_bin(tmp_path):
    ours = UNet2DModel(**SMALL).eval()
    ours.save_pretrained(tmp_path / "m", safe_serialization=False)
    assert (tmp_path / "m" / PYTORCH_WEIGHTS_NAME).is_file()
    again = UNet2DModel.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(outputs(again, x), outputs(ours, x), rtol=0, atol=0)


def test_bin_is_loaded_with_weights_only(tmp_path):
    folder = tmp_path / "evil"
    UNet2DModel(**SMALL).save_config(folder)

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Payload()}, folder / PYTORCH_WEIGHTS_NAME)
    with pytest.raises(CorruptWeightsError, match="weights_only"):
        UNet2DModel.from_pretrained(folder)


def _saved(tmp_path, **overrides):
    model = UNet2DModel(**SMALL, **overrides)
    return model, model.save_pretrained(tmp_path / "m")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    model, folder = _saved(tmp_path)
    state = {k: v for k, v in model.state_dict().items() if k != "conv_out.bias"}
    state["extra.weight"] = torch.zeros(1)
    from ddpm.io import save_state_dict

    save_state_dict(state, folder / SAFETENSORS_WEIGHTS_NAME)
    with pytest.raises(WeightsMismatchError, match=r"missing keys: conv_out\.bias.*unexpected keys: extra\.weight"):
        UNet2DModel.from_pretrained(folder)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    _, folder = _saved(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["out_channels"] = 6
    (folder / "config.json").write_text(json.dumps(config))
    expected = r"conv_out\.weight: checkpoint \(3, 32, 3, 3\) vs model \(6, 32, 3, 3\)"
    with pytest.raises(WeightsMismatchError, match=expected):
        UNet2DModel.from_pretrained(folder)
    # in-memory variant
    model = UNet2DModel(**SMALL)
    state = model.state_dict()
    state["conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    with pytest.raises(WeightsMismatchError, match=r"conv_in\.weight"):
        model.load_state_dict_strict(state)


def test_truncated_and_corrupt_weights(tmp_path):
    _, folder = _saved(tmp_path)
    path = folder / SAFETENSORS_WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated or corrupt"):
        UNet2DModel.from_pretrained(folder)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptWeightsError):
        UNet2DModel.from_pretrained(folder)


def test_no_weights_file(tmp_path):
    UNet2DModel(**SMALL).save_config(tmp_path)
    with pytest.raises(FileNotFoundError, match=SAFETENSORS_WEIGHTS_NAME):
        UNet2DModel.from_pretrained(tmp_path)


def test_hub_id_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OfflineError, match="cannot be reached"):
        UNet2DModel.from_pretrained("google/ddpm-cifar10-32")


def test_hub_id_offline_error_in_fresh_process(tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE/HF_HOME at import: check them set before any import too."""
    code = (
        "from ddpm import UNet2DModel\n"
        "from ddpm.io import OfflineError\n"
        "try:\n"
        "    UNet2DModel.from_pretrained('google/ddpm-cifar10-32', subfolder='unet')\n"
        "except OfflineError as err:\n"
        "    print('OFFLINE', err)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "OFFLINE" in result.stdout, result.stderr
    assert "google/ddpm-cifar10-32" in result.stdout


def test_hub_cache_is_used_offline(tmp_path, monkeypatch):
    """A file already in the HF cache loads with no network (the Hub layout, written by hand)."""
    cache = tmp_path / "hub"
    snapshot = cache / "models--google--ddpm-cifar10-32" / "snapshots" / ("0" * 40)
    model = UNet2DModel(**SMALL)
    model.save_pretrained(snapshot)
    (cache / "models--google--ddpm-cifar10-32" / "refs").mkdir(parents=True)
    (cache / "models--google--ddpm-cifar10-32" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = UNet2DModel.from_pretrained("google/ddpm-cifar10-32", cache_dir=cache)
    x = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(outputs(loaded, x), outputs(model.eval(), x), rtol=0, atol=0)
