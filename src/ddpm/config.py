"""Configuration objects that round-trip through JSON in the Diffusers file format.

The schedulers and the UNet derive from :class:`ConfigMixin` and decorate their ``__init__`` with
:func:`register_to_config`. The constructor arguments, with their defaults filled in, become a read-only
:class:`FrozenDict` available as ``obj.config``; ``save_config`` writes it as JSON with the same file name and keys as
Diffusers (``scheduler_config.json``, ``config.json``), and ``from_config`` / ``from_pretrained`` build the object
back, so files written by either library load in the other. The pipeline is not a ``ConfigMixin``: it writes and
reads its ``model_index.json`` itself (:class:`ddpm.DDPMPipeline`).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from . import io as ddpm_io

logger = logging.getLogger(__name__)

#: The Diffusers version written into saved configs as ``_diffusers_version``. Diffusers reads this key only for
#: information; we write the version whose file format we follow.
DIFFUSERS_FORMAT_VERSION = "0.42.1"

#: Keyword arguments of Diffusers' ``from_pretrained`` that concern weights (and so do nothing for a config-only
#: object such as a scheduler; Diffusers accepts and ignores them there too).
WEIGHT_LOADING_KWARGS = (
    "dtype",
    "torch_dtype",
    "low_cpu_mem_usage",
    "device_map",
    "max_memory",
    "offload_folder",
    "offload_state_dict",
    "variant",
    "use_safetensors",
    "output_loading_info",
    "ignore_mismatched_sizes",
    "disable_mmap",
    "quantization_config",
    "parallel_config",
    "use_flashpack",
    "flashpack_kwargs",
    "user_agent",
)


class ReadOnlyDictMixin:
    """Refuses the dict methods that remove keys or change several at once (as Diffusers' ``FrozenDict`` and
    ``BaseOutput`` do): put it before the dict class in the bases."""

    _refusal_note = ""

    def _refuse(self, name):
        raise TypeError(f"You cannot use ``{name}`` on a {type(self).__name__} instance{self._refusal_note}.")

    def __delitem__(self, *args, **kwargs):
        self._refuse("__delitem__")

    def setdefault(self, *args, **kwargs):
        self._refuse("setdefault")

    def pop(self, *args, **kwargs):
        self._refuse("pop")

    def update(self, *args, **kwargs):
        self._refuse("update")


class FrozenDict(ReadOnlyDictMixin, OrderedDict):
    """A read-only ordered dict whose keys are also readable as attributes (``config.num_train_timesteps``)."""

    _refusal_note = ": the config is read-only"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "_FrozenDict__frozen", True)

    def popitem(self, *args, **kwargs):
        self._refuse("popitem")

    def clear(self):
        self._refuse("clear")

    def __setattr__(self, name, value):
        if getattr(self, "_FrozenDict__frozen", False):
            self._refuse("__setattr__")
        super().__setattr__(name, value)

    def __setitem__(self, name, value):
        if getattr(self, "_FrozenDict__frozen", False):
            self._refuse("__setitem__")
        super().__setitem__(name, value)

    def __getattr__(self, name):
        # Only reached when normal attribute lookup fails.
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    def __reduce__(self):
        return (FrozenDict, (list(self.items()),))

    def __copy__(self):
        return FrozenDict(self.items())

    def __deepcopy__(self, memo):
        import copy

        return FrozenDict(copy.deepcopy(list(self.items()), memo))


def _to_json_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, tuple):
        return [_to_json_value(v) for v in value]
    if isinstance(value, list):
        return [_to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json_value(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # torch tensors, numpy scalars
        return value.tolist()
    return value


#: The config key listing the constructor arguments the caller did not give (they took the class's default).
USE_DEFAULT_VALUES = "_use_default_values"


def register_to_config(init):
    """Decorate ``__init__`` so that its bound arguments (defaults included) become ``self.config``.

    Keyword arguments starting with ``_`` are kept in the config but not passed to ``__init__`` (as in Diffusers).
    The arguments the caller did not pass (neither by keyword nor by position) are listed, in signature order, under
    ``config["_use_default_values"]`` (absent when every argument was passed), as Diffusers' decorator does: it is
    never written to JSON, and :meth:`ConfigMixin.from_config` lets the target class use its own default for them.
    Unlike Diffusers, an argument passed by position counts as given (Diffusers lists it as a default).
    """

    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        private = {k: v for k, v in kwargs.items() if k.startswith("_")}
        public = {k: v for k, v in kwargs.items() if not k.startswith("_")}
        try:
            bound = signature.bind(self, *args, **public)
        except TypeError as err:
            raise TypeError(f"{type(self).__name__}.__init__(): {err}") from None
        explicit = set(bound.arguments) - {"self"}
        bound.apply_defaults()
        values = OrderedDict((k, v) for k, v in bound.arguments.items() if k != "self")
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                values.update(values.pop(name, {}))
            elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                values.pop(name, None)
        defaults = [k for k in values if k not in explicit]
        if defaults:  # else a list passed in (``cls(**other.config)``) stays, as in Diffusers
            private[USE_DEFAULT_VALUES] = defaults
        listed = private.pop(USE_DEFAULT_VALUES, None)
        self.register_to_config(**private, **values, **({} if listed is None else {USE_DEFAULT_VALUES: list(listed)}))
        init(self, *args, **public)

    wrapper.__signature__ = signature
    return wrapper


class ConfigMixin:
    """Read-only JSON configuration with the Diffusers file format.

    Subclasses set ``config_name`` (the file written by :meth:`save_config`) and decorate ``__init__`` with
    :func:`register_to_config`.
    """

    config_name: str = "config.json"
    #: Config keys that an older file may carry and that this class knowingly ignores (no warning).
    _ignored_config_keys: tuple[str, ...] = ()
    #: Retired keys that ``from_config`` drops instead of carrying them along in the config.
    _dropped_config_keys: tuple[str, ...] = ("predict_epsilon",)

    # -- state ---------------------------------------------------------------------------------------------------
    def register_to_config(self, **kwargs) -> None:
        """Add or override config keys (the config stays read-only for everybody else)."""
        current = dict(getattr(self, "_internal_dict", {}))
        current.update(kwargs)
        self._internal_dict = FrozenDict(current)

    @property
    def config(self) -> FrozenDict:
        """The constructor arguments of this object (read-only; key and attribute access)."""
        return self._internal_dict

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails: allow ``obj.beta_start`` for config keys, as Diffusers does.
        internal = self.__dict__.get("_internal_dict")
        if internal is not None and name in internal and not name.startswith("_"):
            warnings.warn(
                f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute is "
                f"deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, e.g. "
                f"'obj.config.{name}'.",
                FutureWarning,
                stacklevel=2,
            )
            return internal[name]
        return super().__getattribute__(name)

    # -- JSON ----------------------------------------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        """The config as written to disk: ``_class_name`` and ``_diffusers_version`` added, private keys dropped."""
        data = {k: _to_json_value(v) for k, v in self.config.items() if not k.startswith("_")}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return data

    def to_json_string(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike) -> Path:
        """Write ``save_directory/<config_name>`` atomically; returns the file's path."""
        path = ddpm_io.save_directory_path(save_directory) / self.config_name
        ddpm_io.atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def load_config(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        **hub_kwargs,
    ) -> dict[str, Any]:
        """Read ``<config_name>`` from a local folder, a JSON file, or a Hugging Face Hub repository."""
        path = Path(pretrained_model_name_or_path)
        if path.is_file():
            config_file = path
        else:
            config_file = ddpm_io.resolve_file(
                pretrained_model_name_or_path, cls.config_name, subfolder=subfolder, revision=revision, **hub_kwargs
            )
        try:
            with open(config_file, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise OSError(f"It looks like the config file at '{config_file}' is not a valid JSON file: {err}") from None
        if not isinstance(data, dict):
            raise OSError(f"The config file at '{config_file}' does not hold a JSON object.")
        return data

    @classmethod
    def _init_parameters(cls) -> dict[str, inspect.Parameter]:
        params = dict(inspect.signature(cls.__init__).parameters)
        params.pop("self", None)
        return {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}

    @classmethod
    def from_config(cls, config: dict[str, Any] | FrozenDict | None = None, **overrides):
        """Build an object from a config dict (e.g. another object's ``.config``); ``overrides`` win.

        As Diffusers' ``from_config``: keys listed in ``config["_use_default_values"]`` (arguments the source object
        was not given) are skipped, so this class uses its own default for them; keys the constructor does not take
        are ignored (silently for private ``_`` keys and other schedulers' keys, ``_ignored_config_keys``; with a
        warning otherwise), and the silently ignored ones are kept in the new object's config (``_class_name`` set to
        this class) so that a swap back recovers them. A config read from a file has no ``_use_default_values``:
        the keys missing from the file are the ones that take defaults.
        """
        if config is None:
            raise ValueError("Please make sure to provide a config as the first positional argument.")
        if isinstance(config, (str, os.PathLike)):
            config = cls.load_config(config)
        config = dict(config)
        use_defaults = set(config.pop(USE_DEFAULT_VALUES, None) or [])
        config = {k: v for k, v in config.items() if k not in use_defaults}
        params = cls._init_parameters()
        init_kwargs: dict[str, Any] = {}
        unexpected = []
        for key, value in config.items():
            if key.startswith("_"):
                continue
            if key in params:
                init_kwargs[key] = value
            elif key not in cls._ignored_config_keys:
                unexpected.append(key)
        unknown_overrides = [k for k in overrides if k not in params]
        if unknown_overrides:
            raise TypeError(
                f"{cls.__name__} got unexpected keyword argument(s) {unknown_overrides}; allowed: {sorted(params)}"
            )
        init_kwargs.update(overrides)
        if unexpected:
            logger.warning(
                "The config attributes %s were passed to %s, but are not expected and will be ignored.",
                {k: config[k] for k in unexpected},
                cls.__name__,
            )
        obj = cls(**init_kwargs)
        # Keep what the constructor did not take (another scheduler's keys, the file's private keys) in the config, so
        # that swapping back (``Other.from_config(obj.config)``) recovers them, as Diffusers does.
        hidden = {
            k: v
            for k, v in config.items()
            if k not in init_kwargs and k not in params and k not in unexpected and k not in cls._dropped_config_keys
        }
        if hidden:
            if "_class_name" in hidden:
                hidden["_class_name"] = cls.__name__
            obj.register_to_config(**hidden)
        return obj

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        token: str | bool | None = None,
        force_download: bool = False,
        proxies: dict | None = None,
        return_unused_kwargs: bool = False,
        **kwargs,
    ):
        """Load from a folder (or Hub id) holding ``<config_name>``; keyword arguments naming constructor arguments
        replace config values.

        Diffusers' weight-loading options (``dtype``, ``torch_dtype``, ``low_cpu_mem_usage``, ``device_map``,
        ``variant``, ``use_safetensors``, ``output_loading_info``, ...) are accepted and, as in Diffusers, have no
        effect on an object that is only a config. ``return_unused_kwargs=True`` returns ``(object, unused)`` as
        Diffusers does, ``unused`` holding those options, the other unknown keyword arguments and the file's keys the
        constructor does not take; without it an unknown keyword argument raises ``TypeError``.
        """
        config = cls.load_config(
            pretrained_model_name_or_path,
            subfolder=subfolder,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
            force_download=force_download,
            proxies=proxies,
        )
        params = cls._init_parameters()
        loading = {k: kwargs.pop(k) for k in WEIGHT_LOADING_KWARGS if k in kwargs and k not in params}
        if not return_unused_kwargs:
            return cls.from_config(config, **kwargs)
        unknown = {k: v for k, v in kwargs.items() if k not in params}
        obj = cls.from_config(config, **{k: v for k, v in kwargs.items() if k in params})
        leftover = {k: v for k, v in config.items() if k not in params and k != "_use_default_values"}
        return obj, {**leftover, **unknown, **loading}

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
