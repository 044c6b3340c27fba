"""Signed announcements and chunked bundle transfer: the one place the hub builds and sends them.

Agents pull: an announcement (retained, signed with the hub's key) on a device's own
``edgesentry/<device>/model`` topic — or, for the legacy whole-fleet path, ``edgesentry/fleet/model`` —
names a version; the agent asks for it on ``model/request`` and `serve` answers with chunks on that
device's ``model/chunk`` topic.  A device's own announcement takes precedence over the fleet one.
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.home import HubHome
from shared.protocol import (
    CHUNK_BYTES,
    PROTOCOL_VERSION,
    Channel,
    ModelAnnouncement,
    ModelChunk,
    device_topic,
    encode,
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
    unsigned or badly signed ones, so a forged announcement does nothing)."""
    ann = ModelAnnouncement(v=PROTOCOL_VERSION, version=version, name=name, sha256=sha256, size=len(archive),
                            chunks=len(chunks(archive, version, sha256)), rollout_id=rollout_id)
    return sign_announcement(home.signing_key(), ann)


@dataclass(frozen=True)
class Archive:
    bundle_id: int
    version: int
    name: str
    data: bytes
    sha256: str


@functools.lru_cache(maxsize=8)
def _read(path: str, sha256: str) -> bytes:  # keyed on the hash too: a re-exported bundle is read again
    return Path(path).read_bytes()


def archive_of(s: Session, bundle: db.Bundle) -> Archive:
    mv = s.get(db.ModelVersion, bundle.version)
    return Archive(bundle.id, bundle.version, mv.name if mv else "unknown", _read(bundle.path, bundle.sha256), bundle.sha256)


class Announcer:
    """Publishes (and clears) signed per-device announcements with ``client``; signs each version once."""

    def __init__(self, home: HubHome, client: mqtt.Client) -> None:
        self.home = home
        self.client = client
        self._signed: dict[tuple[int, str, int], bytes] = {}

    def payload(self, archive: Archive, rollout_id: int) -> bytes:
        key = (archive.version, archive.sha256, rollout_id)
        if key not in self._signed:
            if len(self._signed) > 64:
                self._signed.clear()
            self._signed[key] = encode(announce(self.home, archive.version, archive.name, archive.data,
                                                archive.sha256, rollout_id))
        return self._signed[key]

    def to_device(self, s: Session, device: str, archive: Archive | None, rollout_id: int | None,
                  now: float) -> mqtt.MQTTMessageInfo:
        """Retained announcement of ``archive`` (None: clear the device's announcement) on the device's
        model topic; remembered in ``device_targets``."""
        payload = b"" if archive is None else self.payload(archive, rollout_id or 0)
        info = self.client.publish(device_topic(device, Channel.MODEL), payload, qos=1, retain=True)
        target = s.get(db.DeviceTarget, device)
        if target is None:
            target = db.DeviceTarget(device_id=device, announced_at=now)
            s.add(target)
        target.version = archive.version if archive else None
        target.bundle_id = archive.bundle_id if archive else None
        target.rollout_id, target.announced_at = rollout_id, now
        return info
