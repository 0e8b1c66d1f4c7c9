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
* :func:`check_room`: a result that must fit in memory or on disk does, with the sizes in the message.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
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
    inside a folder that exists or can be created (no file in the way), writable. :class:`UsageError` otherwise."""
    if kind not in ("file", "folder"):
        raise ValueError(f"kind must be 'file' or 'folder', got {kind!r}")
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; a file path is expected")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file; a folder is expected")
    if path.exists():
        if not os.access(path, os.W_OK) or (kind == "folder" and not os.access(path, os.X_OK)):
            raise UsageError(f"{option} {path}: not writable")
        if kind == "file" and not os.access(path.absolute().parent, os.W_OK):
            raise UsageError(f"{option} {path}: its folder {path.absolute().parent} is not writable")
        return
    base = _nearest_existing(path.absolute().parent)
    if not base.is_dir():
        raise UsageError(f"{option} {path}: cannot create its folder, {base} is a file")
    if not (os.access(base, os.W_OK) and os.access(base, os.X_OK)):
        raise UsageError(f"{option} {path}: cannot write into {base} (not writable)")


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
