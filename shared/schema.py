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
    return _converter(tp, strict)(value, path)


Converter = typing.Callable[[Any, str], Any]


@functools.cache
def _converter(tp: Any, strict: bool) -> Converter:
    """A checking converter for ``tp``, built once per type: the type dispatch is done here, not per
    value (decoding is on the hub's ingest path).  Sub-paths for error messages are only formatted
    when a value fails (the failing item is converted again with its path)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda value, path: value
    if origin is Union or origin is types.UnionType:
        args = typing.get_args(tp)
        nullable = type(None) in args
        options = [_converter(arg, strict) for arg in args if arg is not type(None)]

        def union(value: Any, path: str) -> Any:
            if value is None and nullable:
                return None
            errors = []
            for option in options:
                try:
                    return option(value, path)
                except SchemaError as exc:
                    errors.append(exc.message)
            raise SchemaError(path, " / ".join(errors) or "unexpected null")

        return union
    if origin is typing.Literal:
        allowed = typing.get_args(tp)

        def literal(value: Any, path: str) -> Any:
            if value not in allowed:
                raise SchemaError(path, f"must be one of {list(allowed)}, got {value!r}")
            return value

        return literal
    if origin in (list, tuple):
        args = typing.get_args(tp)
        item = _converter(args[0] if args else Any, strict)
        as_tuple = origin is tuple

        def sequence(value: Any, path: str) -> Any:
            if not isinstance(value, list | tuple):
                raise SchemaError(path, f"expected a list, got {type(value).__name__}")
            try:
                items = [item(v, path) for v in value]
            except SchemaError:
                items = [item(v, f"{path}[{i}]") for i, v in enumerate(value)]  # raises with the item's path
            return tuple(items) if as_tuple else items

        return sequence
    if origin is dict:
        _, val_tp = typing.get_args(tp) or (str, Any)
        val = _converter(val_tp, strict)

        def mapping(value: Any, path: str) -> Any:
            if not isinstance(value, dict):
                raise SchemaError(path, f"expected a table/object, got {type(value).__name__}")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise SchemaError(path, "keys must be strings")
                try:
                    out[k] = val(v, path)
                except SchemaError:
                    out[k] = val(v, f"{path}.{k}" if path else k)
            return out

        return mapping
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_converter(tp, strict)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = tp

        def enumeration(value: Any, path: str) -> Any:
            try:
                return members(value)
            except ValueError:
                raise SchemaError(path, f"must be one of {[m.value for m in members]}, got {value!r}") from None

        return enumeration
    if tp is bool:
        return _bool
    if tp is int:
        return _int
    if tp is float:
        return _float
    if tp is str:
        return _str
    if tp is Path:
        return _path
    raise SchemaError("", f"unsupported type {tp!r}")  # pragma: no cover - programming error


def _bool(value: Any, path: str) -> Any:
    if not isinstance(value, bool):
        raise SchemaError(path, f"expected true/false, got {value!r}")
    return value


def _int(value: Any, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(path, f"expected an integer, got {value!r}")
    if not -(2**63) <= value < 2**63:  # what every database column (and numpy int64) can hold
        raise SchemaError(path, f"integer out of the signed 64-bit range: {value}")
    return value


def _float(value: Any, path: str) -> Any:
    if type(value) is float:
        if not math.isfinite(value):
            raise SchemaError(path, "must be a finite number")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(path, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise SchemaError(path, "must be a finite number")
    return float(value)


def _str(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise SchemaError(path, f"expected a string, got {value!r}")
    return value


def _path(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise SchemaError(path, f"expected a path string, got {value!r}")
    return Path(value).expanduser()


_MISSING = object()


def _dataclass_converter(cls: type, strict: bool) -> Converter:
    hints, fields = _fields(cls)
    plan = [(name, _converter(hints[name], strict),
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for name, f in fields.items()]
    allowed = frozenset(fields)

    def load_dataclass(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected a table/object, got {type(value).__name__}")
        if strict and not allowed.issuperset(value):
            unknown = set(value) - allowed
            raise SchemaError(path, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
        kwargs = {}
        for name, conv, required in plan:
            item = value.get(name, _MISSING)
            if item is not _MISSING:
                try:
                    kwargs[name] = conv(item, path)
                except SchemaError:
                    kwargs[name] = conv(item, f"{path}.{name}" if path else name)  # raises with its path
            elif required:
                raise SchemaError(f"{path}.{name}" if path else name, "is required")
        try:
            obj = build(kwargs)
        except (ValueError, TypeError) as exc:  # __post_init__ range checks
            raise SchemaError(path, str(exc)) from None
        return obj

    build = _builder(cls)
    return _fast_loader(cls, strict, hints, fields, load_dataclass) or load_dataclass


# ------------------------------------------------------------------ generated fast path
#
# Decoding a protocol message is on the hub's ingest path (tens of thousands a second).  For a dataclass
# whose fields are plain types, ``_fast_loader`` generates (once per class, like ``dataclasses`` does
# for ``__init__``) straight-line code that accepts the common, well-formed shape: each field of exactly
# the JSON type the generic converter returns unchanged.  Anything else — a wrong type, an ``int`` for a
# ``float``, a missing key, a failing ``__post_init__``, a strict config's unknown key — goes to the
# generic loader above, which converts it or raises the one precise :class:`SchemaError`.  So the
# generic loader stays the single definition of what is valid; the fast path only skips its per-value
# dispatch where the answer is known.  ``tests/test_schema_and_config.py`` compares the two on fuzzed data.

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _fast_check(tp: Any, x: str) -> str | None:
    """A Python expression true iff ``x`` has a form the generic converter returns as it is (copies
    of lists/dicts aside); ``None`` where there is no such cheap test."""
    origin = typing.get_origin(tp)
    if tp is int:
        return f"(type({x}) is int and {_I64_MIN} <= {x} <= {_I64_MAX})"
    if tp is float:
        return f"(type({x}) is float and _isfinite({x}))"
    if tp is str:
        return f"type({x}) is str"
    if tp is bool:
        return f"type({x}) is bool"
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            inner = _fast_check(args[0], x)
            return None if inner is None else f"({x} is None or {inner})"
    return None


def _fast_field(name: str, tp: Any, i: int, strict: bool, env: dict[str, Any]) -> list[str]:
    """Statements that set ``state[name]`` from the local ``x`` or ``return slow(value, path)``."""
    origin = typing.get_origin(tp)
    check = _fast_check(tp, "x")
    if check is not None:
        return [f"if not {check}: return slow(value, path)", f"state[{name!r}] = x"]
    if origin is list and len(typing.get_args(tp)) == 1:
        item = _fast_check(typing.get_args(tp)[0], "e")
        if item is not None:
            return ["if type(x) is not list: return slow(value, path)",
                    "for e in x:", f"    if not {item}: return slow(value, path)",
                    f"state[{name!r}] = x[:]"]
    if origin is dict and len(typing.get_args(tp)) == 2 and typing.get_args(tp)[0] is str:
        item = _fast_check(typing.get_args(tp)[1], "e")
        if item is not None:
            return ["if type(x) is not dict: return slow(value, path)",
                    "for k, e in x.items():", f"    if type(k) is not str or not {item}: return slow(value, path)",
                    f"state[{name!r}] = x.copy()"]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        env[f"members{i}"] = tp._value2member_map_
        return [f"x = members{i}.get(x) if type(x) is str else None",
                "if x is None: return slow(value, path)", f"state[{name!r}] = x"]
    # Any other type: its generic converter (raising SchemaError, which sends the message to ``slow``).
    env[f"conv{i}"] = _converter(tp, strict)
    return [f"state[{name!r}] = conv{i}(x, path)"]


def _fast_loader(cls: type, strict: bool, hints: dict[str, Any], fields: dict[str, dataclasses.Field[Any]],
                 slow: Converter) -> Converter | None:
    """The generated fast path of ``cls`` (see above), or ``None`` where ``_builder`` cannot skip
    ``__init__`` (the generic loader then serves alone)."""
    all_fields = dataclasses.fields(cls)
    init = cls.__init__  # type: ignore[misc]
    if (getattr(getattr(init, "__code__", None), "co_filename", "") != "<string>"
            or len(cls.__dataclass_fields__) != len(all_fields) or any(not f.init for f in all_fields)  # type: ignore[attr-defined]
            or "__slots__" in cls.__dict__ or not cls.__dataclass_params__.init):  # type: ignore[attr-defined]
        return None
    env: dict[str, Any] = {"slow": slow, "new": object.__new__, "cls": cls, "_isfinite": math.isfinite,
                           "MISSING": _MISSING, "allowed": frozenset(fields),
                           "post_init": getattr(cls, "__post_init__", None)}
    lines = ["def fast(value, path):",
             "    if type(value) is not dict: return slow(value, path)"]
    if strict:
        lines.append("    if not allowed.issuperset(value): return slow(value, path)")
    lines += ["    get = value.get", "    obj = new(cls)", "    state = obj.__dict__", "    try:"]
    for i, (name, f) in enumerate(fields.items()):
        lines.append(f"        x = get({name!r}, MISSING)")
        if f.default is not dataclasses.MISSING:
            env[f"default{i}"] = f.default
            missing = f"state[{name!r}] = default{i}"
        elif f.default_factory is not dataclasses.MISSING:
            env[f"factory{i}"] = f.default_factory
            missing = f"state[{name!r}] = factory{i}()"
        else:
            missing = "return slow(value, path)"
        lines += ["        if x is MISSING:", f"            {missing}", "        else:"]
        lines += [f"            {stmt}" for stmt in _fast_field(name, hints[name], i, strict, env)]
    if env["post_init"] is not None:
        lines.append("        post_init(obj)")
    lines += ["    except (ValueError, TypeError):  # SchemaError of a nested converter, __post_init__",
              "        return slow(value, path)", "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - code generated from the dataclass's own field list
    fast: Converter = env["fast"]
    fast.__qualname__ = f"fast_load_{cls.__name__}"
    fast.slow = slow  # type: ignore[attr-defined]  # the generic loader, for tests comparing the two
    return fast


def _builder(cls: type) -> typing.Callable[[dict[str, Any]], Any]:
    """``cls(**kwargs)``, or where that is provably the same, its effect without the generated
    ``__init__``: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, a
    quarter of decoding a message.  Only for dataclasses whose ``__init__`` is the generated one, every
    field an init field (no ``InitVar``, no ``init=False``) and no ``__slots__``; defaults are filled the
    way ``__init__`` fills them and ``__post_init__`` runs as it would."""
    all_fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    fields = dataclasses.fields(cls)
    init = cls.__init__  # type: ignore[misc]
    generated = getattr(getattr(init, "__code__", None), "co_filename", "") == "<string>"
    if (not generated or len(all_fields) != len(fields) or any(not f.init for f in fields)
            or "__slots__" in cls.__dict__ or not cls.__dataclass_params__.init):  # type: ignore[attr-defined]
        return lambda kwargs: cls(**kwargs)
    defaults = [(f.name, f.default, f.default_factory) for f in fields
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    post_init = getattr(cls, "__post_init__", None)
    new = object.__new__

    def build(kwargs: dict[str, Any]) -> Any:
        obj: Any = new(cls)
        state = obj.__dict__
        for name, default, factory in defaults:
            if name not in kwargs:
                state[name] = factory() if default is dataclasses.MISSING else default  # type: ignore[operator]
        state.update(kwargs)
        if post_init is not None:
            post_init(obj)
        return obj

    return build


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Resolved type hints and init fields of a dataclass, computed once per class: resolving string
    annotations is most of the cost of decoding a message otherwise (300 µs → 60 µs per anomaly event)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}


_PLAIN = frozenset({str, int, float, bool, type(None)})


def dump(obj: Any) -> Any:
    """Dataclass → plain JSON/TOML-able data (enums by value, paths as strings)."""
    if type(obj) in _PLAIN:  # most values: the hub's Acks carry up to 1000 ids, agents' events many floats
        return obj
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
