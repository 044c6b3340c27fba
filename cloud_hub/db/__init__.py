"""Hub storage: ORM models (`models`), engines (`engine`), schema migrations (`migrate`), the read
queries CLI and dashboard share (`queries`). Import names from here."""

from cloud_hub.db.engine import (
    dispose_engines,
    engine_for,
    insert_ignoring_duplicates,
    make_engine,
    session_factory,
)
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
    "dispose_engines",
    "engine_for",
    "insert_ignoring_duplicates",
    "make_engine",
    "session_factory",
    "utcnow",
]
