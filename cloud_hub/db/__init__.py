"""Hub storage: ORM models (`models`), engines (`engine`). Import names from here."""

from cloud_hub.db.engine import init_db, insert_ignoring_duplicates, make_engine, session_factory
from cloud_hub.db.models import (
    NAMING,
    AnomalyEvent,
    Base,
    Bundle,
    Device,
    DeviceRolloutState,
    Heartbeat,
    ModelVersion,
    Rollout,
    RolloutDevice,
    RolloutState,
    StatusChange,
    SyncBatch,
    utcnow,
)

__all__ = [
    "NAMING",
    "AnomalyEvent",
    "Base",
    "Bundle",
    "Device",
    "DeviceRolloutState",
    "Heartbeat",
    "ModelVersion",
    "Rollout",
    "RolloutDevice",
    "RolloutState",
    "StatusChange",
    "SyncBatch",
    "init_db",
    "insert_ignoring_duplicates",
    "make_engine",
    "session_factory",
    "utcnow",
]
