"""Image data sets: a shared service of training and evaluation (neither owns it).

Every source yields ``uint8`` tensors of shape ``[C, H, W]`` (C = 1 or 3). Scaling to [-1, 1] and random flips are
done by the consumer on whole batches (on the device, from a seeded generator), so that the data order and the
augmentation are reproducible and resumable.

Sources (``open_dataset(spec, ...)``):

* a folder of images, searched recursively for png/jpg/jpeg/webp/bmp, any size: resized (shorter side, bicubic,
  antialiased) and centre-cropped to ``resolution``, converted to ``channels``. Unreadable files are skipped and
  counted in a warning; a folder with no readable image is an error.
* a file or folder in the MNIST idx format (``*-images-idx3-ubyte`` or ``.gz``);
* an ``.npz`` holding uint8 images (``images``/``arr_0`` or the only array) as NHWC, NCHW or NHW;
* a named data set: ``fashion-mnist`` (the Debian package dataset-fashion-mnist) or ``cifar10[:PATH]`` (a folder laid
  out ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``, or the ``cifar10-jpeg.tar.gz`` archive of it).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
CIFAR10_ARCHIVE_NAME = "cifar10-jpeg.tar.gz"


class DataError(ValueError):
    """A data source is missing, empty, unreadable or does not fit the requested shape."""


# ---------------------------------------------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------------------------------------------
class ArrayImageDataset(Dataset):
    """Images held in memory as one uint8 tensor ``[N, C, H, W]``."""

    def __init__(self, images: torch.Tensor, name: str = "array"):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"expected a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if len(images) == 0:
            raise DataError(f"{name}: no images")
        self.images = images
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


class ImageFolderDataset(Dataset):
    """Image files decoded on access, resized and centre-cropped to ``resolution``, with ``channels`` channels."""

    def __init__(self, files: list[Path], resolution: int, channels: int, name: str = "folder"):
        if not files:
            raise DataError(f"{name}: no readable image")
        self.files = files
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.name = name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as img:
            array = _resize_center_crop(img, self.resolution, self.channels)
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)


def _resize_center_crop(img, resolution: int, channels: int) -> np.ndarray:
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if (w, h) != (resolution, resolution):
        scale = resolution / min(w, h)
        nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=None)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
    array = np.array(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


# ---------------------------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------------------------
def find_images(folder: Path) -> list[Path]:
    """All image files below ``folder``, sorted (a stable order, whatever the file system returns)."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files)


def _readable_images(files: list[Path], name: str) -> list[Path]:
    from PIL import Image

    good, bad = [], []
    for path in files:
        try:
            with Image.open(path) as img:
                img.verify()
            good.append(path)
        except Exception:
            bad.append(path)
    if bad:
        shown = ", ".join(str(p) for p in bad[:3]) + (" ..." if len(bad) > 3 else "")
        if not good:
            raise DataError(f"{name}: none of the {len(bad)} image files could be read ({shown})")
        warnings.warn(f"{name}: skipped {len(bad)} unreadable image file(s) of {len(files)}: {shown}", stacklevel=3)
    return good


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an idx3 image file (optionally gzipped) as uint8 ``[N, H, W]``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(16)
            if len(header) < 16:
                raise DataError(f"{path}: too short for an idx image file")
            magic, n, rows, cols = struct.unpack(">IIII", header)
            if magic != 0x00000803:
                raise DataError(f"{path}: not an idx3 uint8 image file (magic {magic:#010x}, expected 0x00000803)")
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read idx file ({err})") from None
    expected = n * rows * cols
    if len(data) < expected:
        raise DataError(f"{path}: truncated idx file ({len(data)} of {expected} bytes of pixels)")
    return np.frombuffer(data[:expected], dtype=np.uint8).reshape(n, rows, cols).copy()


