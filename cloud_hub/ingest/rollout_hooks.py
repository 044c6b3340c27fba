"""Today's rollout bookkeeping, called by ingest: ONE function per message kind, moved unchanged from
the former ``cloud_hub/server.py`` so the rollout owner can replace each wholesale.

``apply_status`` runs inside the ingest batch's transaction for every new (not redelivered, not stale)
status; ``serve_model_request`` runs in its own session after the batch commits, because it publishes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.rollout import send_bundle
from shared import protocol as p

log = logging.getLogger("cloud_hub.ingest")


def apply_status(s: Session, device: str, m: p.Status, now: float) -> None:
    """A device's new status: its model columns, and its state in the active rollout."""
    dev = s.get(db.Device, device)
    assert dev is not None
    dev.online = m.state == p.AgentState.ONLINE
    if m.state == p.AgentState.ONLINE:
        dev.model_version, dev.model_state = m.model_version, m.model_state.value
        dev.agent_version, dev.runtime, dev.last_error = m.agent_version, m.runtime, m.error[:500]
    rollout = s.scalar(select(db.Rollout).where(db.Rollout.state == db.RolloutState.ACTIVE)
                       .order_by(db.Rollout.id.desc()))
    if rollout is None:
        return
    if m.model_version == rollout.version:
        _rollout_device(s, rollout.id, device, db.DeviceRolloutState.ACTIVATED, "", now)
    elif m.failed_version == rollout.version and m.rollout_id in (None, rollout.id):
        _rollout_device(s, rollout.id, device, db.DeviceRolloutState.FAILED, m.error, now)


def serve_model_request(s: Session, client: mqtt.Client, default_quantization: str, device: str,
                        m: p.ModelRequest, now: float) -> None:
    """Send the requested bundle's chunks to the device and note the request in its rollout."""
    rollout = s.scalar(select(db.Rollout).where(db.Rollout.version == m.version).order_by(db.Rollout.id.desc()))
    bundle = s.get(db.Bundle, rollout.bundle_id) if rollout else s.scalar(
        select(db.Bundle).where(db.Bundle.version == m.version, db.Bundle.quantization == default_quantization))
    if bundle is None:
        log.warning("%s asked for unknown model version %d", device, m.version)
        return
    archive = Path(bundle.path).read_bytes()
    n = send_bundle(client, device, archive, m.version, bundle.sha256)
    if rollout is not None:
        _rollout_device(s, rollout.id, device, db.DeviceRolloutState.REQUESTED, "", now)
    log.info("sent model v%d to %s in %d chunk(s)", m.version, device, n)


def _rollout_device(s: Session, rollout_id: int, device: str, state: db.DeviceRolloutState,
                    detail: str, now: float) -> None:
    row = s.scalar(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == rollout_id,
                                                  db.RolloutDevice.device_id == device))
    if row is None:
        row = db.RolloutDevice(rollout_id=rollout_id, device_id=device, state=state, updated_at=now)
        s.add(row)
    if row.state != db.DeviceRolloutState.ACTIVATED or state == db.DeviceRolloutState.ACTIVATED:
        row.state, row.updated_at, row.detail = state, now, detail[:500]
