"""Generic model machinery: ``ModelMixin`` (config + weights in the Diffusers layout). The models' outputs derive
from :class:`ddpm.outputs.BaseOutput`.

A model folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or a legacy
``diffusion_pytorch_model.bin``, read only through ``torch.load(weights_only=True)``), exactly as Diffusers writes
them, so that a folder saved by either library loads in the other.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import io as ddpm_io
from ..config import ConfigMixin

logger = logging.getLogger(__name__)


class WeightsMismatchError(ValueError, RuntimeError):
    """A weights file does not fit the model built from its config (missing, unexpected or mis-shaped tensors).

    Also a ``RuntimeError``: what Diffusers (``torch.nn.Module.load_state_dict``) raises for mis-shaped tensors."""


# ---------------------------------------------------------------------------------------------------------------
# Legacy key names
# ---------------------------------------------------------------------------------------------------------------
_LEGACY_ATTENTION = re.compile(r"^(?P<prefix>(?:.*\.)?attentions\.\d+)\.(?P<name>query|key|value|proj_attn)\.")
_LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def convert_legacy_attention_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename 2022-era attention keys (``attentions.N.query|key|value|proj_attn``) to ``to_q|to_k|to_v|to_out.0``."""
    out = {}
    for key, value in state_dict.items():
        match = _LEGACY_ATTENTION.match(key)
        if match:
            new = f"{match['prefix']}.{_LEGACY_NAMES[match['name']]}.{key[match.end() :]}"
            key = new
        out[key] = value
    return out