def _idx_file_in(folder: Path, split: str) -> Path:
    prefix = "train" if split == "train" else "t10k"
    candidates = sorted(folder.glob(f"{prefix}-images-idx3-ubyte*")) or sorted(folder.glob(f"{prefix}*images*idx3*"))
    if not candidates:
        raise DataError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz] file for split '{split}'")
    return candidates[0]


def read_npz_images(path: str | os.PathLike) -> np.ndarray:
    """Read uint8 images from an .npz as NHWC."""
    path = Path(path)
    try:
        with np.load(path) as data:
            keys = list(data.keys())
            key = next(
                (k for k in ("images", "arr_0", "x", "samples") if k in keys), keys[0] if len(keys) == 1 else None
            )
            if key is None:
                raise DataError(f"{path}: several arrays {keys}; name the images 'images'")
            array = data[key]
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read .npz ({err})") from None
    if array.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{path}: expected images NHWC, NCHW or NHW, got shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(array)


def _convert_channels(nhwc: np.ndarray, channels: int | None) -> np.ndarray:
    have = nhwc.shape[-1]
    if channels is None or channels == have:
        return nhwc
    if channels == 3 and have == 1:
        return np.repeat(nhwc, 3, axis=-1)
    if channels == 1 and have == 3:  # ITU-R 601-2 luma, as PIL's convert("L")
        y = nhwc[..., 0] * 0.299 + nhwc[..., 1] * 0.587 + nhwc[..., 2] * 0.114
        return np.clip(np.round(y), 0, 255).astype(np.uint8)[..., None]
    raise DataError(f"cannot convert {have} channels to {channels}")


def _array_dataset(nhwc: np.ndarray, resolution: int | None, channels: int | None, name: str) -> ArrayImageDataset:
    nhwc = _convert_channels(nhwc, channels)
    h, w = nhwc.shape[1:3]
    if resolution is not None and (h, w) != (resolution, resolution):
        raise DataError(
            f"{name}: images are {h}x{w}, which does not fit --resolution {resolution}; "
            f"use --resolution {h} (or convert the data to an image folder, which is resized)"
            if h == w
            else f"{name}: images are {h}x{w}, not square; --resolution {resolution} needs square images"
        )
    return ArrayImageDataset(torch.from_numpy(nhwc).permute(0, 3, 1, 2).contiguous(), name=name)


def _cifar10_folder(path: str | None) -> Path:
    candidates = [Path(path)] if path else []
    env = os.environ.get("DDPM_CIFAR10")
    if env:
        candidates.append(Path(env))
    candidates += [Path("../shared/data") / CIFAR10_ARCHIVE_NAME, Path("shared/data") / CIFAR10_ARCHIVE_NAME]
    for cand in candidates:
        if cand.is_dir() and (cand / "train").is_dir():
            return cand
        if cand.is_file() and cand.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _extract_archive(cand)
    raise DataError(
        "cifar10: no data found; pass --data cifar10:PATH with PATH a folder holding train/<class>/*.jpg and "
        "test/<class>/*.jpg or the cifar10-jpeg.tar.gz archive (or set DDPM_CIFAR10). Looked at: "
        + ", ".join(str(c) for c in candidates)
    )


def _extract_archive(archive: Path) -> Path:
    cache = Path(os.environ.get("DDPM_CACHE", Path.home() / ".cache" / "ddpm")) / "data"
    target = cache / archive.name.split(".")[0]
    marker = target / ".complete"
    if not marker.exists():
        target.mkdir(parents=True, exist_ok=True)
        logger.info("extracting %s to %s", archive, target)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
        marker.write_text(str(archive.resolve()))
    # The archive may hold train/ directly or one top folder.
    if (target / "train").is_dir():
        return target
    subs = [p for p in target.iterdir() if p.is_dir() and (p / "train").is_dir()]
    if subs:
        return subs[0]
    raise DataError(f"{archive}: the archive holds no train/ folder")


