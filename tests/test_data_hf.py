"""Hugging Face data sets as a source (``hf:NAME[:SPLIT]`` and ``save_to_disk`` folders). The ``datasets`` package
is optional: a stand-in module checks our side (column detection, splits, decoding, errors, training on it), and
the real package, when installed, reads a tiny data set written by ``save_to_disk``. Nothing is downloaded."""

import io
import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli import main
from ddpm.data import DataError, _resize_center_crop, load_uint8_images, open_dataset
from ddpm.data_hf import HFImageDataset, is_hf_source
from ddpm.training.trainer import Trainer
from test_train_loop import TINY_UNET, _cfg


def _images(n=6, size=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


class _FakeDataset:
    """The part of datasets.Dataset that ddpm.data_hf uses: features, len, row access, select_columns."""

    def __init__(self, columns: dict, features: dict):
        self.columns, self.features = columns, features
        self.selected = None

    def __len__(self):
        return len(next(iter(self.columns.values())))

    def __getitem__(self, index):
        return {name: values[index] for name, values in self.columns.items()}

    def select_columns(self, names):
        out = _FakeDataset({n: self.columns[n] for n in names}, {n: self.features[n] for n in names})
        out.selected = list(names)
        return out


@pytest.fixture
def fake_datasets(monkeypatch):
    module = types.ModuleType("datasets")

    class ImageFeature:
        pass

    class Value:
        def __init__(self, dtype):
            self.dtype = dtype

    class DatasetDict(dict):
        pass

    module.Image, module.Value, module.DatasetDict = ImageFeature, Value, DatasetDict
    module.saved, module.hub, module.calls = {}, {}, []

    def load_from_disk(path):
        module.calls.append(("load_from_disk", path))
        return module.saved[path]

    def load_dataset(name, split=None):
        module.calls.append(("load_dataset", name, split))
        if (name, split) not in module.hub:
            raise FileNotFoundError(f"Couldn't find a dataset script or data file for {name}")
        return module.hub[(name, split)]

    module.load_from_disk, module.load_dataset = load_from_disk, load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return module


def _saved_folder(tmp_path, fake, data, name="saved", dict_of_splits=False):
    folder = tmp_path / name
    folder.mkdir()
    if dict_of_splits:
        (folder / "dataset_dict.json").write_text(json.dumps({"splits": sorted(data)}))
    else:
        (folder / "dataset_info.json").write_text("{}")
        (folder / "state.json").write_text("{}")
    fake.saved[str(folder)] = data
    return folder


def test_save_to_disk_folder_with_the_image_column_found(tmp_path, fake_datasets):
    images = _images()
    data = _FakeDataset(
        {"label": list(range(6)), "picture": images},
        {"label": fake_datasets.Value("int64"), "picture": fake_datasets.Image()},
    )
    folder = _saved_folder(tmp_path, fake_datasets, data)
    assert is_hf_source(folder) and is_hf_source("hf:user/name") and not is_hf_source(tmp_path)
    ds = open_dataset(folder, resolution=8, channels=3)
    assert isinstance(ds, HFImageDataset) and ds.column == "picture" and ds.data.selected == ["picture"]
    assert len(ds) == 6 and ds[2].dtype == torch.uint8 and ds[2].shape == (3, 8, 8)
    expected = _resize_center_crop(images[2], 8, 3)  # the same resize and crop as an image folder
    assert torch.equal(ds[2], torch.from_numpy(expected).permute(2, 0, 1))
    assert open_dataset(folder, resolution=8, channels=1)[0].shape == (1, 8, 8)
    assert load_uint8_images(folder).shape == (6, 10, 10, 3)  # no resolution: the first image's shorter side


def test_hub_names_splits_and_undecoded_or_array_columns(tmp_path, fake_datasets):
    buf = io.BytesIO()
    _images(1, size=(8, 8))[0].save(buf, format="PNG")
    encoded = _FakeDataset({"img": [{"bytes": buf.getvalue(), "path": None}] * 3}, {"img": fake_datasets.Image()})
    arrays = _FakeDataset({"pixels": [np.full((8, 8), 7, np.uint8)] * 2}, {"pixels": fake_datasets.Value("uint8")})
    fake_datasets.hub[("user/faces", "train")] = encoded
    fake_datasets.hub[("user/faces", "validation")] = arrays
    ds = open_dataset("hf:user/faces", resolution=8, channels=3)
    assert fake_datasets.calls[-1] == ("load_dataset", "user/faces", "train") and len(ds) == 3
    assert torch.equal(ds[0], torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1))
    grey = open_dataset("hf:user/faces:validation", resolution=8, channels=1, image_column="pixels")
    assert fake_datasets.calls[-1] == ("load_dataset", "user/faces", "validation")
    assert torch.equal(grey[1], torch.full((1, 8, 8), 7, dtype=torch.uint8))
    fake_datasets.hub[("user/faces", "test")] = encoded
    assert len(open_dataset("hf:user/faces", resolution=8, split="test")) == 3


