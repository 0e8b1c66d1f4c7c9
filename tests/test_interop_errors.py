"""Errors for missing weight files, variants and bad folders, as Diffusers raises them (issue #16, item 4).

For each broken folder both libraries are asked to load it: ddpm's exception must be an instance of the class
Diffusers raises (ddpm may raise a subclass, e.g. ``FileNotFoundError`` where Diffusers raises ``OSError``), and its
message must name the file and the folder.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import huggingface_hub
import pytest
import torch

import ddpm

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


@pytest.fixture(autouse=True)
def offline_and_quiet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    logging.getLogger("diffusers").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def make_folders(root: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY)
    folders = {name: root / name for name in ("config_only", "bin_only", "model", "empty", "bad_json", "corrupt")}
    unet.save_config(folders["config_only"])
    unet.save_pretrained(folders["bin_only"], safe_serialization=False)
    unet.save_pretrained(folders["model"])
    folders["empty"].mkdir()
    folders["bad_json"].mkdir()
    for name in ("config.json", "scheduler_config.json", "model_index.json"):
        (folders["bad_json"] / name).write_text("{not json")
    unet.save_pretrained(folders["corrupt"])
    weights = folders["corrupt"] / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler())
    folders["pipe_no_weights"] = root / "pipe_no_weights"
    pipe.save_pretrained(folders["pipe_no_weights"])
    (folders["pipe_no_weights"] / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    folders["missing"] = root / "does" / "not" / "exist"
    return folders


# (library attribute, folder, keyword arguments, the file the message must name, the folder it must name)
CASES = {
    "model: no weights file": ("UNet2DModel", "config_only", {}, "diffusion_pytorch_model", "config_only"),
    "model: use_safetensors=True, only .bin": (
        "UNet2DModel",
        "bin_only",
        {"use_safetensors": True},
        "diffusion_pytorch_model.safetensors",
        "bin_only",
    ),
    "model: use_safetensors=False, only safetensors": (
        "UNet2DModel",
        "model",
        {"use_safetensors": False},
        "diffusion_pytorch_model.bin",
        "model",
    ),
    "model: missing variant": ("UNet2DModel", "model", {"variant": "fp16"}, "diffusion_pytorch_model.fp16", "model"),
    "model: no config": ("UNet2DModel", "empty", {}, "config.json", "empty"),
    "model: no such folder": ("UNet2DModel", "missing", {}, "config.json", "does/not/exist"),
    "model: invalid config JSON": ("UNet2DModel", "bad_json", {}, "config.json", "bad_json"),
    "model: corrupt weights": ("UNet2DModel", "corrupt", {}, "diffusion_pytorch_model.safetensors", "corrupt"),
    "scheduler: no config": ("DDPMScheduler", "empty", {}, "scheduler_config.json", "empty"),
    "scheduler: no such folder": ("DDPMScheduler", "missing", {}, "scheduler_config.json", "does/not/exist"),
    "scheduler: invalid config JSON": ("DDPMScheduler", "bad_json", {}, "scheduler_config.json", "bad_json"),
    "pipeline: no model_index.json": ("DDPMPipeline", "empty", {}, "model_index.json", "empty"),
    "pipeline: no such folder": ("DDPMPipeline", "missing", {}, "", "does/not/exist"),
    "pipeline: no UNet weights": ("DDPMPipeline", "pipe_no_weights", {}, "diffusion_pytorch_model", "unet"),
    "pipeline: missing variant": ("DDPMPipeline", "pipe_no_weights", {"variant": "fp16"}, "fp16", "pipe_no_weights"),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return make_folders(tmp_path_factory.mktemp("broken"))


@pytest.mark.parametrize("case", list(CASES))
def test_same_exception_type_and_a_message_naming_file_and_folder(folders, case):
    cls_name, folder_key, kwargs, filename, folder_name = CASES[case]
    folder = folders[folder_key]
    with pytest.raises(Exception) as theirs:
        getattr(diffusers, cls_name).from_pretrained(str(folder), **kwargs)
    with pytest.raises(Exception) as ours:
        getattr(ddpm, cls_name).from_pretrained(str(folder), **kwargs)
    assert isinstance(ours.value, type(theirs.value)), (
        f"ddpm raised {type(ours.value).__name__}, Diffusers {type(theirs.value).__name__}: {ours.value}"
    )
    message = str(ours.value)
    assert filename in message and folder_name in message, message


def test_missing_subfolder_is_an_error_where_diffusers_falls_back(folders):
    """Deliberate difference: Diffusers, given a subfolder that lacks the files, silently loads the folder's own
    config and weights; ddpm raises, naming the subfolder."""
    theirs = diffusers.UNet2DModel.from_pretrained(folders["model"], subfolder="unet")
    assert theirs.config.block_out_channels == [8, 16] or tuple(theirs.config.block_out_channels) == (8, 16)
    with pytest.raises(FileNotFoundError, match=r"config\.json.*model/unet"):
        ddpm.UNet2DModel.from_pretrained(folders["model"], subfolder="unet")


def test_mismatched_shapes_raise_an_error_of_diffusers_type(folders):
    """For a tensor of another shape Diffusers raises torch's RuntimeError (without accelerate) or a ValueError (with
    it); ddpm's WeightsMismatchError is both, and lists every problem. Missing tensors: Diffusers keeps them randomly
    initialised with a warning, ddpm refuses (docs/differences.md)."""
    with pytest.raises((RuntimeError, ValueError)) as theirs:
        diffusers.UNet2DModel.from_pretrained(folders["model"], out_channels=6)
    with pytest.raises(
        type(theirs.value), match=r"conv_out\.weight: checkpoint \(3, 8, 3, 3\) vs model \(6, 8, 3, 3\)"
    ):
        ddpm.UNet2DModel.from_pretrained(folders["model"], out_channels=6)
