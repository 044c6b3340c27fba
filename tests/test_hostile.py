"""Hostile input never stops anything: bounded decoding, per-message isolation, signed announcements."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from shared import protocol as p
from shared import signing
from shared.mqtt import BrokerConfig, MessageGuard, connect, make_client
from tests.conftest import start_agent, wait_online, wait_until

# The reproducer: ~200 KB of nesting killed the hub's paho thread (RecursionError in json.loads).
DEEP = b"[" * 100_000 + b"]" * 100_000


def _event(device: str = "gw-1") -> bytes:
    return p.encode(p.AnomalyEvent(v=p.PROTOCOL_VERSION, event_id=uuid.uuid4().hex, device=device, ts=1.0,
                                   detected_at=1.0, score=9.0, threshold=1.0, model_version=1))


def _announcement(version: int = 3, rollout_id: int = 1) -> p.ModelAnnouncement:
    return p.ModelAnnouncement(v=p.PROTOCOL_VERSION, version=version, name="ae-lstm", sha256="ab" * 32, size=1000,
                               chunks=1, rollout_id=rollout_id)


# ------------------------------------------------------------------------------ decoding


def test_deep_nesting_is_rejected_cleanly_on_every_channel() -> None:
    for channel in p.Channel:
        with pytest.raises(p.ProtocolError) as err:
            p.decode(channel, DEEP)
        assert err.value.reason == p.RejectReason.TOO_DEEP
    nested_object = b'{"v":2,"a":' + b'{"b":' * 5000 + b"1" + b"}" * 5001
    with pytest.raises(p.ProtocolError) as err:
        p.decode(p.Channel.STATUS, nested_object)
    assert err.value.reason == p.RejectReason.TOO_DEEP


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_are_not_json(constant: bytes) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode(p.Channel.ANOMALY, b'{"v":2,"score":' + constant + b"}")
    assert err.value.reason == p.RejectReason.NOT_JSON


def test_version_refusal_names_both_versions() -> None:
    for bad in (1, 3, 2.0, "2", True, None):
        with pytest.raises(p.ProtocolError) as err:
            p.decode(p.Channel.HEARTBEAT, json.dumps({"v": bad}).encode())
        assert err.value.reason == p.RejectReason.BAD_VERSION
        assert str(bad) in err.value.detail and "version 2" in err.value.detail


# ------------------------------------------------------------------------------ isolation


def _message(topic: str, payload: bytes = b"") -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    return msg


def test_guard_counts_bugs_by_channel_and_logs_one_traceback_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    rejects = p.RejectCounter(logging.getLogger("guard-test"), log_every_s=3600)
    guard = MessageGuard(rejects)

    def handler(msg: mqtt.MQTTMessage) -> None:
        if msg.payload == b"bug":
            raise RuntimeError("a bug in a handler")
        p.decode(p.Channel.STATUS, msg.payload)

    with caplog.at_level(logging.WARNING, logger="guard-test"):
        for _ in range(50):
            assert not guard.handle(handler, _message("edgesentry/gw-1/status", b"bug"))
        assert not guard.handle(handler, _message("edgesentry/gw-1/anomaly", b"bug"))
        assert not guard.handle(handler, _message("not/ours", b"bug"))
        assert not guard.handle(handler, _message("edgesentry/gw-1/status", DEEP))
    assert rejects.internal_errors() == {"status": 50, "anomaly": 1, "unknown": 1}
    assert rejects.counts() == {"internal_error": 52, "too_deep": 1}
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and len(caplog.records) == 2  # one traceback, one rejection line
    paho_cb = guard.on_message(handler)
    paho_cb(None, None, _message("edgesentry/gw-1/status", b"bug"))  # type: ignore[arg-type]  # nothing reaches paho

    def on_connect(*_: object) -> None:
        raise ZeroDivisionError("bug in on_connect")

    failing_connect = guard.callback(on_connect, "connect")
    failing_connect(None, None, None, None, None)
    assert rejects.internal_errors()["connect"] == 1


# ------------------------------------------------------------------------------ signed announcements


def test_announcement_signature_covers_every_field() -> None:
    key, other = signing.generate_private_key(), signing.generate_private_key()
    trusted = [key.public_key()]
    signed = signing.sign_announcement(key, _announcement())
    signing.verify_announcement(trusted, signed)
    wire = p.decode(p.Channel.MODEL, p.encode(signed))
    signing.verify_announcement(trusted, wire)  # survives the wire
    from dataclasses import replace

    forged = [
        _announcement(),  # unsigned
        signing.sign_announcement(other, _announcement()),  # untrusted key
        replace(signed, version=4),
        replace(signed, sha256="cd" * 32),
        replace(signed, rollout_id=2),
        replace(signed, key_id=signing.key_id(other.public_key())),
        replace(signed, signature="not base64!"),
    ]
    for ann in forged:
        with pytest.raises(signing.SignatureError):
            signing.verify_announcement(trusted, ann)


# ------------------------------------------------------------------------------ real broker, real peers


def _count(home: HubHome, table: type) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


@pytest.mark.integration
def test_nested_payload_no_longer_silences_the_hub(mosquitto: RunningBroker, hub_server: HubServer) -> None:
    """The issue's reproducer on a real Mosquitto: rejected as too_deep, the same hub stores what follows."""
    server = hub_server
    home = server.home
    cfg = BrokerConfig(url=mosquitto.url)
    client = make_client(cfg, "test-deep", persistent=False)
    connect(client, cfg)
    try:
        for topic in ("edgesentry/gw-1/status", "edgesentry/gw-1/anomaly", "edgesentry/gw-1/sync"):
            client.publish(topic, DEEP, qos=1).wait_for_publish(5)
        client.publish("edgesentry/gw-1/anomaly", _event(), qos=1).wait_for_publish(5)
        wait_until(lambda: _count(home, db.AnomalyEvent) == 1, 15, "the valid event stored after the payloads")
        assert server.rejects.counts() == {"too_deep": 3}
        assert server.client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