def test_dataset_dict_folder_picks_the_split(tmp_path, fake_datasets):
    feats = {"image": fake_datasets.Image()}
    splits = fake_datasets.DatasetDict(
        train=_FakeDataset({"image": _images(4)}, feats), test=_FakeDataset({"image": _images(2)}, feats)
    )
    folder = _saved_folder(tmp_path, fake_datasets, splits, dict_of_splits=True)
    assert len(open_dataset(folder, resolution=8)) == 4 and len(open_dataset(folder, resolution=8, split="test")) == 2
    only_train = fake_datasets.DatasetDict(train=splits["train"])
    other = _saved_folder(tmp_path, fake_datasets, only_train, name="other", dict_of_splits=True)
    with pytest.raises(DataError, match=r"no split 'test'; the splits are train"):
        open_dataset(other, resolution=8, split="test")


def test_clear_errors(tmp_path, fake_datasets, monkeypatch):
    labels = _FakeDataset({"label": [1, 2]}, {"label": fake_datasets.Value("int64")})
    folder = _saved_folder(tmp_path, fake_datasets, labels)
    with pytest.raises(DataError, match=r"no column of Image feature among label; name .* --image-column"):
        open_dataset(folder, resolution=8)
    with pytest.raises(DataError, match=r"--image-column 'img': .* no such column; its columns: label"):
        open_dataset(folder, resolution=8, image_column="img")
    with pytest.raises(DataError, match=r"item 0 of column 'label' is not an image"):
        open_dataset(folder, resolution=8, image_column="label")[0]
    with pytest.raises(DataError, match=r"hf:nobody/nothing: datasets.load_dataset\('nobody/nothing'"):
        open_dataset("hf:nobody/nothing", resolution=8)
    with pytest.raises(DataError, match=r"write hf:NAME"):
        open_dataset("hf:", resolution=8)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match=r"need the datasets package: pip install datasets"):
        open_dataset("hf:user/faces", resolution=8)


def test_training_on_a_saved_dataset_and_the_cli_option(tmp_path, fake_datasets, capsys):
    feats = {"a": fake_datasets.Value("string"), "img": fake_datasets.Image(), "img2": fake_datasets.Image()}
    data = _FakeDataset({"a": ["x"] * 8, "img": _images(8), "img2": _images(8, seed=1)}, feats)
    folder = _saved_folder(tmp_path, fake_datasets, data)
    result = Trainer(_cfg(folder, tmp_path / "run", max_steps=2, image_column="img2"), progress=False).run()
    assert result.step == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["image_column"] == "img2" and saved["data"] == str(folder)
    unet = tmp_path / "unet.json"
    unet.write_text(json.dumps(TINY_UNET))
    args = ["train", "--data", str(folder), "--resolution", "8", "--model-config", str(unet), "--batch-size", "4"]
    args += ["--max-steps", "1", "--num-workers", "0", "--sample-every", "0", "--no-progress", "--image-column", "nope"]
    assert main([*args, "--output-dir", str(tmp_path / "cli")]) == 2
    assert "--image-column 'nope'" in capsys.readouterr().err


def test_real_datasets_save_to_disk_round_trip(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="the datasets package is not installed (an optional extra)")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    images = _images(5)
    features = datasets.Features({"label": datasets.Value("int64"), "image": datasets.Image()})
    data = datasets.Dataset.from_dict({"label": list(range(5)), "image": images}, features=features)
    data.save_to_disk(str(tmp_path / "saved"))
    ds = open_dataset(tmp_path / "saved", resolution=8, channels=3)
    assert len(ds) == 5 and ds.column == "image"
    assert torch.equal(ds[3], torch.from_numpy(_resize_center_crop(images[3], 8, 3)).permute(2, 0, 1))
    datasets.DatasetDict(train=data, test=data.select(range(2))).save_to_disk(str(tmp_path / "dict"))
    assert len(open_dataset(tmp_path / "dict", resolution=8, split="test")) == 2
