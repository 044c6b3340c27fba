"""Agents' telemetry: score statistics per interval (default 10 s), kept so the dashboard can draw a
device's score line under its threshold, not only the anomalies above it."""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.db.models import Base


class TelemetryRecord(Base):
    __tablename__ = "telemetry"
    __table_args__ = (UniqueConstraint("device_id", "msg_id"), Index("ix_telemetry_device_id_ts", "device_id", "ts"))
    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    msg_id: Mapped[str] = mapped_column(String(80))  # the agent's durable id; "t:<ts>" if it sent none
    ts: Mapped[float] = mapped_column(Float)  # end of the interval (agent clock)
    received_at: Mapped[float] = mapped_column(Float)
    interval_s: Mapped[float] = mapped_column(Float)
    scored: Mapped[int] = mapped_column(Integer)
    score_mean: Mapped[float] = mapped_column(Float)
    score_max: Mapped[float] = mapped_column(Float)
    # Windows flagged and the model that scored them (the rollout's anomaly-rate gate); NULL from older agents.
    flagged: Mapped[int | None] = mapped_column(Integer)
    model_version: Mapped[int | None] = mapped_column(Integer)
