"""ORM models of the hub's database (SQLAlchemy 2.0 style), one metadata with a naming convention."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Device(Base):
    __tablename__ = "devices"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    online: Mapped[bool] = mapped_column(default=False)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_state: Mapped[str] = mapped_column(String(16), default="none")
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    runtime: Mapped[str] = mapped_column(String(32), default="")
    last_error: Mapped[str] = mapped_column(String(500), default="")
    readings_scored: Mapped[int] = mapped_column(Integer, default=0)
    # Provisioning (cloud_hub/fleet): a device may connect to a secured broker once provisioned and not revoked.
    profile: Mapped[str] = mapped_column(String(64), default="")
    group: Mapped[str] = mapped_column("device_group", String(64), default="", index=True)
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    password_hash: Mapped[str] = mapped_column(String(200), default="")
    provisioned_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Unguessable MQTT client id in the device's agent.toml: Mosquitto does not bind client ids to accounts,
    # so a device that knew another's id could take over (and drop) that client's session.
    mqtt_client_id: Mapped[str] = mapped_column(String(128), default="")
    # The agent's durable outbox as of its latest heartbeat: reports not yet acknowledged, their bytes, and
    # reports dropped because the outbox was full, by kind (anomaly/status/telemetry/sync), since install.
    outbox_depth: Mapped[int] = mapped_column(Integer, default=0)
    outbox_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    outbox_dropped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)


class Heartbeat(Base):
    __tablename__ = "heartbeats"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    seq: Mapped[int] = mapped_column(Integer)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    readings_received: Mapped[int] = mapped_column(Integer, default=0)
    readings_scored: Mapped[int] = mapped_column(Integer)
    anomalies: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    queue_depth: Mapped[int] = mapped_column(Integer)
    outbox_depth: Mapped[int] = mapped_column(Integer, default=0)
    outbox_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    outbox_dropped: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)


class AnomalyEvent(Base):
    __tablename__ = "anomaly_events"
    # (device_id, ts): the dashboard's per-device counts and timelines read only this index; lookups by
    # device alone use it or the unique constraint's index.
    __table_args__ = (UniqueConstraint("device_id", "event_id"), Index("ix_anomaly_events_device_id_ts", "device_id", "ts"))
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float] = mapped_column(Float, index=True)
    detected_at: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    model_version: Mapped[int] = mapped_column(Integer)
    top_features: Mapped[list[str]] = mapped_column(JSON, default=list)
    attribution: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    likelihood: Mapped[float] = mapped_column(Float, default=0.0)


class SyncBatch(Base):
    """A batch of raw readings uploaded by an agent: float64 .npy bytes [ts, features...] + flags."""

    __tablename__ = "sync_batches"
    __table_args__ = (UniqueConstraint("device_id", "batch_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))  # indexed by the unique (device_id, …) constraint
    batch_id: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float)
    start_ts: Mapped[float] = mapped_column(Float)
    end_ts: Mapped[float] = mapped_column(Float)
    rows: Mapped[int] = mapped_column(Integer)
    features: Mapped[list[str]] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    flags: Mapped[bytes] = mapped_column(LargeBinary)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(500))
    artifacts_dir: Mapped[str] = mapped_column(String(1000))
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Bundle(Base):
    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("version", "quantization"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    quantization: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(1000))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    profile: Mapped[str] = mapped_column(String(64), default="")  # firmware profile it was exported for, if any


# ------------------------------------------------------------------------------------- ingest (hub)


class StatusChange(Base):
    """Every status an agent reported, stored once per durable ``msg_id``: the hub keeps the history of
    model states, including why a bundle was refused or rolled back (``error``)."""

    __tablename__ = "status_changes"
    __table_args__ = (UniqueConstraint("device_id", "msg_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))  # indexed by the unique (device_id, …) constraint
    msg_id: Mapped[str] = mapped_column(
        String(80)
    )  # the agent's msg_id; "will:<ts>" for the broker's last will
    ts: Mapped[float] = mapped_column(Float)
    received_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    model_state: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failed_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str] = mapped_column(String(500), default="")
