"""Lazy package attributes (PEP 562), shared by ``ddpm``, ``ddpm.training`` and ``ddpm.evaluation``.

A package lists ``{name: module}`` and imports the module on first access to the name, so that ``import ddpm`` (and
the ``ddpm`` command) start without importing torch, scipy or the Inception network. Imports nothing itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_attributes(package: str, names: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``names[name]`` is imported on first use and cached in
    ``namespace`` (the package's ``globals()``), so later accesses are plain attribute lookups."""

    def __getattr__(name: str):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
