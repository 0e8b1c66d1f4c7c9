"""Generic model machinery: ``ModelMixin`` (config + weights in the Diffusers layout). The models' outputs derive
from :class:`ddpm.outputs.BaseOutput`.

A model folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or a legacy
``diffusion_pytorch_model.bin``, read only through ``torch.load(weights_only=True)``), exactly as Diffusers writes
them, so that a folder saved by either library loads in the other.
"""

from __future__ import annotations

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


class WeightsMismatchError(ValueError):
    """A weights file does not fit the model built from its config (missing, unexpected or mis-shaped tensors)."""


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

    def _check_state_dict(self, state_dict: dict[str, torch.Tensor], source: str) -> None:
        expected = self.state_dict(keep_vars=True)
        missing = [k for k in expected if k not in state_dict]
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
        safe_serialization: bool = True,
        variant: str | None = None,
        is_main_process: bool = True,
        **_unused,
    ) -> Path:
        """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` (atomically) into ``save_directory``.

        ``safe_serialization=False`` writes the legacy ``diffusion_pytorch_model.bin`` (``torch.save``) instead.
        """
        save_directory = ddpm_io.save_directory_path(save_directory, create=is_main_process)
        if not is_main_process:
            return save_directory
        self.save_config(save_directory)
        state = {k: v.detach() for k, v in self.state_dict().items()}
        name = _weights_name(safe_serialization, variant)
        if safe_serialization:
            ddpm_io.save_state_dict(state, save_directory / name)
        else:
            tensors = {k: v.to("cpu").contiguous() for k, v in state.items()}
            ddpm_io.atomic_save(save_directory / name, lambda f: torch.save(tensors, f))
        return save_directory

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        torch_dtype: torch.dtype | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        device: str | torch.device | None = None,
        **overrides,
    ):
        """Build the model from ``config.json`` and load its weights (folder or Hugging Face Hub id).

        ``overrides`` replace config values (their shapes must still fit the weights). ``torch_dtype`` casts the
        floating-point weights; ``device`` places the model. The model is returned in eval mode, as in Diffusers.
        """
        hub = {"revision": revision, "cache_dir": cache_dir, "local_files_only": local_files_only, "token": token}
        config = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub)
        weights_file = _resolve_weights(pretrained_model_name_or_path, subfolder, variant, use_safetensors, hub)
        state_dict = ddpm_io.load_state_dict(weights_file)
        state_dict = convert_legacy_attention_keys(state_dict)

        if torch_dtype is not None and not isinstance(torch_dtype, torch.dtype):
            raise TypeError(f"torch_dtype must be a torch.dtype, got {torch_dtype!r}")
        # Build without initialising the parameters (every one is overwritten), check the tensors, then copy them
        # into freshly allocated (aligned) parameters of the default dtype, as Diffusers does, and cast.
        with torch.device("meta"):
            model = cls.from_config(config, **overrides)
        model._check_state_dict(state_dict, f"{weights_file}")
        model.to_empty(device=device if device is not None else "cpu")
        model._reset_non_persistent_buffers()
        model.load_state_dict(state_dict, strict=True)
        del state_dict
        if torch_dtype is not None:
            model.to(dtype=torch_dtype)
        model.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        return model.eval()


def _weights_name(safe: bool, variant: str | None) -> str:
    name = ddpm_io.SAFETENSORS_WEIGHTS_NAME if safe else ddpm_io.PYTORCH_WEIGHTS_NAME
    if variant:
        stem, ext = name.rsplit(".", 1)
        name = f"{stem}.{variant}.{ext}"
    return name


def _resolve_weights(name_or_path, subfolder, variant, use_safetensors, hub) -> Path:
    candidates = []
    if use_safetensors is not False:
        candidates.append(_weights_name(True, variant))
    if not use_safetensors:
        candidates.append(_weights_name(False, variant))
    first_error: OSError | None = None
    for filename in candidates:
        try:
            return ddpm_io.resolve_file(name_or_path, filename, subfolder=subfolder, **hub)
        except OSError as err:  # FileNotFoundError, OfflineError, entry not found
            if first_error is None or (
                isinstance(err, ddpm_io.OfflineError) and not isinstance(first_error, ddpm_io.OfflineError)
            ):
                first_error = err
    if isinstance(first_error, ddpm_io.OfflineError):
        raise first_error
    where = f"{name_or_path}/{subfolder}" if subfolder else f"{name_or_path}"
    raise FileNotFoundError(f"Error no file named {' or '.join(candidates)} found in {where}.") from first_error