def _list(keys, limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# ModelMixin
# ---------------------------------------------------------------------------------------------------------------
class ModelMixin(nn.Module, ConfigMixin):
    """An ``nn.Module`` with a JSON config and Diffusers-format ``save_pretrained`` / ``from_pretrained``.

    Attribute lookup tries ``nn.Module``'s (parameters, buffers, submodules) first and then, with Diffusers'
    deprecation warning, the config keys.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    def __getattr__(self, name: str) -> Any:
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            pass
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and not name.startswith("_") and name in internal:
            warnings.warn(
                f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                f"deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, e.g. "
                f"'unet.config.{name}'.",
                FutureWarning,
                stacklevel=2,
            )
            return internal[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    __repr__ = nn.Module.__repr__

    # -- properties ------------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter (float32 for a parameter-free model)."""
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (or buffer)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (``only_trainable``: those with ``requires_grad``)."""
        skip = set()
        if exclude_embeddings:
            skip = {id(m.weight) for m in self.modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel() for p in self.parameters() if (p.requires_grad or not only_trainable) and id(p) not in skip
        )

    # -- gradient checkpointing ------------------------------------------------------------------------------------
    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in the backward pass instead of storing them (less memory, one more forward
        of each block)."""
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing.")
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        if self._supports_gradient_checkpointing:
            self._set_gradient_checkpointing(False)

    def _set_gradient_checkpointing(self, value: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = value

    # -- state dict ------------------------------------------------------------------------------------------------
    def _reset_non_persistent_buffers(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_buffers"):
                module.reset_buffers()

    def load_state_dict_strict(self, state_dict: dict[str, torch.Tensor], source: str = "the state dict") -> None:
        """Load with legacy names mapped; raise :class:`WeightsMismatchError` listing any missing, unexpected or
        mis-shaped tensors (copying into the existing parameters, which keep their dtype and device)."""
        state_dict = convert_legacy_attention_keys(state_dict)
        self._check_state_dict(state_dict, source)
        self.load_state_dict(state_dict, strict=True)

    def _check_state_dict(self, state_dict: dict[str, torch.Tensor], source: str, skip=frozenset()) -> None:
        expected = self.state_dict(keep_vars=True)
        missing = [k for k in expected if k not in state_dict and k not in skip]
        unexpected = [k for k in state_dict if k not in expected]
        problems = []
        if missing:
            problems.append(f"missing keys: {_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_list(unexpected)}")
        mismatched = [
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
        ]
        if mismatched:
            problems.append("shape mismatch for " + "; ".join(mismatched[:20]))
        if problems:
            raise WeightsMismatchError(
                f"Error(s) loading {source} into {type(self).__name__} (does the config match the weights?): "
                + " | ".join(problems)
            )

    # -- files -----------------------------------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        save_function=None,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = ddpm_io.DEFAULT_MAX_SHARD_SIZE,
        push_to_hub: bool = False,
        **kwargs,
    ) -> Path:
        """Write ``config.json`` and the weights (atomically) into ``save_directory``, in Diffusers' layout.

        ``safe_serialization=False`` writes the legacy pickled ``diffusion_pytorch_model.bin`` (``torch.save``);
        ``variant="fp16"`` names the files ``diffusion_pytorch_model.fp16.safetensors``. Weights larger than
        ``max_shard_size`` (bytes, or a string such as ``"10GB"``) are split into shards
        ``diffusion_pytorch_model-00001-of-0000N.safetensors`` plus the index
        ``diffusion_pytorch_model.safetensors.index.json`` (shards are written first, the index last). Weight files of
        the same name and format left by an earlier save (stale shards, index or single file) are removed, so the
        folder always loads what was saved. ``save_function`` is accepted and not used, as in Diffusers.
        """
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported; upload the folder with huggingface_hub.")
        unexpected = sorted(set(kwargs) - _PUSH_TO_HUB_KWARGS)
        if unexpected:
            raise TypeError(f"save_pretrained() got unexpected keyword argument(s) {unexpected}")
        save_directory = ddpm_io.save_directory_path(save_directory, create=is_main_process)
        if not is_main_process:
            return save_directory
        weights_name = _weights_name(safe_serialization, variant)
        stem, ext = weights_name.rsplit(".", 1)
        state = {k: v.detach() for k, v in self.state_dict().items()}
        files, index = ddpm_io.split_into_shards(state, max_shard_size, f"{stem}{{suffix}}.{ext}")
        self.save_config(save_directory)
        for filename, keys in files.items():
            shard = {k: state[k] for k in keys}
            if safe_serialization:
                ddpm_io.save_state_dict(shard, save_directory / filename)
            else:
                tensors = {k: v.to("cpu").contiguous() for k, v in shard.items()}
                ddpm_io.atomic_save(save_directory / filename, lambda f, t=tensors: torch.save(t, f))
        index_name = ddpm_io.add_variant(_index_name(safe_serialization), variant)
        if index is not None:
            ddpm_io.atomic_write_text(save_directory / index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
        # Remove what an earlier save of the same name and format left that would shadow or contradict these files.
        stale = [save_directory / weights_name] if index is not None else [save_directory / index_name]
        stale += [
            p for p in save_directory.iterdir() if ddpm_io.is_shard_of(p.name, weights_name) and p.name not in files
        ]
        for path in stale:
            if path.is_file():
                path.unlink()
        return save_directory

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        device: str | torch.device | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        device_map: str | int | torch.device | dict | None = None,
        low_cpu_mem_usage: bool | None = None,
        output_loading_info: bool = False,
        force_download: bool = False,
        proxies: dict | None = None,
        ignore_mismatched_sizes: bool = False,
        disable_mmap: bool = False,
        max_memory: dict | None = None,
        offload_folder: str | os.PathLike | None = None,
        offload_state_dict: bool | None = None,
        quantization_config: Any = None,
        parallel_config: Any = None,
        use_flashpack: bool = False,
        flashpack_kwargs: dict | None = None,
        **overrides,
    ):
        """Build the model from ``config.json`` and load its weights (folder or Hugging Face Hub id).

        Takes Diffusers' keyword arguments with their effect (docs/diffusers-drop-in.md has the list):

        * ``dtype`` (or its older name ``torch_dtype``; ``dtype`` wins when both are given): cast the floating-point
          weights; a dtype name such as ``"float16"`` is accepted too.
        * ``device_map``: a device (``"cpu"``, ``"cuda:0"``, an accelerator index, a ``torch.device`` or
          ``{"": device}``) puts the whole model there; ``"auto"``, ``"balanced"``, ``"balanced_low_0"`` and
          ``"sequential"`` put it on the accelerator when there is one, else on the CPU (one device; maps that spread
          the model over several devices raise ``NotImplementedError``); ``model.hf_device_map`` records it, as in
          Diffusers. ``device`` (ddpm's own) places the model too.
        * ``variant``, ``use_safetensors`` (None: safetensors, else the pickled ``.bin`` through
          ``torch.load(weights_only=True)``; True: safetensors only; False: ``.bin`` only), sharded folders (an index
          JSON plus shards, also older Diffusers' variant names) and ``subfolder``.
        * ``revision``, ``cache_dir``, ``local_files_only``, ``force_download``, ``token``, ``proxies``: Hub options;
          with a local folder they have no effect, as in Diffusers. ``force_download`` while downloads are off raises
          :class:`ddpm.io.OfflineError`.
        * ``low_cpu_mem_usage``: accepted; loading never initialises the weights it overwrites either way (False with
          a ``device_map`` raises ``ValueError``, as in Diffusers). ``disable_mmap`` reads safetensors files in one
          read. ``max_memory``, ``offload_folder``, ``offload_state_dict``: accepted, without effect (nothing is
          offloaded; the model is on one device).
        * ``output_loading_info=True`` returns ``(model, {"missing_keys", "unexpected_keys", "mismatched_keys",
          "error_msgs"})``. Missing or unexpected keys raise :class:`WeightsMismatchError`; with
          ``ignore_mismatched_sizes=True`` tensors whose shape differs keep their fresh initialisation and are listed
          in ``mismatched_keys`` as ``(key, checkpoint shape, model shape)``.
        * ``quantization_config``, ``parallel_config`` and ``use_flashpack=True`` raise ``NotImplementedError``.

        Other keyword arguments replace config values (their shapes must still fit the weights); an unknown one
        raises ``TypeError``. The model is returned in eval mode, as in Diffusers.
        """
        for name, value, off in (
            ("quantization_config", quantization_config, None),
            ("parallel_config", parallel_config, None),
            ("use_flashpack", use_flashpack, False),
        ):
            if value is not off and value != off:
                raise NotImplementedError(f"{cls.__name__}.from_pretrained: {name}={value!r} is not supported by ddpm.")
        del flashpack_kwargs, max_memory, offload_folder, offload_state_dict  # no effect: see the docstring
        torch_dtype = _resolve_dtype(dtype, torch_dtype)
        if low_cpu_mem_usage not in (None, True, False):
            raise ValueError(f"low_cpu_mem_usage must be True, False or None, got {low_cpu_mem_usage!r}")
        target = _device_from_map(device_map, low_cpu_mem_usage)
        if target is not None and device is not None and torch.device(device) != target:
            raise ValueError(f"device={device!r} and device_map={device_map!r} disagree; pass one of them")
        if target is not None:
            device = target

        hub = {
            "revision": revision,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
            "token": token,
            "force_download": force_download,
            "proxies": proxies,
        }
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        weights_files = _resolve_weights(pretrained_model_name_or_path, subfolder, variant, use_safetensors, hub)
        read = ddpm_io.load_state_dict_bytes if disable_mmap else ddpm_io.load_state_dict
        state_dict: dict[str, torch.Tensor] = {}
        for path in weights_files:
            state_dict.update(read(path))
        state_dict = convert_legacy_attention_keys(state_dict)
        source = (
            f"{weights_files[0]}"
            if len(weights_files) == 1
            else f"the {len(weights_files)} shards in {weights_files[0].parent}"
        )

        # Build without initialising the parameters (every one is overwritten), check the tensors, then copy them
        # into freshly allocated (aligned) parameters of the default dtype, as Diffusers does, and cast.
        with torch.device("meta"):
            model = cls.from_config(config, **overrides)
        mismatched = []
        if ignore_mismatched_sizes:
            expected = model.state_dict()
            mismatched = [
                (k, state_dict[k].shape, expected[k].shape)
                for k in sorted(expected)
                if k in state_dict and state_dict[k].shape != expected[k].shape
            ]
        if mismatched:
            # The mismatched tensors keep a fresh initialisation: build the model for real.
            for key, _, _ in mismatched:
                del state_dict[key]
            model = cls.from_config(config, **overrides)
            model._check_state_dict(state_dict, source, skip={k for k, _, _ in mismatched})
            model.load_state_dict(state_dict, strict=False)
            if device is not None:
                model.to(device)
        else:
            model._check_state_dict(state_dict, source)
            model.to_empty(device=device if device is not None else "cpu")
            model._reset_non_persistent_buffers()
            model.load_state_dict(state_dict, strict=True)
        del state_dict
        if torch_dtype is not None:
            model.to(dtype=torch_dtype)
        model.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        model.eval()
        if target is not None:
            # As Diffusers records it: a dict as given, an index as given, a device name as a torch.device.
            model.hf_device_map = dict(device_map) if isinstance(device_map, dict) else {"": target}
            if isinstance(device_map, int):
                model.hf_device_map = {"": device_map}
        if output_loading_info:
            info = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": mismatched, "error_msgs": []}
            return model, info
        return model


#: Keyword arguments of Diffusers' ``save_pretrained`` that only matter with ``push_to_hub=True``.
_PUSH_TO_HUB_KWARGS = frozenset({"commit_message", "private", "create_pr", "token", "repo_id"})
#: ``device_map`` strategies of Diffusers (accelerate) that spread a model over the available devices.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _resolve_dtype(dtype, torch_dtype) -> torch.dtype | None:
    """``dtype`` if given, else ``torch_dtype`` (Diffusers' rule for models); names such as ``"float16"`` accepted."""
    value = dtype if dtype is not None else torch_dtype
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        parsed = getattr(torch, value.removeprefix("torch."), None)
        if isinstance(parsed, torch.dtype):
            return parsed
    raise TypeError(f"dtype must be a torch.dtype (or its name, e.g. 'float16'), got {value!r}")


def accelerator_device() -> torch.device:
    """The device a one-device ``device_map`` strategy ("auto", "balanced", ...) uses: the current accelerator
    (CUDA, XPU, MPS, ...) when there is one, else the CPU."""
    current = getattr(torch, "accelerator", None)
    if current is not None and current.is_available():
        accel = current.current_accelerator()
        # torch 2.6 names it current_device_idx
        index = getattr(current, "current_device_index", None) or getattr(current, "current_device_idx", None)
        return torch.device(accel.type) if accel.type == "mps" or index is None else torch.device(accel.type, index())
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _device_from_map(device_map, low_cpu_mem_usage) -> torch.device | None:
    """The one device a Diffusers ``device_map`` puts the whole model on (None for no map)."""
    if device_map is None:
        return None
    if low_cpu_mem_usage is False:
        raise ValueError(
            f"You cannot set `low_cpu_mem_usage` to `False` while using device_map={device_map} for loading and "
            "dispatching. Please make sure to set `low_cpu_mem_usage=True`."
        )
    if isinstance(device_map, dict):
        if set(device_map) == {""}:
            return _device_from_map(device_map[""], None)
        devices = {str(_device_from_map(v, None)) for v in device_map.values()}
        if len(devices) != 1:
            raise NotImplementedError(
                f"device_map={device_map!r} spreads the model over several devices; ddpm loads a model onto one "
                "device (pass a device, or 'auto' to use the accelerator)."
            )
        return torch.device(devices.pop())
    if isinstance(device_map, torch.device):
        return device_map
    if isinstance(device_map, bool) or not isinstance(device_map, (int, str)):
        raise ValueError(f"device_map must be a device, an accelerator index, a strategy or a dict, got {device_map!r}")
    if isinstance(device_map, int):
        if device_map < 0:
            raise ValueError(
                "You can't pass device_map as a negative int. If you want to put the model on the cpu, pass "
                "device_map = 'cpu' "
            )
        accel = accelerator_device()
        return torch.device(accel.type if accel.type != "cpu" else "cuda", device_map)
    if device_map in DEVICE_MAP_STRATEGIES:
        return accelerator_device()
    if device_map == "disk":
        raise NotImplementedError("device_map='disk' (offloading to disk) is not supported by ddpm.")
    try:
        return torch.device(device_map)
    except RuntimeError:
        raise ValueError(
            "When passing device_map as a string, the value needs to be a device name (e.g. cpu, cuda:0) or "
            f"{', '.join(repr(s) for s in DEVICE_MAP_STRATEGIES)} but found {device_map}."
        ) from None


def _weights_name(safe: bool, variant: str | None) -> str:
    name = ddpm_io.SAFETENSORS_WEIGHTS_NAME if safe else ddpm_io.PYTORCH_WEIGHTS_NAME
    return ddpm_io.add_variant(name, variant)


def _index_name(safe: bool) -> str:
    return ddpm_io.SAFETENSORS_INDEX_NAME if safe else ddpm_io.PYTORCH_INDEX_NAME


def _resolve_weights(name_or_path, subfolder, variant, use_safetensors, hub) -> list[Path]:
    """The weight files to read, in Diffusers' order of preference: for each allowed format (safetensors unless
    ``use_safetensors=False``, then ``.bin`` unless ``use_safetensors=True``) the shard index, then the single file.

    Raises ``FileNotFoundError`` naming the files and the folder when none exists (``OfflineError`` when the Hub
    could not be asked), ``FileNotFoundError`` when an index names a shard that is missing.
    """
    if use_safetensors not in (None, True, False):
        raise ValueError(f"use_safetensors must be True, False or None, got {use_safetensors!r}")
    formats = [safe for safe in (True, False) if use_safetensors is None or use_safetensors == safe]
    candidates: list[tuple[str, bool]] = []  # (file name, is an index)
    for safe in formats:
        candidates.append((ddpm_io.add_variant(_index_name(safe), variant), True))
        if variant:
            candidates.append((ddpm_io.legacy_variant_index_name(_index_name(safe), variant), True))
        candidates.append((_weights_name(safe, variant), False))
    offline_error: OSError | None = None
    for filename, is_index in candidates:
        try:
            path = ddpm_io.resolve_file(name_or_path, filename, subfolder=subfolder, **hub)
        except ddpm_io.NotAFolderOrHubIdError:
            raise
        except ddpm_io.OfflineError as err:
            offline_error = offline_error or err
            continue
        except OSError:  # FileNotFoundError, entry not found on the Hub
            continue
        if not is_index:
            return [path]
        return _resolve_shards(name_or_path, subfolder, path, hub)
    if offline_error is not None and not Path(name_or_path).is_dir():
        raise offline_error
    folder = Path(name_or_path) / subfolder if subfolder else name_or_path
    names = [filename for filename, is_index in candidates if not is_index]
    raise FileNotFoundError(f"Error no file named {' or '.join(names)} found in directory {folder}.")


def _resolve_shards(name_or_path, subfolder, index_file: Path, hub) -> list[Path]:
    shards = sorted(set(ddpm_io.read_shard_index(index_file).values()))
    paths = []
    for shard in shards:
        try:
            paths.append(ddpm_io.resolve_file(name_or_path, shard, subfolder=subfolder, **hub))
        except ddpm_io.OfflineError:
            raise
        except OSError:
            raise FileNotFoundError(
                f"{index_file.parent} does not appear to have a file named {shard} which is required according to "
                f"the checkpoint index {index_file.name}."
            ) from None
    return paths
