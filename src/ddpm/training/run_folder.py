"""The run folder's safety: one writer at a time (a lock), a usable folder, no stale temporary files, and the facts a
bit-exact resume depends on.

- :class:`RunLock`: an OS lock (``fcntl.flock``) on ``<output-dir>/.ddpm-train.lock``. The kernel drops it when the
  holder exits, however it exits (a SIGKILL included), so a stale lock never needs removing by hand. The file names the
  holder (pid, host, start time) for the error the second run prints. Under torchrun only rank 0 takes it.
- :func:`check_output_dir`: the folder is a folder (or can be created) and is writable.
- :func:`clean_temporaries`: the ``.NAME.RANDOM.tmp`` files :func:`ddpm.io.atomic_open` leaves when killed while
  writing, removed at the start of a run (under the lock).
- :func:`environment` and :func:`compare_environment`: what an exact continuation needs to stay the same (CPU threads,
  torch version, device type, the data set's identity) as stored in a checkpoint, and the differences on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from ddpm import io as ddpm_io
from ddpm.training.config import ConfigError

logger = logging.getLogger(__name__)

LOCK_NAME = ".ddpm-train.lock"


class RunFolderLockedError(RuntimeError):
    """Another process holds the run folder's lock; the message names it (pid, host)."""


class RunLock:
    """An exclusive, non-blocking OS lock on ``folder/.ddpm-train.lock`` (created with the folder when needed).

    ``acquire()`` raises :class:`RunFolderLockedError` naming the holder when another process has it; ``release()``
    (or the process's exit, however it happens) frees it. The lock file itself is left in place: removing it would let
    two processes lock two different files of the same name."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            logger.warning("cannot lock %s on this platform: make sure no other run writes into it", self.folder)
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderLockedError(
                f"{self.folder} is in use by another training run ({holder}); wait for it to finish or stop it, or "
                "choose another --output-dir"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its pid yet"


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a run folder: a :class:`ConfigError` (key ``output_dir``) when it is a file, lies under a file, or
    cannot be written (nothing is created here)."""
    folder = Path(path)
    allowed = "a folder that exists and is writable, or one that can be created"
    if folder.exists() and not folder.is_dir():
        message = f"invalid output_dir={str(path)!r}: it is a file, not a folder"
        raise ConfigError(message, "output_dir", str(path), allowed)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"invalid output_dir={str(path)!r}: {probe} is a file", "output_dir", str(path), allowed)
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"invalid output_dir={str(path)!r}: {probe} is not writable", "output_dir", str(path), allowed
        )
    return folder


def check_device(name: str, local_rank: int | None = None) -> None:
    """A :class:`ConfigError` (key ``device``) when ``name`` is not usable on this machine (cuda without CUDA, a
    GPU index beyond the count)."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    allowed = "auto, cpu" + (", cuda, cuda:N" if torch.cuda.is_available() else "") + " (this machine)"
    from ddpm.distributed import pick_device

    try:
        device = pick_device(name, local_rank)
    except RuntimeError as err:
        reason = str(err).split(": ", 1)[-1]
        raise ConfigError(f"invalid device={name!r}: {reason}", "device", name, allowed) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"invalid device={name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", "device", name,
            allowed,
        )  # fmt: skip
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"invalid device={name!r}: MPS is not available on this machine", "device", name, allowed)


def clean_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that writes killed half-way left in a run folder (beside ``config.json`` and
    ``metrics.jsonl``, and in ``checkpoints/``, ``pipeline/`` and ``samples/``). Only under the run's lock."""
    folder = Path(folder)
    removed = ddpm_io.remove_stale_temporaries(folder, recursive=False)
    for sub in ("checkpoints", "pipeline", "samples"):
        removed += ddpm_io.remove_stale_temporaries(folder / sub, recursive=True)
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                    ", ".join(str(p.relative_to(folder)) for p in removed))  # fmt: skip
    return removed


# ---------------------------------------------------------------------------------------------------------------
# What exactness depends on
# ---------------------------------------------------------------------------------------------------------------
def data_identity(dataset) -> dict[str, Any]:
    """The data set's size and a fingerprint: of the file names (and the sizes of a strided sample of ~4k files) for
    an image folder, of the pixels for an in-memory array (every k-th image, at most ~16 MB hashed)."""
    h = hashlib.sha256()
    files = getattr(dataset, "files", None)
    images = getattr(dataset, "images", None)
    if files is not None:
        kind = "files"
        every = max(1, len(files) // 4096)  # the sizes of at most ~4k files: a few ms even on a network disk
        for i, f in enumerate(files):
            path = Path(f)
            size = -1
            if i % every == 0:
                with contextlib.suppress(OSError):
                    size = path.stat().st_size
            h.update(f"{path.name}\0{size}\n".encode())
    elif isinstance(images, torch.Tensor):
        kind = "array"
        h.update(repr(tuple(images.shape)).encode())
        flat = images.reshape(len(images), -1)
        every = max(1, -(-flat.numel() // (16 << 20)))  # every k-th image: at most ~16 MB hashed
        h.update(flat[::every].contiguous().numpy().tobytes())
    else:
        kind = type(dataset).__name__
        h.update(str(len(dataset)).encode())
    return {"size": len(dataset), "kind": kind, "sha256": h.hexdigest()[:16]}


def environment(dataset, device: torch.device) -> dict[str, Any]:
    """What a bit-exact continuation depends on beside the config: CPU threads, torch version, device type, data."""
    return {
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "device_type": device.type,
        "data": data_identity(dataset),
    }


def compare_environment(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Human-readable differences between a checkpoint's :func:`environment` and this run's (empty when the same or
    when the checkpoint predates the record)."""
    if not saved:
        return []
    out = []
    names = {"threads": "CPU threads", "torch": "torch version", "device_type": "device type"}
    for key, name in names.items():
        if key in saved and saved[key] != current[key]:
            out.append(f"{name}: {saved[key]} -> {current[key]}")
    a, b = saved.get("data") or {}, current["data"]
    # a new size is reported by RunState.load_state_dict (the data order differs); same size, other images: here
    if a and a.get("size") == b["size"] and a.get("sha256") != b["sha256"]:
        out.append(f"data set contents ({b['kind']} fingerprint {a.get('sha256')} -> {b['sha256']})")
    return out
