"""Files: local folder or Hugging Face Hub id, safe weight files, atomic writes.

Nothing here knows about diffusion; every layer above uses these helpers so that file handling (and its error
messages) lives in one place.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

SAFETENSORS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PYTORCH_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
#: Index files of sharded weights (Diffusers' names): ``{"metadata": {"total_size": N}, "weight_map": {key: file}}``.
SAFETENSORS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PYTORCH_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"
#: Diffusers' default ``max_shard_size`` for models.
DEFAULT_MAX_SHARD_SIZE = "10GB"


class OfflineError(OSError):
    """A Hub id was asked for, but the Hub cannot be reached and the file is not in the local cache."""


class NotAFolderOrHubIdError(FileNotFoundError, ValueError):
    """The name is neither an existing folder nor a possible Hugging Face Hub id.

    Both an ``OSError`` (what Diffusers' models raise for it) and a ``ValueError`` (what its pipelines raise)."""


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success flush, fsync and rename it over ``path``.

    If the body raises (a full disk, a kill between writes), ``path`` keeps its previous content and the temporary
    file is removed, so a reader never sees a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp)
    # mkstemp creates the file 0600; give it the permissions an ordinary open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


#: The names :func:`atomic_open` gives its temporary files: ``.<target name>.<random>.tmp`` beside the target.
TEMPORARY_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temporaries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temporary files :func:`atomic_open` leaves when its process is killed between creating and renaming
    one (only names it makes, ``.<name>.<random>.tmp``); returns the removed paths. Call it only while no other
    process writes into ``folder`` (e.g. under a run folder's lock)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.rglob("*.tmp") if recursive else folder.glob("*.tmp"):
        if TEMPORARY_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return sorted(removed)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def save_directory_path(path: str | os.PathLike, create: bool = True) -> Path:
    """``path`` as the folder a ``save_pretrained``/``save_config`` writes into: ``ValueError`` when it is a file,
    created (with its parents) when ``create``."""
    folder = Path(path)
    if folder.is_file():
        raise ValueError(f"Provided path ({folder}) should be a directory, not a file")
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def atomic_save(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary binary file and atomically move it to ``path``."""
    with atomic_open(path, "wb") as f:
        write(f)


# ---------------------------------------------------------------------------------------------------------------
# Local folder or Hub id
# ---------------------------------------------------------------------------------------------------------------
def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    proxies: dict | None = None,
) -> Path:
    """Return the local path of ``filename`` in a folder or in a Hub repository (downloaded into the HF cache).

    For a local folder the Hub options (``revision``, ``cache_dir``, ``local_files_only``, ``token``,
    ``force_download``, ``proxies``) have no effect, as in Diffusers. Raises ``FileNotFoundError`` for a local folder
    without the file, :class:`NotAFolderOrHubIdError` for a name that is neither, :class:`OfflineError` when the Hub
    cannot be reached and the file is not cached, and ``OSError`` for an unknown repository, revision or file.
    """
    local = Path(name_or_path)
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        candidate = folder / filename
        if not candidate.is_file():
            raise FileNotFoundError(f"Error no file named {filename} found in directory {folder}.")
        return candidate
    name = str(name_or_path)
    if local.exists() or name.startswith((".", "/", "~")) or (os.sep in name and name.count("/") > 1):
        raise NotAFolderOrHubIdError(
            f"{name} is neither a folder holding {filename} nor a Hugging Face Hub id (no such directory)."
        )
    hub = {"force_download": force_download, "proxies": proxies}
    return _hub_download(name, filename, subfolder, revision, cache_dir, local_files_only, token, **hub)


def _hub_download(
    repo_id, filename, subfolder, revision, cache_dir, local_files_only, token, force_download=False, proxies=None
) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise OSError("huggingface_hub is needed to load from the Hub: pip install huggingface_hub") from err
    offline = bool(local_files_only) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    extra: dict[str, Any] = {}
    if force_download:
        if offline:
            raise OfflineError(
                f"force_download=True asks to download '{filename}' of '{repo_id}' again, but downloads are off "
                "(local_files_only=True or HF_HUB_OFFLINE is set). Drop force_download to use the cached files."
            )
        extra["force_download"] = True
    if proxies:
        import inspect

        if "proxies" not in inspect.signature(huggingface_hub.hf_hub_download).parameters:
            raise ValueError(
                f"proxies={proxies!r}: this huggingface_hub ({huggingface_hub.__version__}) takes no `proxies` "
                "argument; set the HTTP_PROXY / HTTPS_PROXY environment variables instead."
            )
        extra["proxies"] = proxies
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            token=token,
            **extra,
        )
        return Path(path)
    except hf_errors.LocalEntryNotFoundError as err:
        # Offline (or HF_HUB_OFFLINE set) and not cached. Checked first: it subclasses EntryNotFoundError.
        raise _offline_error(repo_id, filename, subfolder, err) from None
    except hf_errors.RepositoryNotFoundError:
        raise OSError(
            f"{repo_id} is not a local folder and is not a valid model identifier listed on the Hugging Face Hub. "
            "If this is a private repository, pass a token with `token=` or log in with `hf auth login`."
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise OSError(f"{revision} is not a valid git identifier (branch, tag or commit) of {repo_id}.") from None
    except hf_errors.EntryNotFoundError:
        where = f"{subfolder}/{filename}" if subfolder else filename
        raise OSError(f"{repo_id} does not appear to have a file named {where}.") from None
    except (OSError, ValueError) as err:  # connection errors
        raise _offline_error(repo_id, filename, subfolder, err) from None


def _offline_error(repo_id, filename, subfolder, err) -> OfflineError:
    where = f"{subfolder}/{filename}" if subfolder else filename
    return OfflineError(
        f"Could not get '{where}' of '{repo_id}': the Hugging Face Hub cannot be reached (no network, or "
        f"HF_HUB_OFFLINE is set) and the file is not in the local cache, and '{repo_id}' is not a local folder. "
        f"Download it on a machine with a network (e.g. `hf download {repo_id}`) or pass a local folder. "
        f"({type(err).__name__}: {err})"
    )


# ---------------------------------------------------------------------------------------------------------------
# Weight files
# ---------------------------------------------------------------------------------------------------------------
class CorruptWeightsError(OSError):
    """A weights file exists but cannot be read (truncated, corrupt or not a weights file)."""


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file, or a legacy pickled ``.bin`` through ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device=str(device))
        except Exception as err:
            raise CorruptWeightsError(
                f"Could not read the safetensors weights file {path} ({path.stat().st_size} bytes): it is truncated "
                f"or corrupt ({type(err).__name__}: {err}). Delete it and save or download it again."
            ) from None
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as err:
        raise CorruptWeightsError(
            f"Could not read the PyTorch weights file {path} with torch.load(weights_only=True): it is truncated, "
            f"corrupt, or holds more than tensors ({type(err).__name__}: {err})."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptWeightsError(f"{path} does not hold a flat dict of tensors (a state_dict).")
    return state


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write a state dict as safetensors, atomically. Tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    data = save(tensors, metadata={"format": "pt", **(metadata or {})})
    atomic_write_bytes(path, data)


def load_state_dict_bytes(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """As :func:`load_state_dict`, reading a ``.safetensors`` file into memory in one read instead of mapping it
    (``disable_mmap=True``: faster on network mounts that handle random access badly)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return load_state_dict(path, device)
    from safetensors.torch import load

    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}")
    try:
        state = load(path.read_bytes())
    except Exception as err:
        raise CorruptWeightsError(
            f"Could not read the safetensors weights file {path}: it is truncated or corrupt "
            f"({type(err).__name__}: {err}). Delete it and save or download it again."
        ) from None
    return {k: v.to(device) for k, v in state.items()} if str(device) != "cpu" else state


# ---------------------------------------------------------------------------------------------------------------
# Variants and sharded weights (Diffusers' layout)
# ---------------------------------------------------------------------------------------------------------------
#: Units of ``max_shard_size`` strings, as huggingface_hub parses them (decimal).
_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}")


