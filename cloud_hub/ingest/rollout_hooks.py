"""Where ingest hands agents' messages to the rollout owner (``cloud_hub.rollout``).

``apply_status`` runs inside the ingest batch's transaction for every new (not redelivered, not stale)
status; ``serve_model_request`` runs in its own session after the batch commits, because it publishes.
"""

from __future__ import annotations

import logging

import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.rollout.announce import archive_of, send_bundle
from cloud_hub.rollout.api import bundle_for
from cloud_hub.rollout.engine import on_status
from shared import protocol as p

log = logging.getLogger("cloud_hub.ingest")


def apply_status(s: Session, device: str, m: p.Status, now: float) -> None:
    """A device's new status: its model columns, and its state in its rollout."""
    dev = s.get(db.Device, device)
    assert dev is not None
    dev.online = m.state == p.AgentState.ONLINE
    if m.state == p.AgentState.ONLINE:
        dev.model_version, dev.model_state = m.model_version, m.model_state.value
        dev.agent_version, dev.runtime, dev.last_error = m.agent_version, m.runtime, m.error[:500]
        on_status(s, device, m, now)


def serve_model_request(s: Session, client: mqtt.Client, default_quantization: str, device: str,
                        m: p.ModelRequest, now: float) -> None:
    """Send the requested bundle's chunks: the one announced to this device if it is that version, else the
    newest rollout's bundle of it, else the default quantization's."""
    bundle = None
    told = s.get(db.DeviceTarget, device)
    if told is not None and told.version == m.version and told.bundle_id is not None:
        bundle = s.get(db.Bundle, told.bundle_id)
    if bundle is None:
        rollout = s.scalar(select(db.Rollout).where(db.Rollout.version == m.version).order_by(db.Rollout.id.desc()))
        bundle = s.get(db.Bundle, rollout.bundle_id) if rollout else bundle_for(s, m.version, default_quantization)
    if bundle is None:
        log.warning("%s asked for unknown model version %d", device, m.version)
        return
    a = archive_of(s, bundle)
    n = send_bundle(client, device, a.data, a.version, a.sha256)
    log.info("sent model v%d to %s in %d chunk(s)", m.version, device, n)
