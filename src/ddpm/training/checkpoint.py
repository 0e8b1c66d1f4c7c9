"""Training checkpoints that survive a kill at any moment, and the RNG states needed to continue exactly.

File format (``checkpoint-<step>.pt``)::

    payload  | sha256(payload) (32 bytes) | len(payload) (8 bytes, little endian) | b"DDPMCKP1"

``payload`` is a ``torch.save`` archive of plain containers and tensors only (it loads with
``torch.load(weights_only=True)``; numpy and Python RNG states are stored as tensors and tuples of ints). The
trailer lets a reader reject a truncated or corrupted file before unpickling anything. Files are written through
:func:`ddpm.io.atomic_save` (temporary file, flush, fsync, rename, fsync of the folder), so a kill while saving
leaves the previous checkpoint as the newest file; the oldest ones beyond ``keep`` are removed only after the new
one is in place.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import random
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ddpm import io as ddpm_io

logger = logging.getLogger(__name__)

MAGIC = b"DDPMCKP1"
_TRAILER = struct.Struct("<32sQ8s")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")


class CheckpointError(OSError):
    """A checkpoint cannot be written, or none can be read."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is truncated, corrupted or not a checkpoint."""


# ---------------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------------
def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"checkpoint-{step:09d}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the checkpoint files in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        m = CHECKPOINT_RE.match(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return sorted(found, reverse=True)


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return payload + _TRAILER.pack(hashlib.sha256(payload).digest(), len(payload), MAGIC)


def decode(data: bytes, name: str = "checkpoint") -> dict[str, Any]:
    if len(data) < _TRAILER.size:
        raise CorruptCheckpointError(f"{name}: {len(data)} bytes, too short to be a checkpoint (truncated)")
    digest, length, magic = _TRAILER.unpack(data[-_TRAILER.size :])
    if magic != MAGIC:
        raise CorruptCheckpointError(f"{name}: no checkpoint trailer (truncated, or not a ddpm training checkpoint)")
    payload = data[: -_TRAILER.size]
    if length != len(payload):
        raise CorruptCheckpointError(f"{name}: holds {len(payload)} bytes of data, the trailer says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptCheckpointError(f"{name}: checksum mismatch (the file is corrupted)")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # pragma: no cover - the checksum makes this unlikely
        raise CorruptCheckpointError(f"{name}: cannot be unpickled ({type(err).__name__}: {err})") from None


def save_checkpoint(state: dict[str, Any], folder: str | Path, step: int, keep: int = 2) -> Path:
    """Write ``state`` as ``folder/checkpoint-<step>.pt`` atomically, then remove all but the newest ``keep``.

    On failure (e.g. a full disk) raises :class:`CheckpointError`; the files already there are untouched.
    """
    path = checkpoint_path(folder, step)
    data = encode(state)
    try:
        ddpm_io.atomic_write_bytes(path, data)
    except OSError as err:
        previous = [p.name for s, p in list_checkpoints(folder) if s != step]
        kept = f"the previous checkpoint {previous[0]} is intact" if previous else "no earlier checkpoint exists"
        reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        error = CheckpointError(f"could not save the checkpoint of step {step} to {path}: {reason}; {kept}")
        error.errno = err.errno
        raise error from err
    for _, old in list_checkpoints(folder)[keep:]:
        try:
            old.unlink()
        except OSError as err:  # pragma: no cover
            logger.warning("could not remove old checkpoint %s: %s", old, err)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CorruptCheckpointError(f"{path}: cannot be read ({err.strerror or err})") from None
    return decode(data, name=str(path))


def load_latest_checkpoint(folder: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint in ``folder`` that reads back intact, or None if there is none.

    A corrupt or truncated newer file is reported (a warning naming it and why) and skipped. Raises
    :class:`CheckpointError` if checkpoint files exist but none is intact.
    """
    candidates = list_checkpoints(folder)
    bad = []
    for _, path in candidates:
        try:
            state = load_checkpoint(path)
        except CorruptCheckpointError as err:
            bad.append(str(err))
            warnings.warn(f"skipping a damaged checkpoint: {err}; trying the previous one", stacklevel=2)
            continue
        return state, path
    if bad:
        raise CheckpointError(f"no intact checkpoint in {folder}: " + "; ".join(bad))
    return None


# ---------------------------------------------------------------------------------------------------------------
# RNG states
# ---------------------------------------------------------------------------------------------------------------
def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """All RNG states of this process: torch CPU, every CUDA device, numpy, Python, and named generators."""
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002 (the global state others use)
    state = {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = state.get("torch_cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda[0])
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])
