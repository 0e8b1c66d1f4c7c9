"""Hugging Face ``datasets`` as an image source of :func:`ddpm.data.open_dataset` (training, FID, NLL).

Two spellings:

* ``hf:NAME[:SPLIT]``: ``datasets.load_dataset(NAME, split=SPLIT)`` (default split: the caller's, "train" for
  training). Whether it may download is the ``datasets`` library's business: with ``HF_DATASETS_OFFLINE=1`` (or
  ``HF_HUB_OFFLINE=1``) only its local cache is used.
* a folder written by ``Dataset.save_to_disk`` (it holds ``dataset_info.json`` and ``state.json``) or by
  ``DatasetDict.save_to_disk`` (``dataset_dict.json``; the split is picked as above): ``datasets.load_from_disk``,
  which never downloads.

The images come from one column: ``image_column`` (``--image-column``) or, by default, the first column whose feature
is ``datasets.Image``. Each item is decoded on access (a PIL image, ``{"bytes", "path"}`` when decoding is off, or an
``H x W [x C]`` uint8 array), resized on its shorter side (bicubic) and centre-cropped to the resolution, and converted
to the channels, as for an image folder. ``datasets`` is an optional dependency: ``pip install datasets``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ddpm.data import DataError, _resize_center_crop

HF_PREFIX = "hf:"
INSTALL_HINT = "pip install datasets (or pip install 'ddpm[datasets]')"


def is_saved_dataset(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    p = Path(path)
    return p.is_dir() and (
        ((p / "dataset_info.json").is_file() and (p / "state.json").is_file()) or (p / "dataset_dict.json").is_file()
    )


def is_hf_source(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a Hugging Face data set (``hf:NAME[:SPLIT]`` or a ``save_to_disk`` folder)."""
    text = os.fspath(spec)
    return text.startswith(HF_PREFIX) or is_saved_dataset(text)


def _datasets(spec: str):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: Hugging Face data sets need the datasets package: {INSTALL_HINT}") from None
    return datasets


def _pick_split(obj, split: str, spec: str):
    """A ``DatasetDict`` (a mapping of split names) -> its ``split``; a ``Dataset`` as it is."""
    if hasattr(obj, "features") or not hasattr(obj, "keys"):
        return obj
    names = sorted(obj.keys())
    if split not in obj:
        raise DataError(f"{spec}: no split {split!r}; the splits are {', '.join(names)} (write {spec}:SPLIT)")
    return obj[split]


def find_image_column(features, spec: str, datasets_module) -> str:
    """The first column whose feature is ``datasets.Image``."""
    for name, feature in features.items():
        if isinstance(feature, datasets_module.Image):
            return name
    raise DataError(
        f"{spec}: no column of Image feature among {', '.join(features)}; name the images' column with --image-column"
    )


def open_hf_dataset(
    spec: str | os.PathLike,
    resolution: int | None = None,
    channels: int | None = None,
    split: str = "train",
    image_column: str | None = None,
) -> HFImageDataset:
    """Open ``spec`` (see the module docstring) as a data set of uint8 ``[C, H, W]`` tensors. ``resolution`` None:
    the first image's shorter side; ``channels`` None: 3."""
    text = os.fspath(spec)
    datasets = _datasets(text)
    if text.startswith(HF_PREFIX):
        name, _, wanted = text[len(HF_PREFIX) :].partition(":")
        if not name:
            raise DataError(f"data source {text!r}: write hf:NAME or hf:NAME:SPLIT")
        try:
            data = datasets.load_dataset(name, split=wanted or split)
        except Exception as err:  # the library's own errors (not found, offline, no such split) differ by version
            raise DataError(
                f"{text}: datasets.load_dataset({name!r}, split={wanted or split!r}) failed: {err}"
            ) from None
        label = text
    else:
        try:
            data = datasets.load_from_disk(text)
        except Exception as err:
            raise DataError(f"{text}: datasets.load_from_disk failed: {err}") from None
        wanted, label = "", Path(text).name
    data = _pick_split(data, wanted or split, text)
    columns = list(data.features)
    if image_column is None:
        image_column = find_image_column(data.features, text, datasets)
    elif image_column not in columns:
        raise DataError(
            f"--image-column {image_column!r}: {text} has no such column; its columns: {', '.join(columns)}"
        )
    if len(columns) > 1 and hasattr(data, "select_columns"):
        data = data.select_columns([image_column])  # decode only the images
    if len(data) == 0:
        raise DataError(f"{text}: no images")
    dataset = HFImageDataset(data, image_column, resolution or 1, channels or 3, name=label)
    if resolution is None:
        dataset.resolution = min(dataset.decode(0).size)
    return dataset


class HFImageDataset(Dataset):
    """A Hugging Face data set's image column, decoded on access, resized and centre-cropped to ``resolution``."""

    def __init__(self, data, column: str, resolution: int, channels: int, name: str = "hf"):
        self.data = data
        self.column = column
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.name = name

    def __len__(self) -> int:
        return len(self.data)

    def decode(self, index: int):
        """Item ``index`` of the image column as a PIL image."""
        from PIL import Image

        value = self.data[int(index)][self.column]
        if isinstance(value, Image.Image):
            return value
        if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
            return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
        array = np.asarray(value)
        if array.dtype != np.uint8 or array.ndim not in (2, 3):
            raise DataError(
                f"{self.name}: item {index} of column {self.column!r} is not an image ({type(value).__name__})"
            )
        return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)

    def __getitem__(self, index: int) -> torch.Tensor:
        with self.decode(index) as img:
            array = _resize_center_crop(img, self.resolution, self.channels)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)
