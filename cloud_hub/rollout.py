"""Model rollouts: announce a signed bundle to the fleet and track which agents activated it.

Agents pull: a rollout publishes a retained announcement on ``edgesentry/fleet/model``; each agent
asks for the archive on its own ``model/request`` topic and ``cloud-hub serve`` answers with chunks
on that device's ``model/chunk`` topic.  Agents that are offline catch up from the retained message.
"""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.home import HubHome
from shared.mqtt import connect, make_client
from shared.protocol import (
    CHUNK_BYTES,
    PROTOCOL_VERSION,
    Channel,
    ModelAnnouncement,
    ModelChunk,
    ModelState,
    ProtocolError,
    Status,
    decode,
    device_topic,
    encode,
    fleet_model_topic,
    parse_topic,
    subscription,
)
from shared.signing import sign_announcement


def chunks(archive: bytes, version: int, sha256: str) -> list[ModelChunk]:
    total = max(1, math.ceil(len(archive) / CHUNK_BYTES))
    return [
        ModelChunk(v=PROTOCOL_VERSION, version=version, sha256=sha256, index=i, total=total,
                   data=base64.b64encode(archive[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]).decode())
        for i in range(total)
    ]


def send_bundle(client: mqtt.Client, device: str, archive: bytes, version: int, sha256: str) -> int:
    topic = device_topic(device, Channel.MODEL_CHUNK)
    parts = chunks(archive, version, sha256)
    for c in parts:
        client.publish(topic, encode(c), qos=1)
    return len(parts)


def announce(home: HubHome, version: int, name: str, archive: bytes, sha256: str, rollout_id: int) -> ModelAnnouncement:
    """The one place the hub builds a model announcement: signed with the hub's key (agents ignore
    unsigned or badly signed ones, so a forged ``edgesentry/fleet/model`` does nothing)."""
    ann = ModelAnnouncement(v=PROTOCOL_VERSION, version=version, name=name, sha256=sha256, size=len(archive),
                            chunks=len(chunks(archive, version, sha256)), rollout_id=rollout_id)
    return sign_announcement(home.signing_key(), ann)


@dataclass
class RolloutInfo:
    rollout_id: int
    version: int
    quantization: str
    size: int
    devices: list[str]


def start(home: HubHome, version: int, quantization: str) -> RolloutInfo:
    """Record the rollout and publish the retained fleet announcement."""
    sessions = home.sessions()
    with sessions() as s:
        bundle = s.scalar(select(db.Bundle).where(db.Bundle.version == version, db.Bundle.quantization == quantization))
        if bundle is None:
            raise LookupError(f"no {quantization} bundle for version {version}: run `cloud-hub export --model {version}`")
        archive = Path(bundle.path).read_bytes()
        s.execute(update(db.Rollout).where(db.Rollout.state == db.RolloutState.ACTIVE)
                  .values(state=db.RolloutState.SUPERSEDED))
        rollout = db.Rollout(bundle_id=bundle.id, version=version)
        s.add(rollout)
        s.flush()
        devices = list(s.scalars(select(db.Device.device_id).where(db.Device.revoked_at.is_(None))
                                 .order_by(db.Device.device_id)))
        now = time.time()
        for d in devices:
            s.add(db.RolloutDevice(rollout_id=rollout.id, device_id=d, state=db.DeviceRolloutState.PENDING, updated_at=now))
        announcement = announce(home, version, _model_name(s, version), archive, bundle.sha256, rollout.id)
        cfg = home.config()
        client = make_client(cfg.broker, "hub-rollout", persistent=False)
        connect(client, cfg.broker)
        try:
            client.publish(fleet_model_topic(), encode(announcement), qos=1, retain=True).wait_for_publish(15)
        finally:
            client.disconnect()
            client.loop_stop()
        s.commit()
        return RolloutInfo(rollout.id, version, quantization, len(archive), devices)


def wait_for_activation(
    home: HubHome,
    version: int,
    devices: set[str],
    timeout_s: float,
    on_update: Callable[[str, Status], None] | None = None,
    rollout_id: int | None = None,
) -> dict[str, Status]:
    """Watch agents' retained status until every device in ``devices`` runs ``version`` or refused it
    in answer to this rollout (a refusal left over from an earlier rollout does not count).

    Returns the last status seen per device.  Event-driven: woken by each status message.
    """
    cfg = home.config()
    latest: dict[str, Status] = {}
    changed = threading.Condition()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            device, _ = parse_topic(msg.topic)
            status = decode(Channel.STATUS, msg.payload, device=device)
        except ProtocolError:
            return
        with changed:
            latest[device] = status
            changed.notify_all()
        if on_update:
            on_update(device, status)

    def refused(st: Status) -> bool:
        return (st.model_state == ModelState.FAILED and st.failed_version == version
                and (rollout_id is None or st.rollout_id == rollout_id))

    def done() -> bool:
        return all(d in latest and (latest[d].model_version == version or refused(latest[d])) for d in devices)

    client = make_client(cfg.broker, "hub-rollout-watch", persistent=False)
    client.on_connect = lambda c, *_: c.subscribe(subscription(Channel.STATUS), qos=1)
    client.on_message = on_message
    connect(client, cfg.broker)
    deadline = time.monotonic() + timeout_s
    try:
        with changed:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                changed.wait(remaining)
    finally:
        client.disconnect()
        client.loop_stop()
    return latest


def _model_name(s: Session, version: int) -> str:
    mv = s.get(db.ModelVersion, version)
    return mv.name if mv else "unknown"
