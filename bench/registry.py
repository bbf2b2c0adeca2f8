"""One registry for every pluggable kind (attack, defense, dataset, model), plus entry-point discovery.

Built-in methods register with ``@register("attack", "neuba")``; third-party packages expose the same
objects through the entry-point groups ``ptmbench.attacks``, ``ptmbench.defenses``, ``ptmbench.datasets``
and ``ptmbench.models``.  Unknown names fail with the list of known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from bench.errors import PtmbenchError

KINDS = ("attack", "defense", "dataset", "model")
_BUILTIN_MODULES = {
    "attack": ("attacks",),
    "defense": ("defenses",),
    "dataset": ("bench.data",),
    "model": ("bench.zoo",),
}


class Registry:
    """Name -> object tables, one per kind; built-ins and entry points are loaded lazily on first lookup."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self._loaded: set[str] = set()

    def register(self, kind: str, name: str) -> Callable[[Any], Any]:
        if kind not in self._tables:
            raise ValueError(f"unknown registry kind {kind!r}; known: {', '.join(KINDS)}")

        def deco(obj: Any) -> Any:
            table = self._tables[kind]
            if name in table and table[name] is not obj:
                raise ValueError(f"{kind} {name!r} is registered twice")
            table[name] = obj
            return obj

        return deco

    def _load(self, kind: str) -> None:
        if kind in self._loaded:
            return
        self._loaded.add(kind)
        for mod in _BUILTIN_MODULES[kind]:
            importlib.import_module(mod)
        for ep in entry_points(group=f"ptmbench.{kind}s"):
            obj = ep.load()
            self._tables[kind].setdefault(ep.name, obj)

    def get(self, kind: str, name: str) -> Any:
        self._load(kind)
        table = self._tables[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise PtmbenchError(f"unknown {kind} {name!r}; known {kind}s: {known}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        self._load(kind)
        return sorted(self._tables[kind])


REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names
