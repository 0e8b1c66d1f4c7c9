"""Image helpers shared by the pipeline, the ``ddpm`` command and the evaluation: tensors <-> NumPy <-> PIL, grids,
and writing PNG files / ``.npz`` archives.

Conventions: model space is ``[-1, 1]`` (the paper's data scaling, section 3.3); "images" here are in ``[0, 1]`` as
floats (NCHW tensors or NHWC arrays) or ``uint8`` in ``[0, 255]`` (NHWC arrays). Conversion to 8 bits rounds
``x * 255`` to the nearest integer, as Diffusers' ``numpy_to_pil`` does.

Legibility: a grid PNG of small images (a 4 x 4 grid of 28 x 28 images is 122 px wide) is enlarged by an integer
factor ``scale`` with nearest-neighbour replication, so that each source pixel becomes a ``scale x scale`` block of the
same value (no interpolation, nothing invented). ``scale="auto"`` picks the smallest factor that makes the long side
at least :data:`MIN_GRID_SIDE` px; ``scale=1`` keeps the raw pixels. :func:`make_grid` keeps ``scale=1`` by default
(an array for further use); :func:`save_grid` (a picture for a person) defaults to ``"auto"``. :func:`labelled_grid`
adds the figures' column and row labels, drawn with PIL's own font (no font file needed); the tick and text helpers
at the end are shared by the PIL plots (the training loss curve, Fig. 5).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import io as ddpm_io

#: ``scale="auto"`` enlarges a grid until its long side is at least this many pixels.
MIN_GRID_SIDE = 512
#: The largest integer scale accepted (a single 8 x 8 image at 64 is 512 px).
MAX_SCALE = 64


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


def check_scale(scale) -> int | str:
    """``scale`` as given, if valid: ``"auto"`` or an integer in ``1..MAX_SCALE``; otherwise a ``ValueError``."""
    if isinstance(scale, str) and scale.strip().lower() == "auto":
        return "auto"
    value = scale
    if isinstance(scale, str):
        try:
            value = int(scale.strip())
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_SCALE:
        raise ValueError(f"scale must be 'auto' or an integer in 1..{MAX_SCALE} (1: raw pixels), got {scale!r}")
    return int(value)


def auto_scale(height: int, width: int, min_side: int = MIN_GRID_SIDE, min_tile: int = 0, tile: int = 0) -> int:
    """The smallest integer k >= 1 with ``k * max(height, width) >= min_side`` and, when ``min_tile`` and ``tile``
    are given, ``k * tile >= min_tile`` (so that labelled figures have tiles wide enough for their labels)."""
    k = max(1, math.ceil(min_side / max(height, width, 1)))
    if min_tile and tile:
        k = max(k, math.ceil(min_tile / tile))
    return min(k, MAX_SCALE)


def resolve_scale(scale, height: int, width: int, **auto) -> int:
    """The integer factor for a ``height x width`` picture: ``scale`` itself, or :func:`auto_scale` for ``"auto"``."""
    scale = check_scale(scale)
    return auto_scale(height, width, **auto) if scale == "auto" else scale


def upscale(array: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an ``(H, W, ...)`` array by the integer ``scale``: pixel ``(i, j)`` becomes the
    block ``[i*scale:(i+1)*scale, j*scale:(j+1)*scale]``. ``scale=1`` returns the array itself."""
    scale = check_scale(scale)
    if scale == "auto":
        raise ValueError("upscale needs an integer scale; resolve 'auto' with resolve_scale first")
    if scale == 1:
        return array
    return np.repeat(np.repeat(array, scale, axis=0), scale, axis=1)


def make_grid(
    images: np.ndarray | torch.Tensor | Sequence[Image.Image],
    nrow: int | None = None,
    padding: int = 2,
    pad_value=255,
    scale: int | str = 1,
) -> np.ndarray:
    """Tile images into one ``uint8`` ``(H', W', C)`` array: a near-square grid with ``padding`` pixels of
    ``pad_value`` between and around the tiles. Accepts float/uint8 NHWC arrays, NCHW tensors or PIL images.

    ``scale`` enlarges the whole grid (tiles and padding) by nearest-neighbour replication (:func:`upscale`);
    ``"auto"`` as in :func:`auto_scale`. The default 1 returns the raw pixels."""
    scale = check_scale(scale)
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
    return upscale(grid, resolve_scale(scale, *grid.shape[:2]))