def open_dataset(
    spec: str | os.PathLike,
    resolution: int | None = None,
    channels: int | None = None,
    split: str = "train",
    image_column: str | None = None,
) -> ArrayImageDataset | ImageFolderDataset:
    """Open a data source (see the module docstring) as a data set of uint8 ``[C, H, W]`` tensors.

    ``resolution``/``channels`` of ``None`` keep what the source has (a folder then needs ``resolution``).
    ``split`` ("train" or "test") picks the split of named and idx sources. Hugging Face data sets (``hf:NAME[:SPLIT]``
    or a ``save_to_disk`` folder) are read by :mod:`ddpm.data_hf`, from ``image_column`` (default: auto-detected).
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if resolution is not None and (int(resolution) != resolution or resolution < 1):
        raise DataError(f"resolution must be a positive integer, got {resolution!r}")
    text = str(spec)
    from ddpm import data_hf

    if data_hf.is_hf_source(text):
        return data_hf.open_hf_dataset(text, resolution, channels, split, image_column=image_column)
    name, _, arg = text.partition(":")
    if name.lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist") and not Path(text).exists():
        folder = Path(arg) if arg else next((Path(d) for d in FASHION_MNIST_DIRS if Path(d).is_dir()), None)
        if folder is None:
            raise DataError(
                "fashion-mnist: not installed. Install the Debian package: apt-get install dataset-fashion-mnist "
                f"(it provides {FASHION_MNIST_DIRS[0]}), or pass --data fashion-mnist:FOLDER"
            )
        images = read_idx_images(_idx_file_in(folder, split))
        return _array_dataset(images[..., None], resolution, channels, f"fashion-mnist/{split}")
    if name.lower() == "cifar10" and not Path(text).exists():
        root = _cifar10_folder(arg or None)
        return _folder_dataset(root / split, resolution or 32, channels or 3, f"cifar10/{split}")

    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"data source {text!r} does not exist; give an image folder, an idx file or folder, an .npz of uint8 "
            "images, or a named data set (fashion-mnist, cifar10[:PATH])"
        )
    if path.is_file():
        if path.suffix == ".npz":
            return _array_dataset(read_npz_images(path), resolution, channels, path.name)
        if "idx3" in path.name:
            return _array_dataset(read_idx_images(path)[..., None], resolution, channels, path.name)
        raise DataError(f"{path}: unknown file type; expected .npz or an idx3 image file")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"{path}: folder is not readable")
    if any(path.glob("*images-idx3-ubyte*")):
        images = read_idx_images(_idx_file_in(path, split))
        return _array_dataset(images[..., None], resolution, channels, f"{path.name}/{split}")
    if resolution is None:
        raise DataError(f"{path}: an image folder needs a resolution to resize and crop its images to")
    return _folder_dataset(path, resolution, channels or 3, path.name)


def _folder_dataset(folder: Path, resolution: int, channels: int, name: str) -> ImageFolderDataset:
    if not folder.is_dir():
        raise DataError(f"{name}: {folder} is not a folder")
    files = find_images(folder)
    if not files:
        raise DataError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found below {folder}")
    return ImageFolderDataset(_readable_images(files, name), resolution, channels, name)


def load_uint8_images(
    spec: str | os.PathLike,
    resolution: int | None = None,
    channels: int | None = None,
    split: str = "train",
    limit: int | None = None,
    num_workers: int = 0,
) -> np.ndarray:
    """All (or the first ``limit``) images of a source as one uint8 NHWC array (for evaluation and export)."""
    dataset = open_dataset(spec, resolution=resolution, channels=channels, split=split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if isinstance(dataset, ArrayImageDataset):
        return dataset.images[:n].permute(0, 2, 3, 1).numpy()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(n)), batch_size=256, num_workers=num_workers
    )
    return torch.cat(list(loader)).permute(0, 2, 3, 1).numpy()


def to_model_range(batch_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the paper's scaling, x/127.5 - 1)."""
    return batch_uint8.to(dtype).div_(127.5).sub_(1.0)
