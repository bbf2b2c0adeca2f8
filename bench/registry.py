"""One registry for every pluggable kind (attack, defense, dataset, model, trigger set), plus entry points.

An object gives its name once, as its ``name`` attribute: a class registers with ``@register("attack")``
(the registry reads ``cls.name``), and so does any object carrying a ``name`` (``register("trigger_set")
(TextTriggerSet("por", ...))``).  ``register(kind, name)`` stays for objects without one.  Third-party
packages expose the same objects through the entry-point groups ``ptmbench.attacks``,
``ptmbench.defenses``, ``ptmbench.datasets``, ``ptmbench.models`` and ``ptmbench.trigger_sets``; an entry
point's name must be its object's name.  Unknown names fail with the list of known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from bench.errors import PtmbenchError

T = TypeVar("T")

KINDS = ("attack", "defense", "dataset", "model", "trigger_set")
_BUILTIN_MODULES = {
    "attack": ("attacks",),
    "defense": ("defenses",),
    "dataset": ("bench.data",),
    "model": ("bench.zoo",),
    "trigger_set": ("bench.triggers",),
}


def group(kind: str) -> str:
    """The entry-point group of a kind: ``ptmbench.attacks``, ..., ``ptmbench.trigger_sets``."""
    return f"ptmbench.{kind}s"


def own_name(obj: Any) -> str | None:
    """The name an object carries: a class's own ``name`` (not one inherited), else an instance's ``name``."""
    value = vars(obj).get("name") if isinstance(obj, type) else getattr(obj, "name", None)
    return value if isinstance(value, str) and value else None


class Registry:
    """Name -> object tables, one per kind; built-ins and entry points are loaded lazily on first lookup."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
        self._loaded: set[str] = set()

    def register(self, kind: str, name: str | None = None) -> Callable[[T], T]:
        """Decorator (or call on an object) adding it to ``kind``'s table under its own ``name``.

        A class must set a non-empty ``name`` on itself (an inherited one is refused: it would register
        the subclass under its parent's name); ``name`` is for objects that carry none, and for a class or
        an object that carries one it must be that same name."""
        if kind not in self._tables:
            raise ValueError(f"unknown registry kind {kind!r}; known: {', '.join(KINDS)}")

        def deco(obj: T) -> T:
            carried = own_name(obj)
            if name is None and carried is None:
                what = f"class {obj.__qualname__}" if isinstance(obj, type) else f"{type(obj).__name__} object"
                inherited = getattr(obj, "name", None) if isinstance(obj, type) else None
                hint = f" (it only inherits {inherited!r})" if isinstance(inherited, str) and inherited else ""
                raise TypeError(f"register({kind!r}): {what} has no name of its own{hint}; set a non-empty "
                                "`name = ...` on it, or pass the name: register(kind, name)")
            if name is not None and carried is not None and name != carried:
                raise TypeError(f"register({kind!r}, {name!r}): the object's own name is {carried!r}; "
                                f"drop the second argument (register({kind!r}) reads the name)")
            key = name if name is not None else carried
            assert key is not None
            table = self._tables[kind]
            if key in table and table[key] is not obj:
                raise ValueError(f"{kind} {key!r} is registered twice")
            table[key] = obj
            return obj

        return deco

    def _load(self, kind: str) -> None:
        if kind in self._loaded:
            return
        self._loaded.add(kind)
        for mod in _BUILTIN_MODULES[kind]:
            importlib.import_module(mod)
        for ep in entry_points(group=group(kind)):
            obj = ep.load()
            carried = own_name(obj)
            if carried is not None and carried != ep.name:
                package = ep.dist.name if ep.dist is not None else ep.value
                raise PtmbenchError(f"entry point {ep.name!r} of {package} (group {group(kind)}) names "
                                    f"{ep.value}, whose name is {carried!r}; rename the entry point to "
                                    f"{carried!r} in that package's pyproject.toml")
            self._tables[kind].setdefault(ep.name, obj)

    def get(self, kind: str, name: str) -> Any:
        self._load(kind)
        table = self._tables[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise PtmbenchError(f"unknown {kind.replace('_', ' ')} {name!r}; known {kind.replace('_', ' ')}s: "
                                f"{known}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        self._load(kind)
        return sorted(self._tables[kind])


REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names
