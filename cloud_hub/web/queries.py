"""Read queries behind the dashboard pages (kept beside ``cloud_hub.db.queries`` until they merge there).

Every query is bounded (``LIMIT``, a time window or one device) so a page costs the same with 100k
anomaly rows as with 100: the fleet page reads one row per device plus one grouped count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from cloud_hub import db

ONLINE_WITHIN_S = 120.0  # a device marked online but silent for longer is shown as "stale"
DEVICE_SORTS = ("device_id", "last_seen", "model_version", "model_state", "profile", "group", "anomalies_24h")


@dataclass(frozen=True)
class DeviceRow:
    device: db.Device
    anomalies_24h: int
    status: str  # online | stale | offline | revoked


def device_status(dev: db.Device, now: float) -> str:
    if dev.revoked_at is not None:
        return "revoked"
    if not dev.online:
        return "offline"
    return "online" if now - dev.last_seen <= ONLINE_WITHIN_S else "stale"


def fleet(s: Session, *, q: str = "", group: str = "", status: str = "", sort: str = "device_id",
          desc: bool = False, now: float | None = None) -> list[DeviceRow]:
    """Devices with their anomaly count over the last 24 h, filtered and sorted."""
    now = time.time() if now is None else now
    counts = dict(s.execute(
        select(db.AnomalyEvent.device_id, func.count())
        .where(db.AnomalyEvent.ts >= now - 86400).group_by(db.AnomalyEvent.device_id)).all())
    stmt = select(db.Device)
    if q:
        stmt = stmt.where(db.Device.device_id.contains(q, autoescape=True))
    if group:
        stmt = stmt.where(db.Device.group == group)
    rows = [DeviceRow(d, int(counts.get(d.device_id, 0)), device_status(d, now)) for d in s.scalars(stmt)]
    if status:
        rows = [r for r in rows if r.status == status]
    key = sort if sort in DEVICE_SORTS else "device_id"

    def sort_key(r: DeviceRow) -> tuple[bool, Any]:
        value = r.anomalies_24h if key == "anomalies_24h" else getattr(r.device, key)
        return (value is None, value if value is not None else 0)

    rows.sort(key=sort_key, reverse=desc)
    return rows


def groups(s: Session) -> list[str]:
    return [g for g in s.scalars(select(db.Device.group).distinct().order_by(db.Device.group)) if g]


def anomalies_query(*, device: str = "", since: float | None = None, min_score: float | None = None,
                    model_version: int | None = None, label: str = "") -> Select[Any]:
    """Anomaly events matching the filters; ``label`` is a LabelKind value or "unlabelled"."""
    stmt = select(db.AnomalyEvent)
    if label:
        current = select(db.AnomalyLabel.anomaly_id).where(db.AnomalyLabel.current.is_(True))
        if label == "unlabelled":
            stmt = stmt.where(db.AnomalyEvent.id.not_in(current))
        else:
            stmt = stmt.where(db.AnomalyEvent.id.in_(current.where(db.AnomalyLabel.label == db.LabelKind(label))))
    if device:
        stmt = stmt.where(db.AnomalyEvent.device_id == device)
    if since is not None:
        stmt = stmt.where(db.AnomalyEvent.ts >= since)
    if min_score is not None:
        stmt = stmt.where(db.AnomalyEvent.score >= min_score)
    if model_version is not None:
        stmt = stmt.where(db.AnomalyEvent.model_version == model_version)
    return stmt


def anomalies(s: Session, *, limit: int = 100, offset: int = 0, **filters: Any) -> list[db.AnomalyEvent]:
    """Newest first, one page."""
    stmt = anomalies_query(**filters).order_by(db.AnomalyEvent.ts.desc(), db.AnomalyEvent.id.desc())
    return list(s.scalars(stmt.limit(limit).offset(offset)))


def anomaly_count(s: Session, **filters: Any) -> int:
    sub = anomalies_query(**filters).with_only_columns(db.AnomalyEvent.id).subquery()
    return int(s.scalar(select(func.count()).select_from(sub)) or 0)


@dataclass(frozen=True)
class ScorePoint:
    id: int
    ts: float
    score: float
    threshold: float
    top_feature: str


def score_points(s: Session, device: str, since: float, buckets: int = 600, limit: int = 100_000
                 ) -> tuple[int, list[ScorePoint]]:
    """(events since ``since``, at most ``buckets`` of them for the timeline): the highest score of each
    time bucket, so a device with 20,000 events still draws one marker per pixel column at most."""
    stmt = (select(db.AnomalyEvent.id, db.AnomalyEvent.ts, db.AnomalyEvent.score, db.AnomalyEvent.threshold,
                   db.AnomalyEvent.top_features)
            .where(db.AnomalyEvent.device_id == device, db.AnomalyEvent.ts >= since)
            .order_by(db.AnomalyEvent.ts.desc()).limit(limit))
    rows = s.execute(stmt).all()
    if not rows:
        return 0, []
    t0, t1 = rows[-1].ts, rows[0].ts
    width = max((t1 - t0) / buckets, 1e-9)
    best: dict[int, Any] = {}
    for r in rows:
        b = int((r.ts - t0) / width)
        if b not in best or r.score > best[b].score:
            best[b] = r
    points = [ScorePoint(r.id, r.ts, r.score, r.threshold, (r.top_features or [""])[0])
              for r in sorted(best.values(), key=lambda r: r.ts)]
    return len(rows), points


def telemetry_line(s: Session, device: str, since: float, buckets: int = 600, limit: int = 50_000
                   ) -> list[tuple[float, float]]:
    """The device's interval score maxima since ``since`` (telemetry), at most one point per time bucket
    (the bucket's maximum), oldest first."""
    stmt = (select(db.TelemetryRecord.ts, db.TelemetryRecord.score_max)
            .where(db.TelemetryRecord.device_id == device, db.TelemetryRecord.ts >= since)
            .order_by(db.TelemetryRecord.ts.desc()).limit(limit))
    rows = s.execute(stmt).all()
    if not rows:
        return []
    t0, t1 = rows[-1][0], rows[0][0]
    width = max((t1 - t0) / buckets, 1e-9)
    best: dict[int, tuple[float, float]] = {}
    for ts, value in rows:
        b = int((ts - t0) / width)
        if b not in best or value > best[b][1]:
            best[b] = (ts, value)
    return sorted(best.values())


def model_threshold(s: Session, version: int | None) -> float | None:
    """The threshold a model version was trained with (before any per-device threshold_scale)."""
    if version is None:
        return None
    mv = s.get(db.ModelVersion, version)
    value = (mv.training or {}).get("threshold") if mv is not None else None
    return float(value) if isinstance(value, int | float) else None


def status_history(s: Session, device: str, limit: int = 50) -> list[db.StatusChange]:
    """The device's model history: every status change, newest first."""
    stmt = (select(db.StatusChange).where(db.StatusChange.device_id == device)
            .order_by(db.StatusChange.ts.desc()).limit(limit))
    return list(s.scalars(stmt))


def heartbeats(s: Session, device: str, since: float, limit: int = 2000) -> list[db.Heartbeat]:
    stmt = (select(db.Heartbeat).where(db.Heartbeat.device_id == device, db.Heartbeat.ts >= since)
            .order_by(db.Heartbeat.ts.desc()).limit(limit))
    return sorted(s.scalars(stmt), key=lambda h: h.ts)


def current_labels(s: Session, ids: list[int]) -> dict[int, str]:
    """anomaly id → its current operator label (LabelKind value), for the ids on one page."""
    if not ids:
        return {}
    rows = s.execute(select(db.AnomalyLabel.anomaly_id, db.AnomalyLabel.label)
                     .where(db.AnomalyLabel.current.is_(True), db.AnomalyLabel.anomaly_id.in_(ids))).all()
    return {int(a): str(getattr(lab, "value", lab)) for a, lab in rows}


def retrain_decisions(s: Session, limit: int = 20) -> list[db.RetrainDecision]:
    """The newest retrain (and promotion) decisions with their numbers."""
    return list(s.scalars(select(db.RetrainDecision).order_by(db.RetrainDecision.id.desc()).limit(limit)))


def models_in_use(s: Session) -> dict[int, int]:
    """Model version → devices running it."""
    rows = s.execute(select(db.Device.model_version, func.count()).where(db.Device.model_version.is_not(None))
                     .group_by(db.Device.model_version)).all()
    return {int(v): int(n) for v, n in rows if v is not None}
