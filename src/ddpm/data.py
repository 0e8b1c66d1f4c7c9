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

Only the paths the user gives (and ``$DDPM_CIFAR10``, the Debian package's folder) are read; no other folder is
searched. An archive is unpacked once into ``$DDPM_CACHE/data`` (default ``~/.cache/ddpm/data``), in a folder named
after the SHA-256 of its content, so that another archive of the same name never reuses it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
import tarfile
import tempfile
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
    """Image files decoded on access, resized and centre-cropped to ``resolution``, with ``channels`` channels.

    A file that cannot be decoded (a truncated JPEG, a damaged PNG stream: the quick check when the folder is opened
    reads only the headers) is skipped: ``dataset[i]`` then returns the image of the next decodable file in file
    order (i + 1, i + 2, ... modulo the length). The substitute depends on the files alone, not on the process or
    the moment, so a run that meets a bad file resumes exactly (every worker makes the same choice). Each bad file is
    reported once per process with a warning; :meth:`decode` returns ``None`` for it instead (evaluation drops it),
    and :attr:`skipped` lists those met so far in this process. ``unreadable``: the files the quick check already
    left out (kept for reports).
    """

    def __init__(
        self, files: list[Path], resolution: int, channels: int, name: str = "folder", unreadable: list[Path] = ()
    ):
        if not files:
            raise DataError(f"{name}: no readable image")
        self.files = files
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.name = name
        self.unreadable = list(unreadable)
        self._bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.files)

    def decode(self, index: int) -> torch.Tensor | None:
        """The image of file ``index``, or ``None`` when the file cannot be decoded (warned about once)."""
        from PIL import Image

        if index in self._bad:
            return None
        try:
            with Image.open(self.files[index]) as img:
                array = _resize_center_crop(img, self.resolution, self.channels)
        except MemoryError:  # not a property of the file: skipping would make the data order depend on the moment
            raise
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... for bad data
            self._bad[index] = f"{type(err).__name__}: {err}"
            warnings.warn(
                f"{self.name}: skipped {self.files[index]}: cannot decode it ({self._bad[index]}); "
                f"{len(self._bad)} file(s) skipped so far",
                stacklevel=2,
            )
            return None
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.files)
        if not -n <= int(index) < n:
            raise IndexError(f"{self.name}: index {index} out of range for {n} images")
        index = int(index) % n
        for k in range(n):
            image = self.decode((index + k) % n)
            if image is not None:
                return image
        raise DataError(f"{self.name}: none of the {n} image files could be decoded")

    @property
    def skipped(self) -> list[Path]:
        """The files that failed to decode in this process so far (in file order)."""
        return [self.files[i] for i in sorted(self._bad)]

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


def _readable_images(files: list[Path], name: str) -> tuple[list[Path], list[Path]]:
    """The files whose headers PIL can read, and the others (counted in a warning)."""
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
    return good, bad


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
    """Read uint8 images from an .npz as NHWC. A damaged file is a :class:`DataError` naming it; images holding only
    the values 0 and 1 (likely a {0, 1} mask, or binary images not scaled to [0, 255]) give a warning."""
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
    except DataError:
        raise
    except Exception as err:  # OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error
        raise DataError(f"{path}: cannot read .npz ({_npz_problem(path, err)})") from None
    if array.dtype != np.uint8:
        raise DataError(f"{path}: images must be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{path}: expected images NHWC, NCHW or NHW, got shape {array.shape}")
    if array.shape[1] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(0, 2, 3, 1)
    if array.size and int(array.max()) <= 1:
        warnings.warn(
            f"{path}: the uint8 images hold only the values 0 and 1; images are read on the [0, 255] scale, so "
            "these are near-black. If they are a {0, 1} mask or binary images, multiply them by 255 first.",
            stacklevel=2,
        )
    return np.ascontiguousarray(array)


def _npz_problem(path: Path, err: Exception) -> str:
    """What is wrong with an .npz that numpy cannot read, in words."""
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return "the file is empty (0 bytes)"
    text = f"{type(err).__name__}: {err}".strip()
    if size is not None and (isinstance(err, EOFError) or "zip" in text.lower() or "truncat" in text.lower()):
        return f"truncated or not an .npz archive, {size} bytes; {text}"
    return text


