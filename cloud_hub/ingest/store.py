"""Message → rows, written in ONE transaction per batch, idempotently on the agents' durable ids.

Anomaly events (device, event_id), sync batches (device, batch_id) and status changes (device, msg_id)
are inserted with ``ON CONFLICT DO NOTHING``: a redelivered message stores nothing new, yet its id is
acknowledged again so the agent can forget it.  Telemetry is applied and its ``msg_id`` acknowledged;
heartbeats are stored but not durable (no id, no acknowledgement).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.data import npy_bytes
from cloud_hub.ingest.batching import Inbound
from cloud_hub.ingest.rollout_hooks import apply_status
from shared import protocol as p


@dataclass
class StoreResult:
    """What one transaction did: ids to acknowledge per device, rows stored and duplicates skipped."""

    acked: dict[str, list[str]] = field(default_factory=dict)
    stored: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)

    def ack(self, device: str, durable_id: str) -> None:
        self.acked.setdefault(device, []).append(durable_id)

    def merge(self, other: StoreResult) -> None:
        for device, ids in other.acked.items():
            self.acked.setdefault(device, []).extend(ids)
        self.stored.update(other.stored)
        self.duplicates.update(other.duplicates)


def write(s: Session, items: Sequence[Inbound]) -> StoreResult:
    """Store ``items`` in the session's transaction (the caller commits). Model requests are not here."""
    dialect = s.get_bind().dialect.name
    result = StoreResult()
    _touch_devices(s, dialect, items)
    by_channel: dict[p.Channel, list[Inbound]] = {}
    for it in items:
        by_channel.setdefault(it.channel, []).append(it)
    _insert_keyed(s, db.AnomalyEvent, "event_id", by_channel.get(p.Channel.ANOMALY, []), ANOMALY_COLUMNS,
                  _anomaly_row, result)
    _insert_keyed(s, db.SyncBatch, "batch_id", by_channel.get(p.Channel.SYNC, []), SYNC_COLUMNS, _sync_row, result)
    telemetry = by_channel.get(p.Channel.TELEMETRY, [])
    if telemetry:
        rows = {(it.device, _telemetry_id(it.message)): _telemetry_row(it) for it in telemetry}
        new = _insert_many(s, db.TelemetryRecord, TELEMETRY_COLUMNS, list(rows.values()))
        result.stored[p.Channel.TELEMETRY.value] += new
        result.duplicates[p.Channel.TELEMETRY.value] += len(telemetry) - new
    heartbeats = by_channel.get(p.Channel.HEARTBEAT, [])
    if heartbeats:
        s.execute(insert(_table(db.Heartbeat)), [_heartbeat_row(it) for it in heartbeats])
        result.stored[p.Channel.HEARTBEAT.value] += len(heartbeats)
    # Device state follows the order messages arrived in.
    for it in items:
        if it.channel == p.Channel.HEARTBEAT:
            _apply_heartbeat(s, it.device, it.message)
        elif it.channel == p.Channel.STATUS:
            _status(s, dialect, it, result)
        elif it.channel == p.Channel.TELEMETRY:
            _apply_telemetry(s, it.device, it.message)
            if it.message.msg_id:
                result.ack(it.device, it.message.msg_id)
    return result


def _table(model: type[db.Base]) -> Table:
    return model.__table__  # type: ignore[return-value]


def _touch_devices(s: Session, dialect: str, items: Sequence[Inbound]) -> None:
    last: dict[str, float] = {}
    for it in items:
        last[it.device] = max(last.get(it.device, 0.0), it.received_at)
    if not last:
        return
    # Sorted: concurrent workers lock device rows in the same order, so they wait instead of deadlocking.
    ordered = sorted(last.items())
    devices = _table(db.Device)
    s.execute(db.insert_ignoring_duplicates(dialect, devices),  # Core: it fills the columns' Python defaults
              [{"device_id": d, "first_seen": t, "last_seen": t, "online": True} for d, t in ordered])
    s.execute(update(devices).where(devices.c.device_id == bindparam("d")).values(last_seen=bindparam("t")),
              [{"d": d, "t": t} for d, t in ordered])


def _insert_keyed(s: Session, model: type[db.Base], key: str, items: list[Inbound], columns: tuple[str, ...],
                  to_row: Callable[[Inbound], tuple[Any, ...]], result: StoreResult) -> None:
    """Insert rows unique on (device_id, key), skipping those already stored; acknowledge all of them."""
    if not items:
        return
    rows: dict[tuple[str, str], tuple[Any, ...]] = {}
    acked = result.acked
    for it in items:
        durable_id = getattr(it.message, key)
        device_ids = acked.get(it.device)
        if device_ids is None:
            device_ids = acked[it.device] = []
        device_ids.append(durable_id)
        if (it.device, durable_id) not in rows:
            rows[(it.device, durable_id)] = to_row(it)
    channel = items[0].channel.value
    new = _insert_many(s, model, columns, list(rows.values()))
    result.stored[channel] += new
    result.duplicates[channel] += len(items) - new


