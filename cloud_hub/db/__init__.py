"""Hub storage: ORM models (`models`, `registry`), engines (`engine`), schema migrations (`migrate`),
the read queries CLI and dashboard share (`queries`). Import names from here."""

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
    Heartbeat,
    ModelVersion,
    StatusChange,
    SyncBatch,
    utcnow,
)
from cloud_hub.db.registry import (
    AnomalyLabel,
    Champion,
    LabelKind,
    ModelLineage,
    RetrainDecision,
    RetrainOutcome,
    RetrainTrigger,
)
from cloud_hub.db.rollouts import (
    DeviceRolloutState,
    DeviceTarget,
    Rollout,
    RolloutCommand,
    RolloutDevice,
    RolloutState,
)
from cloud_hub.db.telemetry import TelemetryRecord
from cloud_hub.db.workers import HubWorker

__all__ = [
    "HubWorker",
    "TelemetryRecord",
    "RetrainTrigger",
    "RetrainOutcome",
    "RetrainDecision",
    "ModelLineage",
    "LabelKind",
    "Champion",
    "AnomalyLabel",
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
    "dispose_engines",
    "engine_for",
    "insert_ignoring_duplicates",
    "make_engine",
    "session_factory",
    "utcnow",
]
