"""Registry tables: operator labels on anomalies, model lineage, champions per group, retrain decisions.

Labels are kept as a history (a relabel adds a row and marks the previous one not current), so what an
operator said, when and who, is never overwritten.  Lineage has one row per model version; a champion one
row per device group ("" = devices without a group); every retrain decision one row with its numbers.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import JSON, Enum, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.db.models import Base


class LabelKind(enum.StrEnum):
    """What an operator says an anomaly event was."""

    TRUE_POSITIVE = "true_positive"
    FALSE_POSITIVE = "false_positive"


class AnomalyLabel(Base):
    __tablename__ = "anomaly_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    anomaly_id: Mapped[int] = mapped_column(ForeignKey("anomaly_events.id"), index=True)
    label: Mapped[LabelKind] = mapped_column(Enum(LabelKind, native_enum=False, length=32))
    note: Mapped[str] = mapped_column(String(1000), default="")
    labelled_at: Mapped[float] = mapped_column(Float)
    labelled_by: Mapped[str] = mapped_column(String(64), default="")
    current: Mapped[bool] = mapped_column(default=True, index=True)  # False once relabelled


class ModelLineage(Base):
    """Where a model version came from: its data, settings, parent, and metrics on a held-out recent slice."""

    __tablename__ = "model_lineage"
    version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"), primary_key=True)
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device_group: Mapped[str] = mapped_column(String(64), default="")
    # {"source", "devices", "start_ts", "end_ts", "rows", "excluded_rows", "fp_stretches", "tp_stretches"}
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # model name + TrainingConfig
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # held-out evaluation (evaluate.py)
    created_at: Mapped[float] = mapped_column(Float)


class Champion(Base):
    """The version a device group should run; promotions and manual `models promote` replace it."""

    __tablename__ = "champions"
    device_group: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(ForeignKey("model_versions.version"))
    promoted_at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(500), default="")


class RetrainTrigger(enum.StrEnum):
    """Why a retrain ran."""

    MANUAL = "manual"  # `cloud-hub retrain`
    SCHEDULE = "schedule"  # [retrain] every_hours elapsed
    NEW_DATA = "new_data"  # [retrain] new_windows synced since the last retrain
    DATA_DRIFT = "data_drift"  # synced readings moved away from the champion's training data
    ANOMALY_RATE = "anomaly_rate"  # the group's anomaly rate rose above its baseline
    PROMOTE = "promote"  # `cloud-hub models promote` (no training)


class RetrainOutcome(enum.StrEnum):
    PROMOTED = "promoted"  # challenger better by the margin → champion, rollout started
    KEPT_CHAMPION = "kept_champion"  # challenger not better by the margin
    FAILED = "failed"  # training/evaluation error (the message is stored)


class RetrainDecision(Base):
    """One retrain (or manual promotion) and the numbers it was decided on."""

    __tablename__ = "retrain_decisions"
    id: Mapped[int] = mapped_column(primary_key=True)
    device_group: Mapped[str] = mapped_column(String(64), default="", index=True)
    trigger: Mapped[RetrainTrigger] = mapped_column(Enum(RetrainTrigger, native_enum=False, length=32))
    trigger_detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float] = mapped_column(Float)
    outcome: Mapped[RetrainOutcome] = mapped_column(Enum(RetrainOutcome, native_enum=False, length=32))
    champion_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    challenger_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    margin: Mapped[float] = mapped_column(Float, default=0.0)
    # {"champion": {...}, "challenger": {...}, "improvement": x, "eval_windows": n, ...}
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(String(1000), default="")