def _insert_many(s: Session, model: type[db.Base], columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> int:
    """``INSERT … ON CONFLICT DO NOTHING`` of many rows through the driver's ``executemany``; returns how
    many were new.  The statement is SQLAlchemy's, compiled once per dialect, table and columns with
    POSITIONAL parameters, so the row tuples (JSON columns already encoded, see :func:`_json`) go to the
    driver as they are: no per-row processing in Python (most of the cost of a batch once), and no
    per-row dict for the driver to look parameters up in."""
    conn = s.connection()
    res = conn.exec_driver_sql(_compiled(conn.dialect, model, columns), rows)  # type: ignore[arg-type]
    return res.rowcount if res.rowcount is not None and res.rowcount >= 0 else len(rows)


@functools.cache
def _compiled(dialect: Dialect, model: type[db.Base], columns: tuple[str, ...]) -> str:
    if not dialect.positional:  # psycopg's pyformat: its driver takes %s parameters from tuples as well
        dialect = type(dialect)(paramstyle="format")  # type: ignore[call-arg]
    compiled = db.insert_ignoring_duplicates(dialect.name, _table(model)).compile(dialect=dialect,
                                                                                 column_keys=list(columns))
    if tuple(compiled.positiontup or ()) != columns:  # the row builders' tuples follow ``columns``
        raise AssertionError(f"{model.__name__}: columns {columns} compile as {compiled.positiontup}")
    return compiled.string


def _json(value: Any) -> str:
    """A JSON column's value as the text the driver stores (encoded once, by orjson)."""
    return orjson.dumps(value).decode()


# Row tuples in the order of these columns (the table's own order: ``_compiled`` checks it).
ANOMALY_COLUMNS = ("device_id", "event_id", "ts", "detected_at", "received_at", "score", "threshold", "model_version",
                   "top_features", "attribution", "likelihood")
SYNC_COLUMNS = ("device_id", "batch_id", "received_at", "start_ts", "end_ts", "rows", "features", "data", "flags",
                "model_version")
TELEMETRY_COLUMNS = ("device_id", "msg_id", "ts", "received_at", "interval_s", "scored", "score_mean", "score_max",
                     "flagged", "model_version")


def _anomaly_row(it: Inbound) -> tuple[Any, ...]:
    m: p.AnomalyEvent = it.message
    return (it.device, m.event_id, m.ts, m.detected_at, it.received_at, m.score, m.threshold, m.model_version,
            _json(m.top_features), _json(m.attribution), m.likelihood)


def _sync_row(it: Inbound) -> tuple[Any, ...]:
    m: p.SyncBatch = it.message
    data = m.table()  # the one decoder: JSON rows or packed
    flags = np.array(m.flags or [0] * len(data), dtype=np.int8)
    return (it.device, m.batch_id, it.received_at, float(data[:, 0].min()), float(data[:, 0].max()), len(data),
            _json(m.features), npy_bytes(data), npy_bytes(flags), m.model_version)


def _telemetry_id(m: p.Telemetry) -> str:
    return m.msg_id or f"t:{m.ts!r}"


def _telemetry_row(it: Inbound) -> tuple[Any, ...]:
    m: p.Telemetry = it.message
    return (it.device, _telemetry_id(m), m.ts, it.received_at, m.interval_s, m.scored, m.score_mean, m.score_max,
            m.flagged, m.model_version)


def _heartbeat_row(it: Inbound) -> dict[str, Any]:
    m: p.Heartbeat = it.message
    return {"device_id": it.device, "ts": m.ts, "received_at": it.received_at, "seq": m.seq,
            "model_version": m.model_version, "readings_received": m.readings_received,
            "readings_scored": m.readings_scored, "anomalies": m.anomalies, "rejected": m.rejected,
            "queue_depth": m.queue_depth, "outbox_depth": m.outbox_depth, "outbox_bytes": m.outbox_bytes,
            "outbox_dropped": dict(m.outbox_dropped)}


def _apply_heartbeat(s: Session, device: str, m: p.Heartbeat) -> None:
    dev = s.get(db.Device, device)
    assert dev is not None  # _touch_devices inserted it
    dev.online = True
    dev.model_version = m.model_version
    dev.readings_scored = m.readings_scored
    dev.outbox_depth, dev.outbox_bytes, dev.outbox_dropped = m.outbox_depth, m.outbox_bytes, dict(m.outbox_dropped)


def _apply_telemetry(s: Session, device: str, m: p.Telemetry) -> None:
    dev = s.get(db.Device, device)
    assert dev is not None
    dev.readings_scored = m.readings_scored_total


def _status(s: Session, dialect: str, it: Inbound, result: StoreResult) -> None:
    """Keep every status once (history); apply it unless a newer one is already stored."""
    m: p.Status = it.message
    newest = s.scalar(select(func.max(db.StatusChange.ts)).where(db.StatusChange.device_id == it.device))
    row = {"device_id": it.device, "msg_id": m.msg_id or f"will:{m.ts!r}", "ts": m.ts,
           "received_at": it.received_at, "state": m.state.value, "model_state": m.model_state.value,
           "model_version": m.model_version, "failed_version": m.failed_version, "rollout_id": m.rollout_id,
           "error": m.error[:500]}
    # RETURNING, not rowcount: psycopg reports -1 for this statement, and a redelivered status must not
    # be applied again.
    new_id = s.scalar(db.insert_ignoring_duplicates(dialect, db.StatusChange.__table__)
                      .returning(db.StatusChange.id), row)
    if new_id is None:
        result.duplicates[p.Channel.STATUS.value] += 1
    else:
        result.stored[p.Channel.STATUS.value] += 1
        if newest is None or m.ts >= newest:
            apply_status(s, it.device, m, it.received_at)
    if m.msg_id:
        result.ack(it.device, m.msg_id)