def _save_png(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    with ddpm_io.atomic_open(path, "wb") as f:
        image.save(f, format="PNG")


def save_grid(
    images, path: str | os.PathLike, nrow: int | None = None, padding: int = 2, scale: int | str = "auto"
) -> Path:
    """Write the images as one near-square grid PNG (atomically); returns the path.

    A grid meant to be looked at: by default (``scale="auto"``) it is enlarged by the smallest integer factor that
    makes its long side at least :data:`MIN_GRID_SIDE` px (nearest neighbour); ``scale=1`` writes the raw pixels."""
    path = Path(path)
    _save_png(make_grid(images, nrow=nrow, padding=padding, scale=scale), path)
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


# ---------------------------------------------------------------------------------------------------------------
# Labels drawn into the picture
# ---------------------------------------------------------------------------------------------------------------
def font(size: int):
    """PIL's bundled font at ``size`` px (Pillow >= 10.1 with FreeType); older Pillow: its fixed bitmap font.
    The bundled font covers ASCII and Latin letters only (no Greek): labels spell "lambda"."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def text_size(draw: ImageDraw.ImageDraw, text: str, fnt) -> tuple[int, int]:
    """(width, height) in pixels of ``text`` drawn with ``fnt``."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    return right - left, bottom - top


def draw_text(draw, xy: tuple[float, float], text: str, fnt, align: str = "left", valign: str = "middle", fill=0):
    """Draw ``text`` with its left/centre/right edge (``align``) at x and its top/middle/bottom (``valign``) at y.
    Positions come from the text's bounding box, so this works with FreeType and bitmap fonts alike."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    x, y = xy
    x -= {"left": left, "center": (left + right) / 2, "right": right}[align]
    y -= {"top": top, "middle": (top + bottom) / 2, "bottom": bottom}[valign]
    draw.text((round(x), round(y)), text, fill=fill, font=fnt)


def _fitting_font(draw, labels: Sequence[str], max_width: float, size: int, min_size: int = 8):
    """The largest font of size <= ``size`` (and >= ``min_size``) in which every label is at most ``max_width``."""
    while True:
        fnt = font(size)
        if size <= min_size or all(text_size(draw, t, fnt)[0] <= max_width for t in labels):
            return fnt
        size -= 1


def labelled_grid(
    rows: Sequence[np.ndarray],
    col_labels: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    corner: str | None = None,
    title: str | None = None,
    padding: int = 2,
    scale: int | str = "auto",
) -> np.ndarray:
    """A figure: ``rows`` of ``uint8`` NHWC images (every row equally long) as a grid (:func:`make_grid`, enlarged by
    ``scale``; ``"auto"`` also makes tiles at least 64 px wide so that labels fit) with text around it.

    ``col_labels`` (one per column) go in a band above the tiles, centred on each column; ``row_labels`` (one per
    row) in a band on the left, centred on each row; ``corner`` in that band at the height of the column labels (it
    names what the column labels are, e.g. "t"); ``title`` in one line on top. Black on white; the grid's pixels are
    kept exactly (at offset (band width, band height)). Returns a ``uint8`` ``(H, W, C)`` array, C as the images."""
    rows = [to_uint8(np.asarray(r)) for r in rows]
    if not rows or len({len(r) for r in rows}) != 1 or len(rows[0]) == 0:
        raise ValueError("a figure needs at least one row, and every row must hold the same number of images")
    n_cols = len(rows[0])
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"col_labels: {len(col_labels)} labels for {n_cols} columns")
    if row_labels is not None and len(row_labels) != len(rows):
        raise ValueError(f"row_labels: {len(row_labels)} labels for {len(rows)} rows")
    _, h, w, c = rows[0].shape
    raw = make_grid(np.concatenate(rows), nrow=n_cols, padding=padding)
    k = resolve_scale(scale, *raw.shape[:2], min_tile=64, tile=min(h, w))
    grid = upscale(raw, k)
    if not (col_labels or row_labels or corner or title):
        return grid

    mode = "L" if c == 1 else "RGB"
    probe = ImageDraw.Draw(Image.new(mode, (1, 1)))
    pitch_x, pitch_y = (w + padding) * k, (h + padding) * k
    size = max(11, min(20, round(0.12 * pitch_x + 6)))
    margin = max(4, size // 2)
    col_font = _fitting_font(probe, list(col_labels or []), pitch_x - 2, size)
    row_font = font(size)
    header_h = 0
    if col_labels or corner:
        texts = [*(col_labels or []), corner or ""]
        header_h = max(text_size(probe, t, col_font)[1] for t in texts) + 2 * margin
    band_w = 0
    if row_labels or corner:
        texts = [*(row_labels or []), corner or ""]
        band_w = max(text_size(probe, t, row_font)[0] for t in texts) + 2 * margin
    title_font = font(size)
    title_h = text_size(probe, title, title_font)[1] + 2 * margin if title else 0
    width = band_w + grid.shape[1]
    if title:
        width = max(width, text_size(probe, title, title_font)[0] + 3 * margin)
    height = title_h + header_h + grid.shape[0]

    white = 255 if c == 1 else (255, 255, 255)
    canvas = Image.new(mode, (width, height), white)
    canvas.paste(Image.fromarray(grid[..., 0] if c == 1 else grid), (band_w, title_h + header_h))
    draw = ImageDraw.Draw(canvas)
    black = 0 if c == 1 else (0, 0, 0)
    if title:
        draw_text(draw, (margin, title_h / 2), title, title_font, fill=black)
    if col_labels:
        for j, label in enumerate(col_labels):
            x = band_w + padding * k + j * pitch_x + w * k / 2
            draw_text(draw, (x, title_h + header_h / 2), label, col_font, align="center", fill=black)
    if corner:
        draw_text(draw, (band_w - margin, title_h + header_h / 2), corner, row_font, align="right", fill=black)
    if row_labels:
        for i, label in enumerate(row_labels):
            y = title_h + header_h + padding * k + i * pitch_y + h * k / 2
            draw_text(draw, (band_w - margin, y), label, row_font, align="right", fill=black)
    out = np.asarray(canvas)
    return out[..., None] if c == 1 else out


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a ``uint8`` ``(H, W, C)`` array (C = 1 or 3) as a PNG, atomically; returns the path."""
    path = Path(path)
    _save_png(np.asarray(array), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Plot helpers shared by the loss curve (training) and Fig. 5 (evaluation), both drawn with PIL
# ---------------------------------------------------------------------------------------------------------------
def linear_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside ``[lo, hi]``, at most ``max_ticks``."""
    if not hi > lo:
        return [lo]
    for exponent in range(math.floor(math.log10(hi - lo)) - 1, math.ceil(math.log10(hi - lo)) + 2):
        for m in (1, 2, 5):
            step = m * 10.0**exponent
            first = math.ceil(lo / step - 1e-9)
            ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
            if len(ticks) <= max_ticks:
                return [round(v, 12) for v in ticks]
    return [lo, hi]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis over ``[lo, hi]`` (both > 0): 1, 2 and 5 times powers of ten when that gives 3 to 10
    ticks; powers of ten alone over a wider range; every multiple of the power of ten (then
    :func:`linear_ticks`) over a narrower one."""
    exponents = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)

    def within(mantissas):
        return [m * 10.0**e for e in exponents for m in mantissas if lo <= m * 10.0**e <= hi]

    ticks = within((1, 2, 5))
    if len(ticks) > 10:
        decades = within((1,))
        return decades[:: math.ceil(len(decades) / 10)]
    if len(ticks) < 3:
        ticks = within(range(1, 10))
        if len(ticks) < 3:
            ticks = linear_ticks(lo, hi, max_ticks=5)
    return ticks


def tick_label(value: float) -> str:
    """A short label for a tick value: ``1000``, ``0.05``, ``2.5``, ``1e-05``."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.6g}"


def draw_vertical_text(image: Image.Image, center: tuple[float, float], text: str, fnt, fill=(0, 0, 0)) -> None:
    """Draw ``text`` turned 90 degrees anticlockwise (reading upwards, as a y-axis title), centred at ``center``."""
    probe = ImageDraw.Draw(image)
    w, h = text_size(probe, text, fnt)
    patch = Image.new("L", (w + 4, h + 6), 0)
    draw_text(ImageDraw.Draw(patch), (2, (h + 6) / 2), text, fnt, fill=255)
    patch = patch.rotate(90, expand=True)
    colour = Image.new(image.mode, patch.size, fill)
    x, y = round(center[0] - patch.width / 2), round(center[1] - patch.height / 2)
    image.paste(colour, (x, y), patch)
