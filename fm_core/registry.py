"""Registries the engine looks things up in, filled by the packages that define the things.

The engine knows no domain: a tokenizer kind, a foreign checkpoint format or a head kind is
registered by the package that implements it, when that package is imported. An installed
package announces itself through the ``fm_toolkit.plugins`` entry-point group (its value names
the module to import); plugins are imported only when a lookup misses, so a process that
registers what it needs itself never imports one. A name read from a file is only ever looked
up here: no module named by a file is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from fm_core.errors import UserError

log = logging.getLogger(__name__)
PLUGIN_GROUP = "fm_toolkit.plugins"
T = TypeVar("T")
_loaded_plugins: set[str] = set()


class UnknownKindError(UserError, ValueError):
    """A name (read from a file or a config) that no installed package registers."""


def load_plugins(until: Callable[[], bool] | None = None) -> bool:
    """Import every installed ``fm_toolkit.plugins`` entry point not imported yet, so that what they
    register becomes known; with ``until``, stop as soon as it holds (a lookup imports only the
    plugins up to the one that registers its name: loading a protein model does not import the
    chemistry stack). Returns whether any was imported. A plugin that fails to import is reported
    and skipped (its kinds stay unknown)."""
    loaded = False
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in _loaded_plugins:
            continue
        if until is not None and until():
            break
        _loaded_plugins.add(ep.name)
        try:
            ep.load()
        except ImportError as err:
            log.warning("fm_toolkit plugin %r (%s) not loaded: %s", ep.name, ep.value, err)
            continue
        loaded = True
    return loaded


def plugin_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=PLUGIN_GROUP))


class Registry(Generic[T]):
    """Name -> object, filled by ``register``; ``get`` imports the plugins once when a name is missing."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        self._items[name] = item
        return item

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def values(self) -> list[T]:
        return list(self._items.values())

    def get(self, name: str) -> T:
        if name not in self._items:
            load_plugins(until=lambda: name in self._items)
        if name not in self._items:
            raise UnknownKindError(
                f"unknown {self.what} {name!r}: refused (known: {', '.join(sorted(self._items)) or 'none'}; "
                f"installed plugins: {', '.join(plugin_names()) or 'none'}). A saved file only names a "
                f"registered {self.what}; it never names code to import, and untrusted names are refused")
        return self._items[name]

    def first(self, accepts: Callable[[T], bool]) -> T | None:
        """The first registered item ``accepts``; the plugins are imported when none does."""
        found = next((item for item in self.values() if accepts(item)), None)
        if found is None and load_plugins(until=lambda: any(accepts(item) for item in self.values())):
            found = next((item for item in self.values() if accepts(item)), None)
        return found


TOKENIZERS: Registry[type] = Registry("tokenizer kind")  # kind -> class with from_dict
FORMATS: Registry[Any] = Registry("checkpoint format")  # name -> fm_core.export.ForeignFormat
HEADS: Registry[type] = Registry("head kind")  # kind -> nn.Module class built as cls(**args)
# prefix of weights written by an older version -> upgrade(tokenizer, config) (see fm_core.export)
LEGACY_WEIGHTS: Registry[Callable[..., Any]] = Registry("legacy weight prefix")


def register_head(kind: str):
    """Class decorator: a head over backbone outputs that exports can rebuild by ``kind``. The class
    is built as ``cls(**head.to_dict())``: ``to_dict`` returns its JSON constructor arguments."""

    def wrap(cls: type) -> type:
        HEADS.register(kind, cls)
        cls.kind = kind
        return cls

    return wrap


__all__ = ["FORMATS", "HEADS", "LEGACY_WEIGHTS", "PLUGIN_GROUP", "TOKENIZERS", "Registry", "UnknownKindError",
           "load_plugins", "plugin_names", "register_head"]
