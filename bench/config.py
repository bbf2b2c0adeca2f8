"""Typed configs from YAML/dicts: unknown keys and wrong types are errors naming the key and the choices."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

from bench.errors import PtmbenchError

T = TypeVar("T")


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """(accepted, converted value) for the simple types configs use."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is Any:
        return True, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            return True, float(value)
        if isinstance(value, str):  # YAML reads 1e-4 as a string
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = []
        for v in value:
            ok, cv = _type_ok(v, inner)
            if not ok:
                return False, value
            out.append(cv)
        return True, tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return True, value


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``; ``where`` names the place in the file for error messages."""
    data = data or {}
    if not isinstance(data, dict):
        raise PtmbenchError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise PtmbenchError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(fields))}")
        ok, conv = _type_ok(value, hints[key])
        if not ok:
            raise PtmbenchError(f"{where}.{key}: expected {_describe(hints[key])}, got {value!r}")
        kwargs[key] = conv
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise PtmbenchError(f"{where}: {e}") from e
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where)
    return obj


def positive(where: str, **values: float | int | None) -> None:
    """Raise a PtmbenchError for the first value that is not > 0 (None is allowed)."""
    for k, v in values.items():
        if v is not None and not v > 0:
            raise PtmbenchError(f"{where}.{k}: must be > 0, got {v}")


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)
