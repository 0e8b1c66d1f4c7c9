"""The work folder of a long evaluation run, so that a run killed midway continues where it stopped.

A run that produces one result per image (samples, the bound's terms) writes each finished batch as one shard file
into a work folder (e.g. ``OUT.partial/`` beside ``OUT``) and records what defines the results in its
``manifest.json``: a fingerprint of the model (the UNet's weights and the scheduler's config), the seed, the sampler
and its settings, the number of images, and so on. Every result is a function of those settings and of the image's
index only (image ``i`` draws from a generator seeded from ``(seed, i)``), so a rerun with the same settings keeps
the shards it finds and computes the missing index ranges; a rerun with other settings is refused
(:class:`SettingsMismatchError`, naming the first differing setting) rather than mixing two runs in one result.

Shards are written atomically (:func:`ddpm.io.atomic_save`: a temporary file, flushed and renamed), so a kill never
leaves a torn shard; a temporary file left by a kill is ignored and removed when the folder is opened again. A shard
file is named ``PREFIX-FIRST-STOP.npz`` and holds the results of the images ``FIRST .. STOP - 1`` (any ranges, e.g.
those of several processes or of another batch size, may be mixed: :meth:`WorkFolder.missing` and
:meth:`WorkFolder.read` work on the union).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

MANIFEST_NAME = "manifest.json"
#: Version of the folder's layout; a folder of another version is refused like other settings.
FORMAT = 1
_SHARD = re.compile(r"^(?P<prefix>[a-z]+)-(?P<first>\d{10})-(?P<stop>\d{10})\.npz$")


class SettingsMismatchError(ValueError):
    """The work folder holds an unfinished run with other settings; the message names the setting and both values."""


def sha256_of_state_dict(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights: every tensor's name, dtype, shape and bytes, in name order (the same weights
    give the same hash whatever file format or device they came from)."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def sha256_of_config(config) -> str:
    """SHA-256 of a config mapping as sorted JSON (keys starting with ``_`` left out)."""
    data = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(unet, scheduler) -> dict[str, str]:
    """``{"model": weights hash, "scheduler": config hash}`` of a UNet (a ``torch.compile``d one: its original
    module's weights) and the scheduler it samples with."""
    unet = getattr(unet, "_orig_mod", unet)
    return {"model": sha256_of_state_dict(unet), "scheduler": sha256_of_config(scheduler.config)}


def shard_name(prefix: str, first: int, stop: int) -> str:
    return f"{prefix}-{first:010d}-{stop:010d}.npz"


class WorkFolder:
    """A run's work folder: ``settings`` (JSON-able) are what the results depend on; ``prefix`` names its shards.

    Use: :meth:`open` (creates the folder, or checks an existing one's manifest), then :meth:`missing` to find what
    is left, :meth:`save` per finished batch, :meth:`read` / :meth:`iter_chunks` to get the results back in index
    order, and :meth:`remove` once the final output is written and checked.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, prefix: str = "images"):
        if not re.fullmatch(r"[a-z]+", prefix):
            raise ValueError(f"prefix must be lower-case letters, got {prefix!r}")
        self.path = Path(path)
        self.settings = {"format": FORMAT, **settings}
        self.prefix = prefix

    # -- the manifest --------------------------------------------------------------------------------------------
    def check(self) -> str | None:
        """The mismatch message when the folder exists with other settings, else None (also when it is absent)."""
        manifest = self.path / MANIFEST_NAME
        if self.path.exists() and not self.path.is_dir():
            return f"{self.path} is a file; it must be the work folder of this run (remove it or choose another path)"
        if not manifest.is_file():
            return None
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            return f"{manifest} is unreadable ({err}); remove {self.path} to start over"
        ours = json.loads(json.dumps(self.settings, default=str))
        for key in sorted(set(recorded) | set(ours)):
            if recorded.get(key) != ours.get(key):
                return (
                    f"{self.path} holds an unfinished run with other settings: {key} {_show(recorded.get(key))} "
                    f"there, {_show(ours.get(key))} now. Rerun with the same settings to continue it, or remove "
                    f"{self.path} to start over"
                )
        return None

    def open(self) -> WorkFolder:
        """Create the folder and its manifest, or check those of an existing folder
        (:class:`SettingsMismatchError`); removes temporary files a killed run left."""
        if (message := self.check()) is not None:
            raise SettingsMismatchError(message)
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        if not (self.path / MANIFEST_NAME).is_file():
            from ddpm.io import atomic_write_text

            atomic_write_text(self.path / MANIFEST_NAME, json.dumps(self.settings, indent=2, default=str) + "\n")
        return self

    def remove(self) -> None:
        """Delete the folder and everything in it (after the final output is written and checked)."""
        shutil.rmtree(self.path, ignore_errors=True)

    # -- shards --------------------------------------------------------------------------------------------------
    def shards(self) -> list[tuple[int, int, Path]]:
        """``(first, stop, path)`` of every complete shard, sorted by ``first``."""
        found = []
        if not self.path.is_dir():
            return found
        for path in self.path.iterdir():
            m = _SHARD.match(path.name)
            if m and m["prefix"] == self.prefix and int(m["stop"]) > int(m["first"]):
                found.append((int(m["first"]), int(m["stop"]), path))
        return sorted(found)

    def save(self, first: int, arrays: dict[str, np.ndarray]) -> Path:
        """Write the results of images ``first .. first + len - 1`` (every array has one row per image)."""
        from ddpm.io import atomic_save

        lengths = {len(v) for v in arrays.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"every array needs the same number (>= 1) of rows, got {sorted(lengths)}")
        path = self.path / shard_name(self.prefix, first, first + lengths.pop())
        atomic_save(path, lambda f: np.savez(f, **arrays))
        return path

    def _cover(self, lo: int, hi: int) -> Iterator[tuple[int, int, Path | None, int]]:
        """Walk ``[lo, hi)``: ``(start, stop, shard or None for a gap, shard's first index)`` pieces in order."""
        shards = self.shards()
        p = lo
        while p < hi:
            covering = [s for s in shards if s[0] <= p < s[1]]
            if covering:
                first, stop, path = max(covering, key=lambda s: s[1])
                end = min(stop, hi)
                yield p, end, path, first
            else:
                end = min([s[0] for s in shards if p < s[0] < hi] + [hi])
                yield p, end, None, 0
            p = end

    def missing(self, lo: int, hi: int) -> list[range]:
        """The index ranges of ``[lo, hi)`` no shard holds yet."""
        return [range(a, b) for a, b, path, _ in self._cover(lo, hi) if path is None]

    def done(self, lo: int, hi: int) -> int:
        """How many indices of ``[lo, hi)`` are held already."""
        return sum(b - a for a, b, path, _ in self._cover(lo, hi) if path is not None)

    def iter_chunks(self, lo: int, hi: int, key: str) -> Iterator[np.ndarray]:
        """Array ``key`` of images ``lo .. hi - 1``, shard by shard in index order; ``RuntimeError`` at a gap."""
        for a, b, path, first in self._cover(lo, hi):
            if path is None:
                raise RuntimeError(f"{self.path}: no results for images {a}..{b - 1}")
            with np.load(path) as data:
                rows = data[key]
            if len(rows) != path_rows(path):
                raise RuntimeError(f"{path}: holds {len(rows)} rows, its name says {path_rows(path)}")
            yield rows[a - first : b - first]

    def read(self, lo: int, hi: int, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Arrays ``keys`` of images ``lo .. hi - 1``, concatenated in index order."""
        return {k: np.concatenate(list(self.iter_chunks(lo, hi, k))) for k in keys}


def path_rows(path: Path) -> int:
    m = _SHARD.match(path.name)
    return int(m["stop"]) - int(m["first"])


def _show(value) -> str:
    return "(none)" if value is None else json.dumps(value)


def write_npz_streaming(
    path: str | os.PathLike,
    key: str,
    shape: tuple[int, ...],
    dtype,
    chunks: Iterable[np.ndarray],
    extra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write an ``.npz`` (as ``np.savez`` would: stored, no compression) whose array ``key`` of ``shape`` is the
    concatenation of ``chunks``, without holding it in memory, plus the small arrays of ``extra``; atomically.
    ``RuntimeError`` when the chunks do not fill ``shape`` exactly."""
    from ddpm.io import atomic_save

    dtype = np.dtype(dtype)
    row = tuple(shape[1:])

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open(f"{key}.npy", "w", force_zip64=True) as out:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
                np.lib.format.write_array_header_2_0(out, header)
                rows = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    if chunk.shape[1:] != row:
                        raise RuntimeError(f"{key}: a chunk of shape {chunk.shape}; rows of shape {row} expected")
                    out.write(chunk.tobytes())
                    rows += len(chunk)
                if rows != shape[0]:
                    raise RuntimeError(f"{key}: {rows} rows written, {shape[0]} expected")
            for name, value in (extra or {}).items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
                    np.lib.format.write_array(out, np.asarray(value))

    atomic_save(path, write)
    return Path(path)


def npz_array_shape(path: str | os.PathLike, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` in an ``.npz``, read from its header only (and checked against the stored size)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{key}.npy")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = reader(f)
            header_size = f.tell()
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != expected:
        raise RuntimeError(f"{path}: {key} holds {info.file_size} bytes, its header implies {expected}")
    return tuple(shape)
