"""The agent's durable outbox: storage, bounds and drop order, re-send rules, and delivery on real Mosquitto."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud_hub.brokers import RunningBroker
from edge_agent.config import DEFAULT_OUTBOX_BYTES, OutboxConfig, load_config
from edge_agent.outbox import ENTRY_OVERHEAD, FILENAME, Kind, Outbox, Sender, TokenBucket, read_stats
from shared.mqtt import BrokerConfig, connect, make_client
from shared.profiles import resolve_profile
from shared.schema import SchemaError
from tests.conftest import REPO, wait_until

TOPIC = "edgesentry/gw-1/anomaly"


def _size(payload: bytes, topic: str = TOPIC) -> int:
    return len(payload) + len(topic) + ENTRY_OVERHEAD


def test_entries_survive_reopen_until_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / FILENAME)
    box.put("e1", Kind.ANOMALY, TOPIC, b"one")
    box.put("e2", Kind.SYNC, "edgesentry/gw-1/sync", b"two")
    box.put("e1", Kind.ANOMALY, TOPIC, b"one")  # the same durable id is stored once
    box.close()
    box = Outbox(tmp_path / FILENAME)  # an agent restart
    assert len(box) == 2 and box.bytes == _size(b"one") + _size(b"two", "edgesentry/gw-1/sync")
    assert box.ack(["e1", "unknown"]) == 1
    assert [e.id for e in box.due(0.0, 10)] == ["e2"]
    assert box.ack(["e2"]) == 1 and len(box) == 0 and box.bytes == 0


def test_full_outbox_drops_lowest_priority_oldest_first_and_counts(tmp_path: Path) -> None:
    payload = b"x" * 100
    one = _size(payload)
    box = Outbox(tmp_path / FILENAME, max_bytes=4 * one)
    box.put("s1", Kind.SYNC, TOPIC, payload)
    box.put("t1", Kind.TELEMETRY, TOPIC, payload)
    box.put("s2", Kind.SYNC, TOPIC, payload)
    box.put("a1", Kind.ANOMALY, TOPIC, payload)
    assert box.put("a2", Kind.ANOMALY, TOPIC, payload)  # evicts s1 (sync, oldest)
    assert box.put("a3", Kind.ANOMALY, TOPIC, payload)  # evicts s2
    assert box.put("st", Kind.STATUS, TOPIC, payload)  # evicts t1
    assert not box.put("s3", Kind.SYNC, TOPIC, payload)  # only higher priority left: the new sync row goes
    assert box.put("a4", Kind.ANOMALY, TOPIC, payload)  # evicts the status
    assert not box.put("a5", Kind.ANOMALY, TOPIC, payload * 100)  # bigger than the whole budget
    stats = box.stats()
    assert stats.depth_by_kind == {"anomaly": 4}
    assert stats.dropped == {"sync": 3, "telemetry": 1, "status": 1, "anomaly": 1}
    assert stats.bytes == 4 * one <= box.max_bytes
    box.close()
    stats, _ = read_stats(tmp_path / FILENAME)  # counts persist (edge-agent status reads them)
    assert stats.dropped["sync"] == 3 and stats.depth == 4


def test_due_orders_by_priority_resends_after_timeout_and_retains_only_the_newest_status(tmp_path: Path) -> None:
    box = Outbox(tmp_path / FILENAME)
    status = "edgesentry/gw-1/status"
    box.put("sync", Kind.SYNC, "edgesentry/gw-1/sync", b"s")
    box.put("st1", Kind.STATUS, status, b"old", retain=True)
    box.put("ev", Kind.ANOMALY, TOPIC, b"e")
    box.put("st2", Kind.STATUS, status, b"new", retain=True)
    due = box.due(1000.0, 10)
    assert [e.id for e in due] == ["ev", "st1", "st2", "sync"]
    assert [e.retain for e in due] == [False, False, True, False]
    box.mark_sent([e.seq for e in due], 30.0, 100.0, now=1000.0)
    assert box.due(1010.0, 10) == []  # sent, waiting for the hub's acknowledgement
    box.ack(["ev"])
    again = box.due(1031.0, 10)
    assert [e.id for e in again] == ["st1", "st2", "sync"] and all(e.attempts == 1 for e in again)  # timed out
    box.mark_sent([e.seq for e in again], 30.0, 100.0, now=1031.0)
    assert box.due(1031.0 + 59, 10) == []  # second wait doubles to 60 s ...
    third = box.due(1031.0 + 61, 10)
    assert len(third) == 3
    box.mark_sent([e.seq for e in third], 30.0, 100.0, now=1100.0)
    assert box.due(1199.0, 10) == [] and len(box.due(1201.0, 10)) == 3  # ... then capped at 100 s, not 120
    box.requeue_all()  # a reconnect sends everything unacknowledged at once
    assert len(box.due(1101.0, 10)) == 3


def test_token_bucket_caps_the_rate() -> None:
    bucket = TokenBucket(10.0)
    for _ in range(10):  # one second of burst
        assert bucket.wait_s(1) == 0.0
        bucket.take(1)
    assert bucket.wait_s(1) > 0.05  # the eleventh message waits for a token
    big = TokenBucket(100.0)
    assert big.wait_s(1000) == 0.0  # larger than the rate: allowed once the bucket is full ...
    big.take(1000)
    assert big.wait_s(1) > 5  # ... and the debt is paid before anything else goes


def test_outbox_config_is_typed(tmp_path: Path) -> None:
    base = 'device_id = "gw-1"\nstate_dir = "s"\ntrusted_keys = ["k"]\n'
    conf = tmp_path / "agent.toml"
    conf.write_text(base + '[outbox]\nconfirm = "broker"\nmax_bytes = 2000000\n')
    cfg = load_config(conf)
    assert cfg.outbox.confirm == "broker" and cfg.outbox.max_bytes == 2_000_000
    conf.write_text(base + 'profile = "rpi3-32"\n')  # no explicit budget: the firmware profile's
    assert load_config(conf).outbox.max_bytes == resolve_profile("rpi3-32").outbox_max_bytes
    conf.write_text(base)
    assert load_config(conf).outbox.max_bytes == DEFAULT_OUTBOX_BYTES
    for bad in ('[outbox]\nretries = 3\n', '[outbox]\nconfirm = "nobody"\n', '[outbox]\nack_timeout_s = 0\n'):
        conf.write_text(base + bad)
        with pytest.raises((SchemaError, ValueError)):
            load_config(conf)


class _Subscriber:
    """A plain MQTT client that records what reaches the broker on the agent's topics."""

    def __init__(self, broker: RunningBroker) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.client = make_client(BrokerConfig(url=broker.url), "test-sub", persistent=False)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
                self.times.append(time.monotonic())

        self.client.on_message = on_message
        connect(self.client, BrokerConfig(url=broker.url))
        done = threading.Event()
        self.client.on_subscribe = lambda *_: done.set()
        self.client.subscribe("edgesentry/#", qos=1)
        assert done.wait(5)

    def count(self) -> int:
        with self.lock:
            return len(self.got)


