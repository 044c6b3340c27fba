"""The read queries the CLI and the dashboard share: each takes a session and returns ORM rows or small
dataclasses; callers only format.  One place to index for and to test on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from cloud_hub.db.models import AnomalyEvent, Device, Heartbeat, ModelVersion, StatusChange, SyncBatch
from cloud_hub.db.registry import AnomalyLabel, LabelKind, RetrainDecision
from cloud_hub.db.telemetry import TelemetryRecord
from cloud_hub.db.workers import HubWorker

RECENT_HEARTBEATS = 5


@dataclass(frozen=True)
class DeviceDetail:
    device: Device
    heartbeats: list[Heartbeat]  # newest first


@dataclass
class LabelledAnomaly:
    event: AnomalyEvent
    label: AnomalyLabel | None  # the current label, None = not labelled yet


@dataclass(frozen=True)
class FleetSummary:
    devices: int
    online: int
    provisioned: int
    revoked: int
    anomalies_since: int  # anomaly events with ts >= the ``since`` asked for
    synced_rows: int


def devices(session: Session, group: str | None = None, online: bool | None = None) -> list[Device]:
    """Every device the hub knows (provisioned or seen), by id; optionally one group / only (off)line."""
    query = select(Device).order_by(Device.device_id)
    if group is not None:
        query = query.where(Device.group == group)
    if online is not None:
        query = query.where(Device.online.is_(online))
    return list(session.scalars(query))


def device_detail(session: Session, device_id: str, heartbeats: int = RECENT_HEARTBEATS) -> DeviceDetail | None:
    """One device with its most recent heartbeats; None if the hub has never heard of it."""
    dev = session.get(Device, device_id)
    if dev is None:
        return None
    beats = list(session.scalars(select(Heartbeat).where(Heartbeat.device_id == device_id)
                                 .order_by(Heartbeat.received_at.desc(), Heartbeat.id.desc()).limit(heartbeats)))
    return DeviceDetail(dev, beats)


def _anomaly_filters(query: Select[Any], device: str | None, since: float | None, unlabelled: bool,
                     label: LabelKind | None, min_score: float | None, model_version: int | None) -> Select[Any]:
    if device:
        query = query.where(AnomalyEvent.device_id == device)
    if since is not None:
        query = query.where(AnomalyEvent.ts >= since)
    if unlabelled:
        query = query.where(AnomalyLabel.id.is_(None))
    if label is not None:
        query = query.where(AnomalyLabel.label == label)
    if min_score is not None:
        query = query.where(AnomalyEvent.score >= min_score)
    if model_version is not None:
        query = query.where(AnomalyEvent.model_version == model_version)
    return query


def _with_current_label(query: Any) -> Select[Any]:
    return query.outerjoin(AnomalyLabel, (AnomalyLabel.anomaly_id == AnomalyEvent.id) & AnomalyLabel.current.is_(True))


def anomalies(session: Session, device: str | None = None, since: float | None = None,
              unlabelled: bool = False, limit: int | None = 100,
              label: LabelKind | None = None, *, offset: int = 0, min_score: float | None = None,
              model_version: int | None = None) -> list[LabelledAnomaly]:
    """Anomaly events, newest first, each with its current label (filters: device, ts >= since, only the
    unlabelled ones, or only those currently carrying ``label``, score >= min_score, one model version;
    ``limit``/``offset`` page through them)."""
    query = _anomaly_filters(_with_current_label(select(AnomalyEvent, AnomalyLabel)), device, since, unlabelled,
                             label, min_score, model_version).order_by(AnomalyEvent.ts.desc(), AnomalyEvent.id.desc())
    if limit is not None:
        query = query.limit(limit)
    if offset:
        query = query.offset(offset)
    return [LabelledAnomaly(e, lab) for e, lab in session.execute(query).all()]


def anomaly_count(session: Session, device: str | None = None, since: float | None = None,
                  unlabelled: bool = False, label: LabelKind | None = None, *, min_score: float | None = None,
                  model_version: int | None = None) -> int:
    """How many events :func:`anomalies` would list without a limit."""
    query = _anomaly_filters(_with_current_label(select(func.count(AnomalyEvent.id))), device, since, unlabelled,
                             label, min_score, model_version)
    return int(session.scalar(query) or 0)


def sync_batches(session: Session, since: float | None = None, until: float | None = None,
                 devices: Sequence[str] | None = None) -> list[SyncBatch]:
    """Synced batches overlapping [since, until] (optionally only ``devices``), by device then start time:
    the training-data selection (``cloud_hub.data`` turns them into columns)."""
    query = select(SyncBatch).order_by(SyncBatch.device_id, SyncBatch.start_ts, SyncBatch.id)
    if since is not None:
        query = query.where(SyncBatch.end_ts >= since)
    if until is not None:
        query = query.where(SyncBatch.start_ts <= until)
    if devices is not None:
        query = query.where(SyncBatch.device_id.in_(list(devices)))
    return list(session.scalars(query))


def latest_model_name(session: Session) -> str | None:
    """The detector kind of the newest model version (what `retrain` trains by default)."""
    return session.scalar(select(ModelVersion.name).order_by(ModelVersion.version.desc()).limit(1))


def summary(session: Session, since: float) -> FleetSummary:
    """Counts for a fleet overview (CLI, dashboard): devices, online, credentials, recent anomalies, data."""
    dev = session.execute(select(
        func.count(),
        func.count().filter(Device.online.is_(True)),
        func.count().filter(Device.provisioned_at.is_not(None) & Device.revoked_at.is_(None)),
        func.count().filter(Device.revoked_at.is_not(None)),
    ).select_from(Device)).one()
    recent = session.scalar(select(func.count()).select_from(AnomalyEvent).where(AnomalyEvent.ts >= since))
    rows = session.scalar(select(func.coalesce(func.sum(SyncBatch.rows), 0)))
    return FleetSummary(int(dev[0]), int(dev[1]), int(dev[2]), int(dev[3]), int(recent or 0), int(rows or 0))


def workers(session: Session) -> list[HubWorker]:
    """Every `serve` worker that has run against this database (leader first, then by name)."""
    return list(session.scalars(select(HubWorker).order_by(HubWorker.leader.desc(), HubWorker.name)))


# ------------------------------------------------------------------------ dashboard (cloud_hub/web)
# Bounded (LIMIT, a time window or one device) so a page costs the same with 100k anomaly rows as with 100.

ONLINE_WITHIN_S = 120.0  # a device marked online but silent for longer is shown as "stale"
DEVICE_SORTS = ("device_id", "last_seen", "model_version", "model_state", "profile", "group", "anomalies_24h")


@dataclass(frozen=True)
class DeviceRow:
    device: Device
    anomalies_24h: int
    status: str  # online | stale | offline | revoked


def device_status(dev: Device, now: float) -> str:
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
        select(AnomalyEvent.device_id, func.count())
        .where(AnomalyEvent.ts >= now - 86400).group_by(AnomalyEvent.device_id)).all())
    stmt = select(Device)
    if q:
        stmt = stmt.where(Device.device_id.contains(q, autoescape=True))
    if group:
        stmt = stmt.where(Device.group == group)
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
    return [g for g in s.scalars(select(Device.group).distinct().order_by(Device.group)) if g]


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
    stmt = (select(AnomalyEvent.id, AnomalyEvent.ts, AnomalyEvent.score, AnomalyEvent.threshold,
                   AnomalyEvent.top_features)
            .where(AnomalyEvent.device_id == device, AnomalyEvent.ts >= since)
            .order_by(AnomalyEvent.ts.desc()).limit(limit))
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
    stmt = (select(TelemetryRecord.ts, TelemetryRecord.score_max)
            .where(TelemetryRecord.device_id == device, TelemetryRecord.ts >= since)
            .order_by(TelemetryRecord.ts.desc()).limit(limit))
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
    mv = s.get(ModelVersion, version)
    value = (mv.training or {}).get("threshold") if mv is not None else None
    return float(value) if isinstance(value, int | float) else None


def status_history(s: Session, device: str, limit: int = 50) -> list[StatusChange]:
    """The device's model history: every status change, newest first."""
    stmt = (select(StatusChange).where(StatusChange.device_id == device)
            .order_by(StatusChange.ts.desc()).limit(limit))
    return list(s.scalars(stmt))


def current_labels(s: Session, ids: list[int]) -> dict[int, str]:
    """anomaly id → its current operator label (LabelKind value), for the ids on one page."""
    if not ids:
        return {}
    rows = s.execute(select(AnomalyLabel.anomaly_id, AnomalyLabel.label)
                     .where(AnomalyLabel.current.is_(True), AnomalyLabel.anomaly_id.in_(ids))).all()
    return {int(a): str(getattr(lab, "value", lab)) for a, lab in rows}


def retrain_decisions(s: Session, limit: int = 20) -> list[RetrainDecision]:
    """The newest retrain (and promotion) decisions with their numbers."""
    return list(s.scalars(select(RetrainDecision).order_by(RetrainDecision.id.desc()).limit(limit)))


def models_in_use(s: Session) -> dict[int, int]:
    """Model version → devices running it."""
    rows = s.execute(select(Device.model_version, func.count()).where(Device.model_version.is_not(None))
                     .group_by(Device.model_version)).all()
    return {int(v): int(n) for v, n in rows if v is not None}
