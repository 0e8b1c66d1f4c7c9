"""``BaseOutput``: the dataclass outputs of the scheduler, the models and the pipeline, as Diffusers' ``BaseOutput``.

An output is a dataclass that is also an ordered dict and a tuple of its fields that are not ``None``:
``out.prev_sample``, ``out["prev_sample"]`` and ``out[0]`` are the same object, ``out.to_tuple()`` is the plain tuple
and ``out.keys()`` skips ``None`` fields. The dict methods that would remove keys or bulk-change them raise
``TypeError``. Outputs pickle (the fields go through the constructor) and every subclass is registered as a torch
pytree node, so ``torch.compile``, ``torch.export`` and DDP look through them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import fields, is_dataclass
from typing import Any

import torch.utils._pytree as pytree

from .config import ReadOnlyDictMixin

__all__ = ["BaseOutput"]


class BaseOutput(ReadOnlyDictMixin, OrderedDict):
    """Base of the dataclass outputs; subclass it with ``@dataclass`` (fields with defaults may be ``None``)."""

    #: The dataclass field names in order; read from the first instance (the ``@dataclass`` decorator runs after
    #: ``__init_subclass__``), so ``__post_init__`` does not call ``dataclasses.fields`` on every output.
    _field_names: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._field_names = ()
        try:
            pytree.register_pytree_node(
                cls,
                pytree._dict_flatten,
                lambda values, context: cls(**pytree._dict_unflatten(values, context)),
                serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
            )
        except (ValueError, AttributeError):  # pragma: no cover - already registered / very old torch
            pass

    def __post_init__(self) -> None:
        cls = type(self)
        if not cls._field_names:
            cls._field_names = tuple(f.name for f in fields(cls))
        for name in cls._field_names:
            value = getattr(self, name)
            if value is not None:
                OrderedDict.__setitem__(self, name, value)

    def __getitem__(self, key):
        if isinstance(key, str):
            return OrderedDict.__getitem__(self, key)
        return self.to_tuple()[key]

    def __setattr__(self, name, value):
        # Setting a field keeps the dict view in step (a field that was None joins it once it has a value).
        if value is not None and (name in self or name in type(self)._field_names):
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    def __setitem__(self, key, value):
        OrderedDict.__setitem__(self, key, value)
        object.__setattr__(self, key, value)

    def __reduce__(self):
        if not is_dataclass(self):
            return super().__reduce__()
        constructor, _args, *rest = super().__reduce__()
        return (constructor, tuple(getattr(self, f.name) for f in fields(self)), *rest)

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())
