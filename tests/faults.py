"""Helpers for the delivery fault tests and the chaos suite: spiky data, what the agent says it raised
and synced (its log), what the hub stored (its database)."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.data import npy_load
from cloud_hub.demo.simulator import FEATURES, DeviceSimulator
from cloud_hub.home import HubHome
from edge_agent.model_store import ModelStore
from edge_agent.outbox import FILENAME as OUTBOX_FILE
from edge_agent.outbox import Kind
from edge_agent.update import provision
from shared import bundle as bundle_fmt
from shared.mqtt import BrokerConfig, connect, make_client
from shared.protocol import PROTOCOL_VERSION, Channel, Reading, Readings, decode, device_topic, encode
from shared.signing import parse_public_key
from tests.conftest import simulated_series, write_csv

EVENT_RE = re.compile(r"anomaly at [0-9.]+: .* id ([0-9a-f]{32})$", re.M)
SYNC_RE = re.compile(r"sync batch ([0-9a-f]{32}): (\d+) rows queued$", re.M)
SPIKE = -30.0  # added to `power` (feature 2) for three readings: a clear anomaly for the test model


def install_model(state_dir: Path, home: HubHome, bundle_dir: Path) -> None:
    """Put the trained bundle in an agent's state_dir as the active model (what a rollout would do)."""
    store = ModelStore(state_dir, [parse_public_key(home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(bundle_dir)))
    provision(state_dir, 1)


def spiky_csv(path: Path, seconds: float, rate_hz: float, every: int, t0: float, seed: int = 1) -> int:
    """Normal simulated readings with a spike every ``every`` readings (first at every // 2); returns rows."""
    ts, values = simulated_series(seconds, seed=seed, rate_hz=rate_hz, t0=t0)
    for i in range(every // 2, len(ts) - 3, every):
        values[i:i + 3, 2] += SPIKE
    write_csv(path, ts, values)
    return len(ts)


def hub_toml_fast_reconnect(home: HubHome, reconnect_max_s: int = 2) -> None:
    """Tests wait for reconnects: cap paho's back-off so a restarted broker is found within seconds."""
    text = home.config_path.read_text()
    home.config_path.write_text(re.sub(r'(\[broker\]\n(?:.*\n)*?url = ".*"\n)',
                                       rf"\g<1>reconnect_max_s = {reconnect_max_s}\n", text, count=1))


class Sensor(threading.Thread):
    """Publishes ``rate`` readings/s in messages of 20 to a (gateway) broker, QoS 1, persistent session, with
    a spike (SPIKE added to feature 2) every ``every`` readings; ``limit`` readings in all (0 = until stopped).
    ``seed`` 1 is the device the test model was trained on (``trained_home``): few false alarms."""

    def __init__(self, url: str, device: str, rate: float, every: int, limit: int = 0, seed: int = 5) -> None:
        super().__init__(daemon=True, name="sensor")
        cfg = BrokerConfig(url=url, client_id=f"sensor-{device}", reconnect_max_s=2)
        self.client = make_client(cfg, "sensor", persistent=True)
        connect(self.client, cfg)
        self.device, self.rate, self.every, self.limit = device, rate, every, limit
        self.sim = DeviceSimulator(device, seed, period_s=20.0, rate_hz=20.0)
        self.t = time.time() - 7200  # 20 Hz sample clock, faster than the wall clock
        self.sent = 0
        self.stamps: list[float] = []  # every reading the gateway broker accepted (PUBACK), in order
        self.stop = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set() and not (self.limit and self.sent >= self.limit):
            readings: list[Reading] = []
            for _ in range(20):
                self.t += 0.05
                values = self.sim.reading(self.t)
                if (self.sent + len(readings)) % self.every == self.every // 2:
                    values = {f: (v + SPIKE if f == FEATURES[2] and v is not None else v) for f, v in values.items()}
                readings.append(Reading(ts=self.t, values=values))
            msg = Readings(v=PROTOCOL_VERSION, readings=readings)
            self.client.publish(device_topic(self.device, Channel.READINGS), encode(msg), qos=1).wait_for_publish(30)
            self.stamps += [r.ts for r in readings]
            self.sent += len(readings)
            # Pace to the rate: wait for the wall clock to catch up with what was sent (or the stop signal).
            self.stop.wait(max(0.0, start + self.sent / self.rate - time.monotonic()))
        self.done.set()


@dataclass
class Raised:
    """What an agent raised (anomaly event ids) and put in its outbox (sync batches: rows per batch id)."""

    events: list[str]
    batches: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.batches.values())

    def __or__(self, other: Raised) -> Raised:
        """Both, each id once (the log and the outbox of one agent overlap)."""
        return Raised(list(dict.fromkeys(self.events + other.events)), {**self.batches, **other.batches})


def raised(*logs: Path) -> Raised:
    events: list[str] = []
    batches: dict[str, int] = {}
    for log in logs:
        text = log.read_text() if log.exists() else ""
        events += EVENT_RE.findall(text)
        batches.update({b: int(n) for b, n in SYNC_RE.findall(text)})
    return Raised(events, batches)


def in_outbox(state_dir: Path) -> Raised:
    """Anomaly events and sync batches waiting in a (SIGKILLed) agent's outbox.  The agent logs a report just
    after it is durable, so a SIGKILL can fall between the two: such a report is delivered after the restart
    but is in no log.  What was raised = the log | this, read right after the kill (read-write: the agent is
    dead, and SQLite may have to recover its write-ahead log)."""
    conn = sqlite3.connect(state_dir / OUTBOX_FILE)
    try:
        rows = conn.execute("SELECT id, kind, payload FROM entries WHERE kind IN (?, ?)",
                            (Kind.ANOMALY.value, Kind.SYNC.value)).fetchall()
    finally:
        conn.close()
    events = [id_ for id_, kind, _ in rows if kind == Kind.ANOMALY.value]
    batches = {id_: len(decode(Channel.SYNC, bytes(payload)).flags) for id_, kind, payload in rows
               if kind == Kind.SYNC.value}
    return Raised(events, batches)


@dataclass
class Stored:
    events: list[str]
    batches: dict[str, int]
    timestamps: np.ndarray

    @property
    def rows(self) -> int:
        return sum(self.batches.values())


def stored(home: HubHome, device: str) -> Stored:
    with home.sessions()() as s:
        events = list(s.scalars(select(db.AnomalyEvent.event_id).where(db.AnomalyEvent.device_id == device)))
        batches = {b.batch_id: b.rows for b in s.scalars(select(db.SyncBatch).where(db.SyncBatch.device_id == device))}
        rows = [npy_load(b.data) for b in s.scalars(select(db.SyncBatch).where(db.SyncBatch.device_id == device))]
    ts = np.concatenate([r[:, 0] for r in rows]) if rows else np.empty(0)
    return Stored(events, batches, ts)
