"""Training checkpoints: what a run's state is (:class:`RunState` and its schema), the files that hold it (which
survive a kill at any moment), and the RNG states needed to continue exactly.

Schema (the payload, a dict; ``CHECKPOINT_FORMAT`` / ``CHECKPOINT_VERSION``)::

    format, version     "ddpm-train-checkpoint", 1
    step                completed optimiser updates
    config              the run's TrainConfig as JSON text
    model               the raw model's state dict (CPU tensors)
    ema                 EMA.state_dict() (rank 0's), or None
    optimizer, scaler   their state dicts
    lr_schedule         kind ("linear_warmup_<schedule>"), lr, warmup_steps, max_steps (for reading; the config rules)
    data_order          DataOrder.state_dict(step): seed, size, batch_size, step, epoch, index
    rng                 world_size and ranks: one capture_rng_state() per process, rank order
    environment         (optional) what bit-exactness depends on beside the config: threads, torch version,
                        device type, data identity (ddpm.training.run_folder.environment); compared on resume

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ddpm import io as ddpm_io

if TYPE_CHECKING:  # pragma: no cover
    from ddpm.training.config import TrainConfig
    from ddpm.training.data_order import DataOrder
    from ddpm.training.ema import EMA

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "ddpm-train-checkpoint"
CHECKPOINT_VERSION = 1
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


# ---------------------------------------------------------------------------------------------------------------
# The run's state
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """Everything a training run carries from one step to the next: exactly what a checkpoint holds.

    ``model`` is the raw module (not a DDP or compiled wrapper); ``ema`` exists on rank 0 only; ``generators`` are the
    run's own named generators (``"noise"``: timesteps, noise and flips); ``step`` counts completed updates.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: EMA | None
    order: DataOrder
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    step: int = 0

    def state_dict(self, config: TrainConfig, rng_ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint payload (the schema above); ``rng_ranks`` holds every process's
        :func:`capture_rng_state`, in rank order."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "config": config.to_json(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lr_schedule": {
                "kind": f"linear_warmup_{config.lr_schedule}",
                "lr": config.lr,
                "warmup_steps": config.warmup_steps,
                "max_steps": config.max_steps,
            },
            "data_order": self.order.state_dict(self.step),
            "rng": {"world_size": len(rng_ranks), "ranks": rng_ranks},
        }

    def load_state_dict(self, state: dict[str, Any], rank: int = 0, world_size: int = 1, warn: bool = True) -> None:
        """Continue from a payload of :meth:`state_dict`: weights, optimiser, scaler, EMA, this rank's RNG states and
        the step. With ``warn``, says when the data set's size or the number of processes differ from the saved run's
        (the run then continues, but is no longer an exact continuation)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format={state.get('format')!r}: not a ddpm training checkpoint ({CHECKPOINT_FORMAT!r})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        size = state["data_order"]["size"]
        if size != self.order.size and warn:
            warnings.warn(
                f"the data set has {self.order.size} images, the checkpoint's had {size}: the data order differs",
                stacklevel=3,
            )
        ranks = state["rng"]["ranks"]
        if len(ranks) != world_size and warn:
            warnings.warn(
                f"resuming {len(ranks)}-process RNG states in {world_size} process(es): dropout draws differ "
                "from an uninterrupted run (noise, timesteps and data order do not)",
                stacklevel=3,
            )
        restore_rng_state(ranks[rank % len(ranks)], self.generators)
        self.step = int(state["step"])
