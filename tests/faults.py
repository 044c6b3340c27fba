"""Helpers for the delivery fault tests and the chaos suite: spiky data, what the agent says it raised
and synced (its log), what the hub stored (its database)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.data import npy_load
from cloud_hub.home import HubHome
from edge_agent.model_store import ModelStore
from shared import bundle as bundle_fmt
from shared.signing import parse_public_key
from tests.conftest import simulated_series, write_csv

EVENT_RE = re.compile(r"anomaly at [0-9.]+: .* id ([0-9a-f]{32})$", re.M)
SYNC_RE = re.compile(r"sync batch ([0-9a-f]{32}): (\d+) rows queued$", re.M)
SPIKE = -30.0  # added to `power` (feature 2) for three readings: a clear anomaly for the test model


def install_model(state_dir: Path, home: HubHome, bundle_dir: Path) -> None:
    """Put the trained bundle in an agent's state_dir as the active model (what a rollout would do)."""
    store = ModelStore(state_dir, [parse_public_key(home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(bundle_dir)))
    store.set_active(1)


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


@dataclass
class Raised:
    """What agent logs say was raised (anomaly event ids) and put in the outbox (sync batches)."""

    events: list[str]
    batches: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.batches.values())


def raised(*logs: Path) -> Raised:
    events: list[str] = []
    batches: dict[str, int] = {}
    for log in logs:
        text = log.read_text() if log.exists() else ""
        events += EVENT_RE.findall(text)
        batches.update({b: int(n) for b, n in SYNC_RE.findall(text)})
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
