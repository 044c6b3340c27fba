"""Rollout tables: staged rollouts, each device's place in one, and what the hub announced to each device.

``cloud_hub.rollout`` is the one owner of these rows' state (``cloud_hub/rollout/states.py`` holds the
transition tables); the CLI only inserts rollouts and writes operator commands into ``Rollout.command``.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Enum, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.db.models import Base, utcnow


class RolloutState(enum.StrEnum):
    RUNNING = "running"  # waves are being sent and judged
    PAUSED = "paused"  # nothing new is sent (operator, or a gate with on_gate_failure = pause)
    COMPLETED = "completed"  # every wave passed its gates
    ABORTED = "aborted"  # stopped; the wave in flight was sent back to its previous models
    ROLLED_BACK = "rolled_back"  # every device it reached was sent back to its previous model
    SUPERSEDED = "superseded"  # a later rollout took over its devices


class RolloutCommand(enum.StrEnum):
    """Operator intent written by the CLI, carried out by `serve` on its next tick."""

    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"


class DeviceRolloutState(enum.StrEnum):
    QUEUED = "queued"  # in a wave not yet sent
    SENT = "sent"  # signed announcement published on the device's model topic
    VERIFIED = "verified"  # the agent checked signature and hash and staged the model
    ACTIVATED = "activated"  # running it, on the agent's probation
    HEALTHY = "healthy"  # passed probation (agent state committed)
    FAILED = "failed"  # the agent refused it before activation
    ROLLED_BACK = "rolled_back"  # the agent rolled it back, or the hub sent the device back
    TIMED_OUT = "timed_out"  # not healthy within the rollout's wait


class Rollout(Base):
    __tablename__ = "rollouts"
    id: Mapped[int] = mapped_column(primary_key=True)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("bundles.id"))
    version: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    state: Mapped[RolloutState] = mapped_column(Enum(RolloutState, native_enum=False, length=16),
                                                default=RolloutState.RUNNING)
    selector: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {} = every device, else group/profile/tag
    phases: Mapped[list[int]] = mapped_column(JSON, default=list)  # cumulative percentages, last = 100
    wait_s: Mapped[float] = mapped_column(Float, default=600.0)
    max_failure: Mapped[float] = mapped_column(Float, default=0.1)
    max_anomaly_increase: Mapped[float | None] = mapped_column(Float, nullable=True)
    on_gate_failure: Mapped[str] = mapped_column(String(16), default="abort")
    wave: Mapped[int] = mapped_column(Integer, default=0)  # index of the wave in flight
    wave_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    command: Mapped[RolloutCommand | None] = mapped_column(Enum(RolloutCommand, native_enum=False, length=16),
                                                           nullable=True)
    reason: Mapped[str] = mapped_column(String(500), default="")  # why it paused, aborted or was rolled back
    updated_at: Mapped[float] = mapped_column(Float, default=0.0)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class RolloutDevice(Base):
    __tablename__ = "rollout_devices"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    wave: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[DeviceRolloutState] = mapped_column(Enum(DeviceRolloutState, native_enum=False, length=16))
    previous_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # where a revert sends it
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)
    detail: Mapped[str] = mapped_column(String(500), default="")


class DeviceTarget(Base):
    """The announcement the hub last published (retained) on a device's own model topic."""

    __tablename__ = "device_targets"
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None = announcement cleared
    bundle_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # what `serve` sends on its request
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    announced_at: Mapped[float] = mapped_column(Float)
