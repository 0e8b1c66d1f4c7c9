"""The option vocabulary and the up-front checks shared by ``ddpm sample`` and every ``ddpm eval`` sub-command.

One spelling per idea (issue #17): ``--num-samples`` (old spelling ``--num-images``, deprecated),
``--num-inference-steps`` (old ``--steps``: :mod:`ddpm.cli.sampler_options`), ``--device auto`` (the default),
``--no-progress``, ``--threads N``. Every check here runs before any model is loaded or any sampling starts and
raises :class:`~ddpm.cli.UsageError` (one line naming the option, exit code 2):

* :func:`resolve_device`: ``auto`` -> ``cuda`` when available, else ``cpu``; a device that does not exist here
  (``cuda`` without a GPU, ``cuda:3`` on a machine with one GPU, a misspelling) is refused;
* :func:`check_output`: an output path of the right type (a file where a file is written, a folder where a folder
  is), whose folder exists or can be created and is writable;
* :func:`check_input_file`: an input file that exists;
* :func:`check_room`: a result that must fit in memory or on disk does, with the sizes in the message;
* :func:`check_seed`: one seed range for every command, ``0 <= seed < 2**63``;
* :func:`check_figure`: a figure (held whole in memory) has at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels.

:func:`check_finite_weights` runs once after a model is loaded (every command that loads one calls it): weights that
hold NaN or infinity would give NaN images or scores without a word.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ddpm.cli import UsageError

DEVICE_HELP = "torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:N"


def count(text: str) -> int:
    """An argparse type for counts: a whole number, also written ``5e4`` or ``50_000``."""
    value = text.strip().replace("_", "")
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number (e.g. 50000 or 5e4), got {text!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise argparse.ArgumentTypeError(f"expected a whole number (e.g. 50000 or 5e4), got {text!r}")
    return int(number)


def count_or_all(text: str) -> int | None:
    """:func:`count`, or ``all`` (None)."""
    return None if text.strip().lower() == "all" else count(text)


class _OldCount(argparse.Action):
    """``--num-images``: the deprecated spelling of ``--num-samples`` (one notice on stderr). With ``zero_all`` its
    old meaning of 0 (every image) is kept."""

    def __init__(self, option_strings, dest, zero_all: bool = False, **kwargs):
        self.zero_all = zero_all
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is deprecated; use --num-samples", file=sys.stderr)
        setattr(namespace, self.dest, None if (self.zero_all and values == 0) else values)


def add_num_samples(p: argparse.ArgumentParser, default, help: str, allow_all: bool = False) -> None:
    """``--num-samples N`` (with ``allow_all``: or ``all``, stored as None) and its old spelling ``--num-images``."""
    kind = count_or_all if allow_all else count
    p.add_argument("--num-samples", type=kind, default=default, metavar="N" + ("|all" if allow_all else ""), help=help)
    p.add_argument(
        "--num-images", dest="num_samples", type=kind, action=_OldCount, zero_all=allow_all, help=argparse.SUPPRESS
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="do not report progress on stderr")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", metavar="DEVICE", help=DEVICE_HELP)


def resolve_device(name: str, option: str = "--device"):
    """The ``torch.device`` of ``name``; :class:`UsageError` for one that does not exist on this machine."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "auto, cpu, cuda, cuda:N"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"{option} {name}: not a torch device; allowed: {allowed}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"{option} {name}: no CUDA device is available here; allowed: auto, cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise UsageError(f"{option} {name}: this machine has {n} CUDA device(s); allowed: cuda:0..cuda:{n - 1}")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UsageError(f"{option} {name}: MPS is not available here; allowed: auto, cpu")
    elif device.type != "cpu":
        raise UsageError(f"{option} {name}: not supported; allowed: {allowed}")
    return device


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output(option: str, path: str | os.PathLike, kind: str = "file") -> None:
    """``path`` can be written as a ``kind`` (``"file"`` or ``"folder"``): not an existing entry of the other type,
    inside a folder that exists or can be created (no file in the way), writable. Tested for real, not from the
    permission bits (root may write where the bits say no, and nobody may write under /proc): the missing folders
    are created and a temporary file is written where the output goes, then both are removed.
    :class:`UsageError` otherwise."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; a file path is expected")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file; a folder is expected")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path}: not writable")
    full = Path(os.path.abspath(path))
    folder = full if kind == "folder" else full.parent
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise UsageError(f"{option} {path}: cannot create its folder, {base} is a file")
    _try_writing(option, path, folder, base)


def _try_writing(option: str, path: Path, folder: Path, base: Path) -> None:
    """Create ``folder`` (``base`` is its nearest existing ancestor) and a temporary file in it, then remove both."""
    created = []
    try:
        for missing in reversed([folder, *folder.parents][: len(folder.parts) - len(base.parts)]):
            missing.mkdir()
            created.append(missing)
        handle, probe = tempfile.mkstemp(prefix=".ddpm-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        where = created[-1] if created else folder
        reason = err.strerror or type(err).__name__
        what = f"cannot write into {where}" if where.exists() else f"cannot create the folder {folder}"
        raise UsageError(f"{option} {path}: not writable: {what} ({reason})") from None
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:  # pragma: no cover - something else wrote there meanwhile
                break


def check_input_file(option: str, path: str | os.PathLike) -> None:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if not path.is_file():
        raise UsageError(f"{option} {path}: not a file")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def memory_bytes() -> int | None:
    """This machine's physical memory, when it can be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # pragma: no cover - platforms without sysconf
        return None