def _sender(tmp_path: Path, broker: RunningBroker, cfg: OutboxConfig,
            sync_bytes_per_s: float = 0.0) -> tuple[Outbox, Sender, threading.Event]:
    box = Outbox(tmp_path / FILENAME)
    client = make_client(BrokerConfig(url=broker.url), "test-agent", persistent=True)
    stop = threading.Event()
    sender = Sender(box, client, cfg, stop, sync_bytes_per_s)
    client.on_connect = lambda *_: sender.on_connect()
    client.on_disconnect = lambda *_: sender.on_disconnect()
    client.on_publish = lambda _c, _u, mid, *_: sender.on_publish(mid)
    connect(client, BrokerConfig(url=broker.url))
    threading.Thread(target=sender.run, daemon=True).start()
    return box, sender, stop


def test_sender_keeps_entries_until_the_hub_acknowledges(tmp_path: Path, mosquitto: RunningBroker) -> None:
    sub = _Subscriber(mosquitto)
    box, sender, stop = _sender(tmp_path, mosquitto, OutboxConfig(ack_timeout_s=0.5))
    try:
        for i in range(20):
            box.put(f"e{i}", Kind.ANOMALY, TOPIC, f"event {i}".encode())
        wait_until(lambda: sub.count() >= 40, 20, "every entry published, then again after the ack timeout")
        assert len(box) == 20  # PUBACKs arrived, yet nothing is deleted before the hub's Ack
        payloads = [p for _, p, _ in sub.got[:20]]
        assert payloads == [f"event {i}".encode() for i in range(20)]  # in order
        sender.on_ack([f"e{i}" for i in range(20)])
        assert len(box) == 0
    finally:
        stop.set()


def test_sender_confirm_broker_deletes_on_puback(tmp_path: Path, mosquitto: RunningBroker) -> None:
    sub = _Subscriber(mosquitto)
    box, sender, stop = _sender(tmp_path, mosquitto, OutboxConfig(confirm="broker", max_inflight=3))
    try:
        for i in range(50):
            box.put(f"e{i}", Kind.TELEMETRY, TOPIC, b"t")
        wait_until(lambda: len(box) == 0, 20, "PUBACKs deleting every entry")
        wait_until(lambda: sub.count() == 50, 10, "the subscriber seeing 50 messages")
        assert sender.published == 50
    finally:
        stop.set()


