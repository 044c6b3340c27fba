"""``serve`` workers: who is running, which one leads, what each stored (operators' and tests' view)."""

from __future__ import annotations

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cloud_hub.db.models import Base


class HubWorker(Base):
    """One row per ``serve`` worker name, refreshed every few seconds while it runs."""

    __tablename__ = "hub_workers"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)  # w0, w1, … / --worker NAME; a lone serve: its client id
    host: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int] = mapped_column(Integer)
    client_id: Mapped[str] = mapped_column(String(128), default="")  # its MQTT session
    started_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    leader: Mapped[bool] = mapped_column(default=False)
    stored: Mapped[int] = mapped_column(Integer, default=0)  # new rows since it started
    duplicates: Mapped[int] = mapped_column(Integer, default=0)  # redeliveries it found already stored