def free_disk_bytes(path: str | os.PathLike) -> int | None:
    try:
        return shutil.disk_usage(_nearest_existing(Path(path).absolute().parent)).free
    except OSError:  # pragma: no cover
        return None


def check_room(option: str, value, need: int, where: str, have: int | None, what: str) -> None:
    """:class:`UsageError` when ``need`` bytes (``what``) exceed ``have`` (``where``: "memory", "free disk under X")."""
    if have is not None and need > have:
        raise UsageError(
            f"{option} {value}: {what} take {human_bytes(need)}, more than the {human_bytes(have)} of {where}; "
            "allowed: a smaller value"
        )


def image_bytes(pipe) -> int:
    """Bytes of one uint8 image of ``pipe``'s UNet (channels x height x width)."""
    cfg = pipe.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(cfg.in_channels) * int(h) * int(w)


def check_batch_fits(option: str, batch: int, pipe, device) -> None:
    """Refuse a batch whose first UNet activation alone (batch x first-block channels x H x W, in the UNet's dtype)
    exceeds the device's memory: a lower bound of what the batch needs."""
    import torch

    cfg = pipe.unet.config
    channels = int(cfg.block_out_channels[0])
    itemsize = torch.finfo(pipe.unet.dtype).bits // 8 if pipe.unet.dtype.is_floating_point else 4
    need = batch * channels * image_bytes(pipe) // int(cfg.in_channels) * itemsize
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
        where = f"{device}'s memory"
    else:
        have, where = memory_bytes(), "this machine's memory"
    check_room(option, batch, need, where, have, "the UNet's first activations alone")


#: Seeds run from 0 to 2**63 - 1: torch.Generator.manual_seed takes 64 bits, but seeds travel through int64 tensors
#: and C longs too (and 2**63 seeds are plenty).
SEED_LIMIT = 2**63


def check_seed(seed: int, option: str = "--seed") -> None:
    """:class:`UsageError` unless ``0 <= seed < 2**63`` (the one seed range of every command)."""
    if seed < 0:
        raise UsageError(f"{option} must be >= 0, got {seed}")
    if seed >= SEED_LIMIT:
        raise UsageError(f"{option} must be < 2**63 = {SEED_LIMIT}, got {seed}")


def check_finite_weights(module, model: str | os.PathLike | None) -> None:
    """``ValueError`` naming ``model`` and the first tensor of ``module`` (parameters, then buffers) that holds NaN
    or infinity: such weights give NaN images and scores. One pass over the weights."""
    import torch

    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            where = "the bundled model" if model is None else str(model)
            raise ValueError(
                f"{where}: the weights are not finite ({name} holds {bad} NaN/inf value(s) of {tensor.numel()}); "
                "the model cannot be used (was it saved after training diverged?)"
            )


def check_figure(option: str, value, rows: int, cols: int, pipe, scale, device, batch: int) -> None:
    """A figure of ``rows`` x ``cols`` images of ``pipe``'s size, enlarged by ``scale`` (an integer or ``"auto"``, as
    :func:`ddpm.images.labelled_grid` resolves it), is built whole in memory and written as one PNG: refuse one of
    more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (PIL and most viewers refuse to open it), and a sampling batch
    of ``batch`` images that does not fit the device (:func:`check_batch_fits`)."""
    from PIL import Image

    from ddpm.images import resolve_scale

    cfg = pipe.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    pad = 2
    raw_h, raw_w = rows * (h + pad) + pad, cols * (w + pad) + pad
    k = resolve_scale(scale, raw_h, raw_w, min_tile=64, tile=min(h, w))
    pixels = raw_h * raw_w * k * k
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    if pixels > limit:
        raise UsageError(
            f"{option} {value}: the figure would be {rows} x {cols} images of {h}x{w} (scale {k}), "
            f"{pixels:,} pixels, more than the {limit:,} PIL and most image viewers open; allowed: a smaller value"
        )
    check_batch_fits(option, batch, pipe, device)