def test_agent_ignores_forged_announcements(tmp_path: Path, mosquitto: RunningBroker) -> None:
    """Unsigned, wrongly signed and tampered announcements do nothing; the hub's signed one is followed."""
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    device = "gw-forge"
    cfg = BrokerConfig(url=mosquitto.url)
    requests: list[p.ModelRequest] = []
    seen = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        requests.append(p.decode(p.Channel.MODEL_REQUEST, msg.payload))
        seen.set()

    watcher = make_client(cfg, "test-watch", persistent=False)
    watcher.on_message = on_message
    connect(watcher, cfg)
    watcher.subscribe(p.device_topic(device, p.Channel.MODEL_REQUEST), qos=1)
    agent, log = start_agent(tmp_path, device, home.public_key(), mosquitto.url)
    attacker = make_client(cfg, "test-attacker", persistent=False)
    connect(attacker, cfg)
    try:
        wait_online(mosquitto.url, device)
        evil = signing.generate_private_key()
        genuine = signing.sign_announcement(home.signing_key(), _announcement(version=8, rollout_id=2))
        from dataclasses import replace

        forged = [
            p.encode(_announcement(version=7)),
            p.encode(signing.sign_announcement(evil, _announcement(version=7))),
            p.encode(replace(genuine, version=7)),
            b'{"v":1,"version":7,"name":"x","sha256":"' + b"a" * 64 + b'","size":1,"chunks":1,"rollout_id":1}',
            DEEP,
        ]
        for payload in forged:
            attacker.publish(p.fleet_model_topic(), payload, qos=1).wait_for_publish(5)
        attacker.publish(p.device_topic(device, p.Channel.MODEL), forged[1], qos=1).wait_for_publish(5)
        # The genuine one after the forgeries: once it is requested, the forgeries have been handled.
        attacker.publish(p.fleet_model_topic(), p.encode(genuine), qos=1).wait_for_publish(5)
        assert seen.wait(20), "the signed announcement was not followed"
        assert {r.version for r in requests} == {8}
        text = log.read_text()
        assert "Traceback" not in text
    finally:
        attacker.publish(p.fleet_model_topic(), b"", qos=1, retain=True).wait_for_publish(5)
        for c in (attacker, watcher):
            c.disconnect()
            c.loop_stop()
        agent.terminate()
        assert agent.wait(30) == 0


def test_forged_chunks_do_not_spoil_a_download() -> None:
    """A chunk that cannot belong is refused without touching the parts already collected."""
    import base64

    from cloud_hub.rollout import chunks
    from edge_agent.model_store import Assembly

    archive = b"genuine archive bytes" * 10
    sha = hashlib.sha256(archive).hexdigest()
    genuine = chunks(archive, 3, sha)
    asm = Assembly(p.ModelAnnouncement(v=p.PROTOCOL_VERSION, version=3, name="m", sha256=sha, size=len(archive),
                                       chunks=len(genuine), rollout_id=1))
    oversized = p.ModelChunk(v=p.PROTOCOL_VERSION, version=3, sha256=sha, index=0, total=1,
                             data=base64.b64encode(b"x" * (len(archive) + 1)).decode())
    for bad in (oversized, p.ModelChunk(v=p.PROTOCOL_VERSION, version=3, sha256="0" * 64, index=0, total=1, data="")):
        with pytest.raises(ValueError):
            asm.add(bad)
    assert asm.parts == {}
    assert asm.add(genuine[0]) and asm.archive() == archive


def test_integers_beyond_64_bits_are_schema_errors() -> None:
    """Found by the fuzz suite: seq = 2**63 passed decode and then failed the hub's database write."""
    hb = {"v": p.PROTOCOL_VERSION, "device": "gw-1", "ts": 1.0, "seq": 2**63, "uptime_s": 1.0, "model_version": None,
          "readings_received": 0, "readings_scored": 0, "anomalies": 0, "rejected": 0, "queue_depth": 0}
    with pytest.raises(p.ProtocolError) as err:
        p.decode(p.Channel.HEARTBEAT, json.dumps(hb).encode())
    assert err.value.reason == p.RejectReason.SCHEMA and "64-bit" in err.value.detail
    assert p.decode(p.Channel.HEARTBEAT, json.dumps({**hb, "seq": 2**63 - 1}).encode()).seq == 2**63 - 1
