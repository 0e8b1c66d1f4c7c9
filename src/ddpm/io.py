"""Files: local folder or Hugging Face Hub id, safe weight files, atomic writes.

Nothing here knows about diffusion; every layer above uses these helpers so that file handling (and its error
messages) lives in one place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import torch

SAFETENSORS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PYTORCH_WEIGHTS_NAME = "diffusion_pytorch_model.bin"


class OfflineError(OSError):
    """A Hub id was asked for, but the Hub cannot be reached and the file is not in the local cache."""


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
) -> Path:
    """Return the local path of ``filename`` in a folder or in a Hub repository (downloaded into the HF cache).

    Raises ``FileNotFoundError`` for a local folder without the file, :class:`OfflineError` when the Hub cannot be
    reached and the file is not cached, and ``OSError`` for an unknown repository, revision or file.
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
        raise FileNotFoundError(f"{name} is neither a folder holding {filename} nor a Hugging Face Hub id.")
    return _hub_download(name, filename, subfolder, revision, cache_dir, local_files_only, token)


def _hub_download(repo_id, filename, subfolder, revision, cache_dir, local_files_only, token) -> Path:
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise OSError("huggingface_hub is needed to load from the Hub: pip install huggingface_hub") from err
    try:
        path = huggingface_hub.hf_hub_download(
            repo_id,
            filename,
            subfolder=subfolder or None,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=bool(local_files_only) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""),
            token=token,
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
