"""Offline operation: the agent scores with no broker at all and delivers everything once it appears."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.brokers import free_port, mosquitto_path, start_mosquitto
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from edge_agent.model_store import ModelStore
from edge_agent.update import provision
from shared import bundle as bundle_fmt
from shared.signing import parse_public_key
from tests.conftest import CSV_REPLAY_TOML, simulated_series, start_agent, wait_until, write_csv

pytestmark = pytest.mark.integration


def test_reports_raised_while_offline_are_delivered_after_reconnect(tmp_path: Path, trained_home) -> None:  # type: ignore[no-untyped-def]
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed")
    src_home, exported = trained_home
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    store = ModelStore(tmp_path / "state", [parse_public_key(src_home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(exported.bundle_dir)))
    provision(tmp_path / "state", 1)
    ts, values = simulated_series(60, seed=1, t0=1_700_200_000.0)
    values[900:903, 2] -= 30.0
    write_csv(tmp_path / "replay.csv", ts, values)
    agent, log = start_agent(tmp_path, "gw-offline", src_home.public_key(), url, "heartbeat_s = 0.5\n" + CSV_REPLAY_TOML + "\n[sync]\ninterval_s = 0.5")
    broker = server = None
    try:
        # No broker exists yet: the agent scores the file offline and raises the spike's event.
        wait_until(lambda: "finished after 1200 readings" in log.read_text() and "anomaly at" in log.read_text(),
                   60, "offline replay and the spike's event")
        broker_started = time.time()
        broker = start_mosquitto(port, workdir=tmp_path)
        home = HubHome(tmp_path / "hub")
        home.init(url)
        server = HubServer(home)
        server.start()

        def totals() -> tuple[int, int, int]:
            with home.sessions()() as s:
                rows = int(s.scalar(select(func.sum(db.SyncBatch.rows))) or 0)
                events = int(s.scalar(select(func.count()).select_from(db.AnomalyEvent)
                                      .where(db.AnomalyEvent.ts >= float(ts[900]),
                                             db.AnomalyEvent.ts <= float(ts[900 + 16]))) or 0)
                received = int(s.scalar(select(func.max(db.Heartbeat.readings_received))) or 0)
            return rows, events, received

        wait_until(lambda: totals() == (1200, 1, 1200), 60, "synced rows, the offline event and counters")
        with home.sessions()() as s:
            event = s.scalars(select(db.AnomalyEvent).where(db.AnomalyEvent.ts >= float(ts[900]))).first()
            assert event is not None and event.top_features[0] == "power"
            assert event.detected_at < broker_started < event.received_at  # raised before the broker existed
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        if server:
            server.stop()
        if broker:
            broker.stop()
