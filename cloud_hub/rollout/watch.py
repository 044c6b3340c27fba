"""Watch agents' retained status over MQTT until they run a version (scripts, tests, `retrain --wait` block
on a rollout this way; the engine itself works from the database), and a one-wave rollout to every device."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.home import HubHome
from cloud_hub.rollout.api import start_rollout
from cloud_hub.rollout.waves import Gates, Selector
from shared.mqtt import connect, make_client
from shared.protocol import Channel, ModelState, ProtocolError, Status, decode, parse_topic, subscription


@dataclass
class RolloutInfo:
    rollout_id: int
    version: int
    quantization: str
    size: int
    devices: list[str]


def start(home: HubHome, version: int, quantization: str) -> RolloutInfo:
    """A one-wave rollout of ``version`` to every device (the pre-staging behaviour), run by `serve`."""
    rollout_id = start_rollout(home, version, Selector(), [100], Gates(), quantization)
    with home.sessions()() as s:
        rollout = s.get(db.Rollout, rollout_id)
        assert rollout is not None
        bundle = s.get(db.Bundle, rollout.bundle_id)
        devices = list(s.scalars(select(db.RolloutDevice.device_id).where(db.RolloutDevice.rollout_id == rollout_id)
                                 .order_by(db.RolloutDevice.device_id)))
        return RolloutInfo(rollout_id, version, quantization, bundle.size if bundle else 0, devices)


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
