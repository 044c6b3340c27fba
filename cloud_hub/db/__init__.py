"""Hub storage: ORM models (`models`), engines (`engine`). Import names from here."""

from cloud_hub.db.engine import init_db, insert_ignoring_duplicates, make_engine, session_factory
from cloud_hub.db.models import (
    NAMING,
    AnomalyEvent,
    Base,
    Bundle,
    Device,
    Heartbeat,
    ModelVersion,
    StatusChange,
    SyncBatch,
    utcnow,
)
from cloud_hub.db.rollouts import (
    DeviceRolloutState,
    DeviceTarget,
    Rollout,
    RolloutCommand,
    RolloutDevice,
    RolloutState,
)

__all__ = [
    "NAMING",
    "AnomalyEvent",
    "Base",
    "Bundle",
    "Device",
    "DeviceRolloutState",
    "DeviceTarget",
    "Heartbeat",
    "ModelVersion",
    "Rollout",
    "RolloutCommand",
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