def test_sender_spends_the_sync_bandwidth_cap_on_sync_batches_only(tmp_path: Path, mosquitto: RunningBroker) -> None:
    """Sync batches held back by the cap wait in the outbox (durable), an anomaly put meanwhile is not held
    back, and what reaches the broker stays within the cap (plus one second's burst)."""
    cap, size, n = 4000.0, 1000, 12
    sub = _Subscriber(mosquitto)
    box, _sender_, stop = _sender(tmp_path, mosquitto, OutboxConfig(confirm="broker"), sync_bytes_per_s=cap)
    sync_topic = "edgesentry/gw-1/sync"
    try:
        t0 = time.monotonic()
        for i in range(n):
            box.put(f"s{i}", Kind.SYNC, sync_topic, bytes([65 + i]) * size)
        wait_until(lambda: sub.count() >= 2, 10, "the first second's burst")
        assert len(box) > 0  # the rest waits on disk
        box.put("a", Kind.ANOMALY, TOPIC, b"spike")
        wait_until(lambda: any(t == TOPIC for t, _, _ in sub.got), 3, "the anomaly, past the held-back sync")
        assert sum(t == sync_topic for t, _, _ in sub.got) < n
        wait_until(lambda: sub.count() == n + 1, 30, "every sync batch within the cap")
        with sub.lock:
            arrivals = [(t, p, at) for (t, p, _), at in zip(sub.got, sub.times, strict=True) if t == sync_topic]
        assert [p[0] for _, p, _ in arrivals] == [65 + i for i in range(n)]  # in order, each once
        for k, (_, _, at) in enumerate(arrivals):  # bytes sent by each arrival <= cap x elapsed + burst
            assert (k + 1) * size <= cap * (at - t0) + cap + size, (k, at - t0)
        assert arrivals[-1][2] - t0 >= (n * size - cap) / cap * 0.9
    finally:
        stop.set()


def test_status_command_reports_outbox_and_model_state(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    conf = tmp_path / "agent.toml"
    conf.write_text('device_id = "gw-1"\nstate_dir = "state"\ntrusted_keys = ["k"]\n[outbox]\nmax_bytes = 1000\n')
    box = Outbox(tmp_path / "state" / FILENAME, max_bytes=1000)
    box.set_meta("last_status", json.dumps({"model_version": 3, "model_state": "committed", "error": ""}))
    for i in range(12):
        box.put(f"s{i}", Kind.SYNC, "edgesentry/gw-1/sync", b"x" * 100)
    box.put("a", Kind.ANOMALY, TOPIC, b"x" * 100)
    # The agent keeps its connection open while the CLI reads (WAL allows it).
    out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "status", "--config", str(conf), "--json"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    status = json.loads(out)
    assert status["model_version"] == 3 and status["model_state"] == "committed"
    assert status["outbox_by_kind"] == {"anomaly": 1, "sync": box.stats().depth_by_kind["sync"]}
    assert status["outbox_dropped"]["sync"] == 12 - status["outbox_by_kind"]["sync"] > 0
    text = subprocess.run([sys.executable, "-m", "edge_agent.cli", "status", "--config", str(conf)],
                          cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "v3 (committed)" in text and "dropped     sync" in text
    box.close()


def test_checkpoint_runs_beside_the_writer_after_enough_changes(tmp_path: Path) -> None:
    """The WAL is copied into the database by ``checkpoint`` (housekeeping), on its own connection, once
    enough rows changed; commits never wait for it and nothing is lost."""
    box = Outbox(tmp_path / FILENAME)
    assert box._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10_000  # only a safety net
    assert not box.checkpoint(min_changes=10)
    for i in range(12):
        box.put(f"e{i}", Kind.ANOMALY, TOPIC, b"{}")
    box.mark_sent([e.seq for e in box.due(time.time(), 100)], 30.0, 60.0)
    seq = box.put_sending("sent", Kind.ANOMALY, TOPIC, b"{}", 30.0)
    assert seq is not None and box.due(time.time(), 100) == []  # published by the caller: not due yet
    wal = tmp_path / (FILENAME + "-wal")
    assert wal.stat().st_size > 0
    assert box.checkpoint(min_changes=10) and not box.checkpoint(min_changes=10)
    frames = sqlite3.connect(tmp_path / FILENAME).execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert frames[1] == frames[2]  # every WAL frame is already in the database file
    box.close()
    again = Outbox(tmp_path / FILENAME)
    assert len(again) == 13
    again.close()


def test_put_sending_keeps_order_behind_unsent_entries_of_its_priority(tmp_path: Path) -> None:
    box = Outbox(tmp_path / FILENAME)
    box.put("status", Kind.STATUS, TOPIC, b"{}")
    assert box.put_sending("first", Kind.ANOMALY, TOPIC, b"{}", 30.0) is not None  # only lower priority waits
    box.put("queued", Kind.ANOMALY, TOPIC, b"{}")  # e.g. stored while offline, not yet published
    assert box.put_sending("second", Kind.ANOMALY, TOPIC, b"{}", 30.0) is None  # waits its turn
    assert [e.id for e in box.due(time.time(), 10)] == ["queued", "second", "status"]
    assert box.put_sending("second", Kind.ANOMALY, TOPIC, b"{}", 30.0) is None  # a duplicate id: stored once
    assert len(box) == 4
    box.close()
