"""Typed loading of plain data (TOML configs, JSON messages) into dataclasses.

One small implementation serves configs (strict: unknown keys are errors) and protocol messages
(lenient: unknown keys are ignored so newer peers can add optional fields).  Field docs live in
``field(metadata={"doc": ...})`` so every option is described where it is declared.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")


class SchemaError(ValueError):
    """Data does not match the declared dataclass; ``path`` names the offending key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path
        self.message = message


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field with a description (and optional default/default_factory)."""
    return dataclasses.field(metadata={"doc": text}, **kwargs)


def load(cls: type[T], data: Any, *, strict: bool = True, path: str = "") -> T:
    """Build ``cls`` from ``data``, checking every type; raise :class:`SchemaError` otherwise."""
    return typing.cast(T, _convert(cls, data, strict, path))


def _convert(tp: Any, value: Any, strict: bool, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, strict, path)
            except SchemaError as exc:
                errors.append(exc.message)
        raise SchemaError(path, " / ".join(errors) or "unexpected null")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SchemaError(path, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SchemaError(path, f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, strict, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a table/object, got {type(value).__name__}")
        _, val_tp = typing.get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(path, "keys must be strings")
            out[k] = _convert(val_tp, v, strict, f"{path}.{k}" if path else k)
        return out
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _load_dataclass(tp, value, strict, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise SchemaError(path, f"must be one of {[m.value for m in tp]}, got {value!r}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise SchemaError(path, "must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected a path string, got {value!r}")
        return Path(value).expanduser()
    raise SchemaError(path, f"unsupported type {tp!r}")  # pragma: no cover - programming error


def _load_dataclass(cls: type, value: Any, strict: bool, path: str) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(path, f"expected a table/object, got {type(value).__name__}")
    hints, fields = _fields(cls)
    unknown = set(value) - set(fields)
    if unknown and strict:
        raise SchemaError(path, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], strict, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(sub, "is required")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ range checks
        raise SchemaError(path, str(exc)) from None
    return obj


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Resolved type hints and init fields of a dataclass, computed once per class: resolving string
    annotations is most of the cost of decoding a message otherwise (300 µs → 60 µs per anomaly event)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}


def dump(obj: Any) -> Any:
    """Dataclass → plain JSON/TOML-able data (enums by value, paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list | tuple):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, type, description) for every field, recursing into nested dataclasses."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        rows.append((key, _type_name(tp), f.metadata.get("doc", "")))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
    return rows


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