def data_fingerprint(spec: str | os.PathLike, split: str = "train") -> str:
    """A short hash of the content of a data source's files, for caches keyed on what a source holds (not only on
    its name): the SHA-256 of a single file (an .npz, an idx file, an archive; up to 256 MiB, beyond that its size
    and modification time), or for a folder the relative path, size and modification time of every image file.
    "" for a source it cannot resolve without opening it."""
    try:
        path = _fingerprint_path(str(spec), split)
        h = hashlib.sha256()
        if path is None:
            return ""
        if path.is_file():
            st = path.stat()
            if st.st_size <= 256 << 20:
                h.update(f"sha256 {file_sha256(path)}".encode())
            else:
                h.update(f"{st.st_size} {st.st_mtime_ns}".encode())
        elif path.is_dir():
            for f in find_images(path):
                st = f.stat()
                h.update(f"{f.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            return ""
    except (DataError, OSError):
        return ""
    return h.hexdigest()[:16]


def _fingerprint_path(text: str, split: str) -> Path | None:
    """The file or image folder that a source spec reads (the idx file of a named or idx source), or None."""
    name, _, arg = text.partition(":")
    path = Path(text)
    if not path.exists():
        if name.lower() in ("fashion-mnist", "fashion_mnist", "fashionmnist"):
            folder = Path(arg) if arg else next((Path(d) for d in FASHION_MNIST_DIRS if Path(d).is_dir()), None)
            return _idx_file_in(folder, split) if folder is not None and folder.is_dir() else None
        if name.lower() == "cifar10":
            root = arg or os.environ.get("DDPM_CIFAR10")
            if not root:
                return None
            path = Path(root)
            return path / split if path.is_dir() else path
        return None
    if path.is_dir() and any(path.glob("*images-idx3-ubyte*")):
        return _idx_file_in(path, split)
    return path


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
    """The CIFAR-10 folder of ``cifar10:PATH`` or ``$DDPM_CIFAR10`` (an archive is unpacked into the cache). Nothing
    else is searched: no folder next to or above the working directory."""
    candidates = [Path(path)] if path else []
    env = os.environ.get("DDPM_CIFAR10")
    if env:
        candidates.append(Path(env))
    for cand in candidates:
        if cand.is_dir() and (cand / "train").is_dir():
            return cand
        if cand.is_file() and cand.name.endswith((".tar.gz", ".tgz", ".tar")):
            return _extract_archive(cand)
    looked = f" Looked at: {', '.join(str(c) for c in candidates)}." if candidates else ""
    raise DataError(
        "cifar10: no data found. Pass --data cifar10:PATH, with PATH a folder holding train/<class>/*.jpg and "
        "test/<class>/*.jpg or a .tar.gz archive of it (cifar10-jpeg.tar.gz), or set DDPM_CIFAR10 to that path; "
        "or point --data at any image folder or .npz of uint8 images." + looked
    )


def data_cache_dir() -> Path:
    """Where archives are unpacked: ``$DDPM_CACHE/data``, default ``~/.cache/ddpm/data``."""
    return Path(os.environ.get("DDPM_CACHE", Path.home() / ".cache" / "ddpm")) / "data"


_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (remembered per path, size and modification time within the process)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    digest = _digests.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        digest = _digests[key] = h.hexdigest()
    return digest


def _extract_archive(archive: Path) -> Path:
    """Unpack ``archive`` once into the cache, in a folder named after the archive's name and the SHA-256 of its
    content (two archives of one name never share it; a changed archive gets a new folder). The folder is filled
    under a temporary name and renamed when complete, so an interrupted extraction is never taken for a whole one."""
    digest = file_sha256(archive)
    cache = data_cache_dir()
    target = cache / f"{archive.name.split('.')[0]}-{digest[:16]}"
    marker = target / ".complete"
    if not _marker_matches(marker, digest):
        cache.mkdir(parents=True, exist_ok=True)
        logger.info("extracting %s to %s", archive, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / ".complete").write_text(json.dumps({"archive": str(archive.resolve()), "sha256": digest}))
            if not _marker_matches(marker, digest):  # else another process finished first
                if target.exists():  # an incomplete folder of that name
                    shutil.rmtree(target)
                try:
                    os.replace(tmp, target)
                except OSError:  # another process won the race
                    if not _marker_matches(marker, digest):
                        raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    # The archive may hold train/ directly or one top folder.
    if (target / "train").is_dir():
        return target
    subs = [p for p in target.iterdir() if p.is_dir() and (p / "train").is_dir()]
    if subs:
        return subs[0]
    raise DataError(f"{archive}: the archive holds no train/ folder")


def _marker_matches(marker: Path, digest: str) -> bool:
    try:
        return json.loads(marker.read_text()).get("sha256") == digest
    except (OSError, ValueError, AttributeError):
        return False


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
            "images, or a named data set: fashion-mnist (apt-get install dataset-fashion-mnist) or cifar10:PATH "
            "(a folder of train/<class>/*.jpg and test/<class>/*.jpg, or its .tar.gz archive)"
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
    good, bad = _readable_images(files, name)
    return ImageFolderDataset(good, resolution, channels, name, unreadable=bad)


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
