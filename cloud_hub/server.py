"""``cloud-hub serve``: stores what agents report and serves model chunks on request.

The MQTT network thread only validates and enqueues; one worker thread owns the database session,
so a slow disk never stalls the broker connection.  Every malformed message is counted and logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.data import npy_bytes
from cloud_hub.home import HubHome
from cloud_hub.rollout import send_bundle
from shared import protocol as p
from shared.mqtt import MessageGuard, connect, make_client

log = logging.getLogger("cloud_hub.server")

HUB_CHANNELS = (
    p.Channel.ANOMALY,
    p.Channel.HEARTBEAT,
    p.Channel.STATUS,
    p.Channel.SYNC,
    p.Channel.TELEMETRY,
    p.Channel.MODEL_REQUEST,
)


class HubServer:
    def __init__(self, home: HubHome) -> None:
        self.home = home
        self.cfg = home.config()
        self.sessions = home.sessions()
        self.rejects = p.RejectCounter(log)
        self.guard = MessageGuard(self.rejects)  # nothing one message raises reaches paho's loop
        self.received: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()
        self._queue: queue.Queue[tuple[p.Channel, str, Any, float] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="hub-db", daemon=True)
        self.client = make_client(self.cfg.broker, "hub")
        self.client.on_connect = self.guard.callback(self._on_connect, "connect")
        self.client.on_message = self.guard.on_message(self._on_message)
        self.idle = threading.Event()  # set whenever the work queue is drained (tests, demo)

    def start(self) -> None:
        self._worker.start()
        connect(self.client, self.cfg.broker)
        log.info("hub serving on %s", self.cfg.broker.url)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if not getattr(reason, "is_failure", False):
            client.subscribe([(p.subscription(ch), 1) for ch in HUB_CHANNELS])

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Validate and enqueue one message (under ``self.guard``: rejections and bugs are counted)."""
        device, channel = p.parse_topic(msg.topic)
        if channel not in HUB_CHANNELS:
            raise p.ProtocolError(p.RejectReason.BAD_TOPIC, f"hub does not consume {channel.value}")
        message = p.decode(channel, msg.payload, device=device)
        self.received[channel.value] += 1
        self.idle.clear()
        self._queue.put((channel, device, message, time.time()))

    # ------------------------------------------------------------------ storage worker

    def _work(self) -> None:
        handlers: dict[p.Channel, Callable[[Session, str, Any, float], None]] = {
            p.Channel.ANOMALY: self._anomaly,
            p.Channel.HEARTBEAT: self._heartbeat,
            p.Channel.STATUS: self._status,
            p.Channel.SYNC: self._sync,
            p.Channel.TELEMETRY: self._telemetry,
            p.Channel.MODEL_REQUEST: self._model_request,
        }
        while True:
            item = self._queue.get()
            if item is None:
                return
            channel, device, message, received_at = item
            try:
                with self.sessions() as s:
                    self._touch(s, device, received_at)
                    handlers[channel](s, device, message, received_at)
                    s.commit()
                self.stored[channel.value] += 1
            except IntegrityError:
                self.stored["duplicate"] += 1  # redelivered QoS-1 message: already stored
            except Exception:
                log.exception("failed to handle %s from %s", channel.value, device)
            if self._queue.empty():
                self.idle.set()

    def _touch(self, s: Session, device: str, now: float) -> db.Device:
        dev = s.get(db.Device, device)
        if dev is None:
            dev = db.Device(device_id=device, first_seen=now, last_seen=now, online=True)
            s.add(dev)
            s.flush()
        dev.last_seen = now
        return dev

    def _anomaly(self, s: Session, device: str, m: p.AnomalyEvent, now: float) -> None:
        s.add(db.AnomalyEvent(device_id=device, event_id=m.event_id, ts=m.ts, detected_at=m.detected_at,
                              received_at=now, score=m.score, threshold=m.threshold,
                              model_version=m.model_version, top_features=m.top_features,
                              attribution=m.attribution, likelihood=m.likelihood))

    def _heartbeat(self, s: Session, device: str, m: p.Heartbeat, now: float) -> None:
        s.add(db.Heartbeat(device_id=device, ts=m.ts, received_at=now, seq=m.seq, model_version=m.model_version,
                           readings_received=m.readings_received, readings_scored=m.readings_scored, anomalies=m.anomalies, rejected=m.rejected,
                           queue_depth=m.queue_depth))
        dev = s.get(db.Device, device)
        assert dev is not None
        dev.online = True
        dev.model_version = m.model_version
        dev.readings_scored = m.readings_scored

    def _telemetry(self, s: Session, device: str, m: p.Telemetry, now: float) -> None:
        dev = s.get(db.Device, device)
        assert dev is not None
        dev.readings_scored = m.readings_scored_total

    def _status(self, s: Session, device: str, m: p.Status, now: float) -> None:
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
            self._rollout_device(s, rollout.id, device, db.DeviceRolloutState.ACTIVATED, "", now)
        elif m.failed_version == rollout.version and m.rollout_id in (None, rollout.id):
            self._rollout_device(s, rollout.id, device, db.DeviceRolloutState.FAILED, m.error, now)

    def _rollout_device(self, s: Session, rollout_id: int, device: str, state: db.DeviceRolloutState,
                        detail: str, now: float) -> None:
        row = s.scalar(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == rollout_id,
                                                      db.RolloutDevice.device_id == device))
        if row is None:
            row = db.RolloutDevice(rollout_id=rollout_id, device_id=device, state=state, updated_at=now)
            s.add(row)
        if row.state != db.DeviceRolloutState.ACTIVATED or state == db.DeviceRolloutState.ACTIVATED:
            row.state, row.updated_at, row.detail = state, now, detail[:500]

    def _sync(self, s: Session, device: str, m: p.SyncBatch, now: float) -> None:
        data = m.table()
        flags = np.array(m.flags or [0] * len(data), dtype=np.int8)
        s.add(db.SyncBatch(device_id=device, batch_id=m.batch_id, received_at=now,
                           start_ts=float(data[:, 0].min()), end_ts=float(data[:, 0].max()), rows=len(data),
                           features=m.features, data=npy_bytes(data), flags=npy_bytes(flags),
                           model_version=m.model_version))

    def _model_request(self, s: Session, device: str, m: p.ModelRequest, now: float) -> None:
        rollout = s.scalar(select(db.Rollout).where(db.Rollout.version == m.version).order_by(db.Rollout.id.desc()))
        bundle = s.get(db.Bundle, rollout.bundle_id) if rollout else s.scalar(
            select(db.Bundle).where(db.Bundle.version == m.version, db.Bundle.quantization == self.cfg.default_quantization))
        if bundle is None:
            log.warning("%s asked for unknown model version %d", device, m.version)
            return
        archive = Path(bundle.path).read_bytes()
        n = send_bundle(self.client, device, archive, m.version, bundle.sha256)
        if rollout is not None:
            self._rollout_device(s, rollout.id, device, db.DeviceRolloutState.REQUESTED, "", now)
        log.info("sent model v%d to %s in %d chunk(s)", m.version, device, n)
