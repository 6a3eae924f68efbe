"""Converters by name: the built-in modules, third-party entry points, and plugin files.

Built-ins are the modules of :mod:`phi3v_data.converters`, found by listing the package
(so adding a converter touches no shared file). Third-party packages register through the
entry-point group ``phi3v_data.converters``; a single file works with ``--plugin``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TypeVar

from phi3v_data.converter import Converter

ENTRY_POINT_GROUP = "phi3v_data.converters"

_REGISTRY: dict[str, type[Converter]] = {}
_discovered = False

C = TypeVar("C", bound=type[Converter])


class RegistryError(ValueError):
    """An unknown converter name, a clash of names, or a plugin that cannot be loaded."""


def register(cls: C) -> C:
    """Class decorator: make a :class:`Converter` available under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise RegistryError(f"{cls.__qualname__} has no 'name'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
        raise RegistryError(f"two converters are named {name!r}: {existing} and {cls}")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import phi3v_data.converters as package

    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as error:  # a broken third-party package must not break the CLI
            print(
                f"warning: converter plugin {entry.name!r} failed to load: {error}", file=sys.stderr
            )
            continue
        if isinstance(loaded, type) and issubclass(loaded, Converter):
            register(loaded)


def load_plugin(path: str | Path) -> list[str]:
    """Import a Python file that registers converters; return the names it added."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"plugin file not found: {path}")
    before = dict(_REGISTRY)
    spec = importlib.util.spec_from_file_location(f"phi3v_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise RegistryError(f"cannot import plugin {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # workers started by fork see it; pickling needs it
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        raise RegistryError(f"plugin {path} failed to import: {error}") from None
    added = sorted(n for n, c in _REGISTRY.items() if before.get(n) is not c)
    if not added:
        raise RegistryError(f"plugin {path} registered no converter (use @register)")
    return added


def get_converter(name: str) -> type[Converter]:
    """The converter class registered as ``name``."""
    _discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise RegistryError(f"unknown converter {name!r}; available: {known}") from None


def available_converters() -> dict[str, type[Converter]]:
    """Every registered converter by name, sorted."""
    _discover()
    return dict(sorted(_REGISTRY.items()))