def add_variant(filename: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` -> ``diffusion_pytorch_model.<variant>.safetensors`` (the variant goes
    before the last extension, also for index files: ``...safetensors.index.<variant>.json``)."""
    if not variant:
        return filename
    stem, ext = filename.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def legacy_variant_index_name(index_name: str, variant: str) -> str:
    """The index name older Diffusers wrote for a variant: ``diffusion_pytorch_model.safetensors.<variant>.index.json``
    (still read, with shards named ``...-00001-of-00002.<variant>.safetensors``)."""
    parts = index_name.split(".")
    return ".".join([*parts[:2], variant, *parts[2:]])


def parse_size(size: int | str) -> int:
    """``max_shard_size`` in bytes: an int, or digits and a unit (``"10GB"``, ``"500MB"``; KB/MB/GB/TB are powers
    of 1000, as in huggingface_hub and Diffusers)."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ValueError(f"max_shard_size must be an int (bytes) or a string such as '10GB', got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        text = size.strip()
        unit = text[-2:].upper()
        if unit not in _SIZE_UNITS:
            raise ValueError(f"max_shard_size={size!r}: unit must be one of {', '.join(_SIZE_UNITS)} (e.g. '10GB')")
        try:
            value = int(float(text[:-2].strip()) * _SIZE_UNITS[unit])
        except ValueError:
            raise ValueError(f"max_shard_size={size!r}: expected a number before the unit, e.g. '10GB'") from None
    if value < 1:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def split_into_shards(
    state: dict[str, torch.Tensor], max_shard_size: int | str, filename_pattern: str
) -> tuple[dict[str, list[str]], dict | None]:
    """Split ``state`` into files of at most ``max_shard_size`` bytes, walking the keys in order.

    A tensor goes into the current shard if it fits, else opens a new one; a tensor larger than the limit gets a
    shard of its own (the rule of huggingface_hub's splitter, which Diffusers uses, so the same model and limit give
    the same files). ``filename_pattern`` holds ``{suffix}``: ``""`` for a single file, ``-00001-of-00003`` for
    shards. Returns ``{filename: keys}`` and the index (``None`` when everything fits in one file).
    """
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = total = 0
    for key, tensor in state.items():
        size = tensor.numel() * tensor.element_size()
        total += size
        if size > limit:
            shards.append([key])
            continue
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
    if current or not shards:
        shards.append(current)
    if len(shards) == 1:
        return {filename_pattern.format(suffix=""): shards[0]}, None
    count = len(shards)
    files = {filename_pattern.format(suffix=f"-{i + 1:05d}-of-{count:05d}"): keys for i, keys in enumerate(shards)}
    index = {
        "metadata": {"total_size": total},
        "weight_map": {key: name for name, keys in files.items() for key in keys},
    }
    return files, index


def is_shard_of(filename: str, weights_name: str) -> bool:
    """Whether ``filename`` is a shard written for ``weights_name`` (``<stem>-00001-of-00002.<ext>``)."""
    stem, ext = weights_name.rsplit(".", 1)
    if not (filename.startswith(stem) and filename.endswith("." + ext)):
        return False
    return _SHARD_SUFFIX.fullmatch(filename[len(stem) : -len(ext) - 1]) is not None


def read_shard_index(index_file: str | os.PathLike) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of an index file; ``ValueError`` naming the file when it is
    not valid, or names a shard outside its folder."""
    index_file = Path(index_file)
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"The checkpoint index {index_file} is not a valid JSON file: {err}") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"The checkpoint index {index_file} has no 'weight_map' of tensor names to shard files.")
    for shard in set(weight_map.values()):
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise ValueError(
                f"The checkpoint index {index_file} names the shard {shard!r}, which is not a plain file name in the "
                "index's folder."
            )
    return weight_map


# ---------------------------------------------------------------------------------------------------------------
# The model bundled with the package
# ---------------------------------------------------------------------------------------------------------------
#: The name that loads the model bundled with the package (``DDPMPipeline.from_pretrained("ddpm/default")``).
BUNDLED_MODEL_NAME = "ddpm/default"


class NoBundledModelError(FileNotFoundError):
    """The package carries no bundled default model."""


def bundled_model_path() -> Path:
    """The folder of the model bundled with the package (a pipeline folder), or :class:`NoBundledModelError`."""
    path = Path(__file__).resolve().parent / "assets" / "default"
    if not (path / "model_index.json").is_file():
        raise NoBundledModelError(
            "no model is bundled with this version of ddpm yet (expected a pipeline folder with model_index.json "
            f"at {path}); pass a pipeline folder or a Hugging Face Hub id instead"
        )
    return path
