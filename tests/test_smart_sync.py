"""The smart sync policy end to end (issue 7): sensor → Mosquitto → agent (smart policy, bandwidth cap) →
Mosquitto → the real hub.  What reaches the hub's database matches the policy: every flagged window whole,
normal data only sampled, the bytes on the wire within the cap; an agent SIGKILLed while batches wait
in its outbox resumes them after the restart and the hub stores each batch and each reading once."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.data import npy_load
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from shared.mqtt import BrokerConfig, connect, make_client
from shared.protocol import Channel, device_topic
from tests.conftest import start_agent, wait_until
from tests.faults import Raised, Sensor, hub_toml_fast_reconnect, in_outbox, install_model, raised

pytestmark = pytest.mark.integration
DEVICE = "gw-smart"
RATE = 200  # readings/s
EVERY = 400  # a spike every EVERY readings
TOTAL = 4000  # readings the sensor publishes (20 s)
CAP = 1200.0  # [sync] bandwidth_bytes_s
SUBSCRIBED = "reading source subscribed"


class WireTap:
    """Records every sync message on the broker: (arrival time, payload bytes)."""

    def __init__(self, broker: RunningBroker) -> None:
        self.got: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.client = make_client(BrokerConfig(url=broker.url), "tap", persistent=False)

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.got.append((time.monotonic(), len(msg.payload)))

        self.client.on_message = on_message
        connect(self.client, BrokerConfig(url=broker.url))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe(device_topic(DEVICE, Channel.SYNC), qos=1)
        assert subscribed.wait(5)


def _stored(home: HubHome) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Rows (sorted by ts: [ts, features...]), their flags, and batch id -> rows, as the hub stored them."""
    with home.sessions()() as s:
        batches = list(s.scalars(select(db.SyncBatch).where(db.SyncBatch.device_id == DEVICE)))
        if not batches:
            return np.empty((0, 1)), np.empty(0), {}
        table = np.concatenate([npy_load(b.data) for b in batches])
        flags = np.concatenate([npy_load(b.flags) for b in batches])
        ids = {b.batch_id: b.rows for b in batches}
    order = np.argsort(table[:, 0], kind="stable")
    return table[order], flags[order], ids


def _events(home: HubHome) -> list[float]:
    with home.sessions()() as s:
        return list(s.scalars(select(db.AnomalyEvent.ts).where(db.AnomalyEvent.device_id == DEVICE)))


def test_smart_sync_end_to_end_within_the_cap_and_resumed_after_sigkill(tmp_path: Path, trained_home,  # type: ignore[no-untyped-def]
                                                                        mosquitto: RunningBroker) -> None:
    src_home, exported = trained_home
    window = int(json.loads((exported.bundle_dir / "manifest.json").read_text())["preprocessing"]["window"])
    install_model(tmp_path / "state", src_home, exported.bundle_dir)
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    hub_toml_fast_reconnect(home)
    server = HubServer(home)
    server.start()
    tap = WireTap(mosquitto)
    extra = ("heartbeat_s = 1.0\n[[sources]]\ntype = \"mqtt\"\n"
             f"[sources.broker]\nurl = \"{mosquitto.url}\"\nreconnect_max_s = 2\n"
             f"[sync]\npolicy = \"smart\"\ninterval_s = 2.0\nsample_windows = 2\nbandwidth_bytes_s = {CAP}\n"
             "[outbox]\nack_timeout_s = 3")
    agent = None
    sensor: Sensor | None = None
    try:
        agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), mosquitto.url, extra, "reconnect_max_s = 2")
        wait_until(lambda: SUBSCRIBED in log.read_text(), 60, "the agent's reading subscription")
        t0 = time.monotonic()
        sensor = Sensor(mosquitto.url, DEVICE, RATE, EVERY, limit=TOTAL, seed=1)  # the model's own device
        sensor.start()

        # SIGKILL once the cap holds sync batches back in the outbox (queued, not yet on the wire).
        def held_back() -> bool:
            return sensor is not None and sensor.sent >= TOTAL // 2 and len(raised(log).batches) > len(tap.got) + 1

        wait_until(held_back, 60, "sync batches waiting in the outbox behind the bandwidth cap")
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        killed_at = time.monotonic()
        killed: Raised = raised(log) | in_outbox(tmp_path / "state")  # durable just before the kill: in no log
        queued_before_kill = killed.batches
        agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), mosquitto.url, extra, "reconnect_max_s = 2")
        assert sensor.done.wait(60)

        final: list[tuple[np.ndarray, np.ndarray, dict[str, int]]] = []

        def delivered() -> bool:
            final[:] = [_stored(home)]
            r = raised(log) | killed
            return final[0][2] == r.batches and set(r.events) <= set(_event_ids(home))

        wait_until(delivered, 120, "every queued sync batch and every event stored", interval_s=0.5)
        table, flags, ids = final[0]
        sent = np.asarray(sensor.stamps)
        ts = table[:, 0]

        # Resumed, exactly once: every batch queued before the kill was stored once, no reading twice.
        assert set(queued_before_kill) <= set(ids)
        assert len(np.unique(ts)) == len(ts), "a reading stored twice"
        assert np.isin(ts, sent).all()

        # Every flagged window whole: each flagged row is stored with the window - 1 readings before it.
        index = np.searchsorted(sent, ts)
        stored_idx = set(index.tolist())
        flagged = index[flags == 1]
        assert len(flagged) >= TOTAL // EVERY - 2  # the spikes were flagged (a few may fall in warm-ups)
        for i in flagged.tolist():
            assert set(range(i - window + 1, i + 1)) <= stored_idx, f"flagged window ending at reading {i} incomplete"
        for ev in _events(home):  # every anomaly event's window is among the flagged ones
            assert ev in set(ts[flags == 1].tolist())

        # Normal data only sampled: far less than everything, yet normal windows are there (the reservoir).
        in_flagged = np.zeros(len(sent), dtype=bool)
        for i in flagged.tolist():
            in_flagged[max(0, i - window + 1): i + 1] = True
        normal_stored = [i for i in stored_idx if not in_flagged[i]]
        assert len(ts) < 0.6 * len(sent)
        assert len(normal_stored) >= window  # at least one sampled (or hard) normal window

        # Within the cap: bytes on the wire by each arrival <= cap x time since start + one second's burst
        # + one message (the agent's restart restarts its bucket: one more burst).
        with tap.lock:
            arrivals = list(tap.got)
        total = 0
        biggest = max(n for _, n in arrivals)
        for at, n in arrivals:
            total += n
            bursts = 2 if at > killed_at else 1
            assert total <= CAP * (at - t0) + bursts * CAP + biggest, (total, at - t0)
        rate = total / (arrivals[-1][0] - t0)
        print(f"\nsmart sync: {len(sent)} readings sent, {len(ts)} stored ({flags.sum()} flagged window ends, "
              f"{len(normal_stored)} normal rows), {len(ids)} batches, {total} bytes on the wire at "
              f"{rate:.0f} B/s average (cap {CAP:.0f}); {len(queued_before_kill)} batches queued before the SIGKILL")
    finally:
        if sensor is not None:
            sensor.stop.set()
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(30)
        server.stop()


def _event_ids(home: HubHome) -> list[str]:
    with home.sessions()() as s:
        return list(s.scalars(select(db.AnomalyEvent.event_id).where(db.AnomalyEvent.device_id == DEVICE)))
