"""Readings as numpy blocks: the one form a reading takes inside the agent.

Sensors send JSON (one object per reading, or columnar ``ts`` + ``features`` + ``values``) on
``edgesentry/<device>/readings``, or ``.npy`` bytes (float64 ``[ts, f1..fn]`` rows in the active
model's feature order) on ``edgesentry/<device>/readings/npy``.  Both decoders return a
:class:`ReadingsBlock`; nothing downstream sees per-reading dicts.  Decoding validates shape, dtype
and finite timestamps; NaN (JSON null) is a missing value; ±inf is refused.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from shared.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_READINGS_FEATURES,
    MAX_READINGS_ROWS,
    PROTOCOL_VERSION,
    Channel,
    ProtocolError,
    Readings,
    RejectReason,
    check_columnar,
    decode_object,
    envelope,
    parse_json,
)

_VALUE_TYPES = {int, float, type(None)}
MAX_NPY_BYTES = 4 * 1024 * 1024  # .npy readings: 10 000 rows of up to ~50 float64 columns


@dataclass(frozen=True)
class ReadingsBlock:
    """``n`` readings: ``ts`` (n,) float64 and ``values`` (n, len(features)) float64, NaN = missing."""

    ts: np.ndarray
    features: tuple[str, ...]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def from_rows(cls, rows: list[tuple[float, dict[str, float | None]]]) -> ReadingsBlock:
        """Per-reading dicts (simple sensors, tests) → a block over the union of their features."""
        names: dict[str, None] = {}
        for _, values in rows:
            names.update(dict.fromkeys(values))
            if len(names) > MAX_READINGS_FEATURES:  # checked before allocating (rows x features)
                raise ValueError(f"readings name more than {MAX_READINGS_FEATURES} distinct features")
        features = tuple(names)
        index = {f: j for j, f in enumerate(features)}
        table = np.full((len(rows), len(features)), np.nan)
        for i, (_, vals) in enumerate(rows):
            for f, v in vals.items():
                if v is not None:
                    table[i, index[f]] = v
        return cls(np.array([t for t, _ in rows], dtype=np.float64), features, table)

    def slice(self, start: int, end: int) -> ReadingsBlock:
        return ReadingsBlock(self.ts[start:end], self.features, self.values[start:end])

    @staticmethod
    def concat(blocks: list[ReadingsBlock]) -> ReadingsBlock:
        """Blocks with the same features → one block."""
        if len(blocks) == 1:
            return blocks[0]
        return ReadingsBlock(np.concatenate([b.ts for b in blocks]), blocks[0].features,
                             np.concatenate([b.values for b in blocks]))


def _schema(detail: str) -> ProtocolError:
    return ProtocolError(RejectReason.SCHEMA, detail[:300])


def decode_readings(payload: bytes | bytearray, max_bytes: int = MAX_MESSAGE_BYTES) -> ReadingsBlock:
    """A JSON ``Readings`` message (either shape) → a block; :class:`ProtocolError` if invalid."""
    data = envelope(parse_json(payload, max_bytes))
    if "values" not in data or data.get("readings"):
        msg: Readings = decode_object(Channel.READINGS, data)
        return _block(msg)
    # Columnar: skip the per-element schema walk; numpy converts the numbers in one pass.
    ts, features, values = data.get("ts"), data.get("features"), data.get("values")
    if not isinstance(ts, list) or not isinstance(features, list) or not isinstance(values, list):
        raise _schema("columnar readings need lists ts, features and values")
    if any(type(v) not in (int, float) for v in ts) or any(not isinstance(r, list) for r in values):
        raise _schema("ts must be numbers and values a list of rows")
    if not {type(v) for r in values for v in r} <= _VALUE_TYPES:
        raise _schema("values must be numbers or null")
    try:
        check_columnar(len(ts), features, len(values), {len(r) for r in values})
        rows = np.array(values, dtype=np.float64).reshape(len(ts), len(features))  # null → NaN
    except (ValueError, TypeError) as exc:
        raise _schema(f"columnar readings: {exc}") from None
    return ReadingsBlock(np.array(ts, dtype=np.float64), tuple(features), rows)


def _block(msg: Readings) -> ReadingsBlock:
    if msg.ts:
        values = np.array(msg.values, dtype=np.float64).reshape(len(msg.ts), len(msg.features))
        return ReadingsBlock(np.array(msg.ts, dtype=np.float64), tuple(msg.features), values)
    try:
        return ReadingsBlock.from_rows([(r.ts, r.values) for r in msg.readings])
    except ValueError as exc:
        raise _schema(str(exc)) from None


def decode_readings_npy(payload: bytes | bytearray, features: list[str] | tuple[str, ...] | None,
                        max_bytes: int = MAX_NPY_BYTES) -> ReadingsBlock:
    """``.npy`` bytes of float64 (n, 1 + f) ``[ts, values...]`` in ``features`` order → a block.

    ``features`` is the active model's feature order; without a model the columns mean nothing and
    the message is refused (``no_model``).  Never unpickles: ``allow_pickle=False``.
    """
    if len(payload) > max_bytes:
        raise ProtocolError(RejectReason.TOO_LARGE, f"{len(payload)} bytes > {max_bytes}")
    if not features:
        raise ProtocolError(RejectReason.NO_MODEL, "plain .npy readings use the active model's feature order; "
                                                   "no model is active (send JSON readings with feature names)")
    buf = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(buf)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(buf)  # header only, no data yet
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with ast/tokenize: any error means garbage
        raise _schema(f"not a .npy array: {type(exc).__name__}: {exc}") from None
    width = len(features) + 1
    if dtype != np.float64 or len(shape) != 2 or shape[1] != width or not 1 <= shape[0] <= MAX_READINGS_ROWS:
        raise _schema(f"expected float64 (1-{MAX_READINGS_ROWS}, {width}) [ts, {', '.join(features)}], "
                      f"got {dtype} {shape}")
    if width - 1 > MAX_READINGS_FEATURES:
        raise _schema("too many features")
    try:
        table = np.load(io.BytesIO(payload), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - a header that passed the checks above; any failure is a bad payload
        raise _schema(f"npy: {type(exc).__name__}: {exc}") from None
    if fortran:
        table = np.ascontiguousarray(table)
    ts, values = table[:, 0], table[:, 1:]
    if not np.isfinite(ts).all():
        raise _schema("timestamps must be finite")
    if np.isinf(values).any():
        raise _schema("values must be finite or NaN (missing)")
    return ReadingsBlock(np.ascontiguousarray(ts), tuple(features), values)


def encode_readings_npy(ts: np.ndarray, values: np.ndarray) -> bytes:
    """The sensor side of the ``readings/npy`` topic: float64 [ts, values...] rows as ``.npy`` bytes."""
    table = np.column_stack([np.asarray(ts, np.float64), np.asarray(values, np.float64)])
    buf = io.BytesIO()
    np.save(buf, table, allow_pickle=False)
    return buf.getvalue()


def encode_readings_columnar(ts: np.ndarray, features: list[str], values: np.ndarray) -> bytes:
    """A columnar JSON ``Readings`` message (NaN → null)."""
    return json.dumps({"v": PROTOCOL_VERSION, "ts": np.asarray(ts, np.float64).tolist(), "features": list(features),
                       "values": with_nulls(values)}, separators=(",", ":"), allow_nan=False).encode()


def with_nulls(table: np.ndarray) -> list[list[float | None]]:
    """A 2-D float array as JSON-ready rows, NaN → null."""
    if not np.isnan(table).any():
        return table.tolist()  # type: ignore[no-any-return]
    return np.where(np.isnan(table), np.array(None, dtype=object), table.astype(object)).tolist()  # type: ignore[no-any-return]
