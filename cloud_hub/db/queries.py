"""The read queries the CLI and the dashboard share: each takes a session and returns ORM rows or small
dataclasses; callers only format.  One place to index for and to test on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub.db.models import AnomalyEvent, Device, Heartbeat, ModelVersion, SyncBatch
from cloud_hub.db.registry import AnomalyLabel, LabelKind
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


def anomalies(session: Session, device: str | None = None, since: float | None = None,
              unlabelled: bool = False, limit: int | None = 100,
              label: LabelKind | None = None) -> list[LabelledAnomaly]:
    """Anomaly events, newest first, each with its current label (filters: device, ts >= since, only the
    unlabelled ones, or only those currently carrying ``label``)."""
    query = (select(AnomalyEvent, AnomalyLabel)
             .outerjoin(AnomalyLabel, (AnomalyLabel.anomaly_id == AnomalyEvent.id) & AnomalyLabel.current.is_(True))
             .order_by(AnomalyEvent.ts.desc(), AnomalyEvent.id.desc()))
    if device:
        query = query.where(AnomalyEvent.device_id == device)
    if since is not None:
        query = query.where(AnomalyEvent.ts >= since)
    if unlabelled:
        query = query.where(AnomalyLabel.id.is_(None))
    if label is not None:
        query = query.where(AnomalyLabel.label == label)
    if limit is not None:
        query = query.limit(limit)
    return [LabelledAnomaly(e, lab) for e, lab in session.execute(query).all()]


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
