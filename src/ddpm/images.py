"""Image helpers shared by the pipeline, the ``ddpm`` command and the evaluation: tensors <-> NumPy <-> PIL, grids,
and writing PNG files / ``.npz`` archives.

Conventions: model space is ``[-1, 1]`` (the paper's data scaling, section 3.3); "images" here are in ``[0, 1]`` as
floats (NCHW tensors or NHWC arrays) or ``uint8`` in ``[0, 255]`` (NHWC arrays). Conversion to 8 bits rounds
``x * 255`` to the nearest integer, as Diffusers' ``numpy_to_pil`` does.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import io as ddpm_io


def model_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Map a model-space batch in ``[-1, 1]`` to ``[0, 1]`` (clamped): ``(x / 2 + 0.5).clamp(0, 1)``."""
    return (x / 2 + 0.5).clamp(0, 1)


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    """``(B, C, H, W)`` tensor in ``[0, 1]`` -> ``(B, H, W, C)`` float NumPy array on the CPU.

    float32 and float16 keep their dtype (as in Diffusers); bfloat16, which NumPy lacks, becomes float32.
    """
    if images.dtype == torch.bfloat16:
        images = images.float()
    return images.detach().cpu().permute(0, 2, 3, 1).numpy()


def to_uint8(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float images in ``[0, 1]`` (NHWC array, or NCHW tensor) -> ``uint8`` NHWC array, rounding ``x * 255``.

    ``uint8`` input is returned as is; a single image (3 dims) gets a batch dimension.
    """
    if isinstance(images, torch.Tensor):
        images = pt_to_numpy(images if images.ndim == 4 else images[None])
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype == np.uint8:
        return images
    return (images * 255).round().astype(np.uint8)


def numpy_to_pil(images: np.ndarray) -> list[Image.Image]:
    """NHWC float images in ``[0, 1]`` (or ``uint8``) -> a list of PIL images; one channel gives mode ``"L"``."""
    arrays = to_uint8(images)
    if arrays.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arrays]
    return [Image.fromarray(a) for a in arrays]


def pil_to_numpy(images: Image.Image | Sequence[Image.Image]) -> np.ndarray:
    """PIL image(s) -> ``uint8`` NHWC array (mode ``"L"`` gives one channel)."""
    if isinstance(images, Image.Image):
        images = [images]
    arrays = [np.asarray(im) for im in images]
    return np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])


def grid_shape(n: int, nrow: int | None = None) -> tuple[int, int]:
    """(rows, columns) of a near-square grid for ``n`` images; ``nrow`` fixes the number of images per row."""
    if n < 1:
        raise ValueError(f"a grid needs at least one image, got {n}")
    cols = nrow if nrow else math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def make_grid(
    images: np.ndarray | torch.Tensor | Sequence[Image.Image], nrow: int | None = None, padding: int = 2, pad_value=255
) -> np.ndarray:
    """Tile images into one ``uint8`` ``(H', W', C)`` array: a near-square grid with ``padding`` pixels of
    ``pad_value`` between and around the tiles. Accepts float/uint8 NHWC arrays, NCHW tensors or PIL images."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        arrays = pil_to_numpy(images)
    else:
        arrays = to_uint8(images)
    n, h, w, c = arrays.shape
    rows, cols = grid_shape(n, nrow)
    grid = np.full((rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding, c), pad_value, dtype=np.uint8)
    for i, image in enumerate(arrays):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    return grid


def _save_png(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    with ddpm_io.atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def save_grid(images, path: str | os.PathLike, nrow: int | None = None, padding: int = 2) -> Path:
    """Write the images as one near-square grid PNG (atomically); returns the path."""
    path = Path(path)
    _save_png(make_grid(images, nrow=nrow, padding=padding), path)
    return path


def save_images(images, folder: str | os.PathLike, start: int = 0, prefix: str = "") -> list[Path]:
    """Write one PNG per image into ``folder`` as ``<prefix><index:06d>.png`` (index from ``start``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = pil_to_numpy(images) if isinstance(images, (list, tuple)) else to_uint8(images)
    paths = []
    for i, array in enumerate(arrays):
        path = folder / f"{prefix}{start + i:06d}.png"
        _save_png(array, path)
        paths.append(path)
    return paths


def save_npz(images, path: str | os.PathLike) -> Path:
    """Write ``uint8`` NHWC images to a compressed ``.npz`` under the key ``"images"`` (atomically)."""
    path = Path(path)
    arrays = pil_to_numpy(images) if isinstance(images, (list, tuple)) else to_uint8(images)
    with ddpm_io.atomic_open(path, "wb") as f:
        np.savez_compressed(f, images=arrays)
    return path
