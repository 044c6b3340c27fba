"""`cloud-hub serve --workers 3` on a real Mosquitto and a real PostgreSQL: the shared subscription hands
each event to one worker, every event is stored and acknowledged exactly once, exactly one worker leads,
and when the leader is SIGKILLed another takes over while ingest goes on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.cli import main
from cloud_hub.home import HubHome
from cloud_hub.ingest.leader import LEADER_LOCK
from cloud_hub.procs import die_with_parent
from shared import protocol as p
from shared.mqtt import BrokerConfig, connect, make_client
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.integration
DEVICES = [f"gw-{i}" for i in range(6)]


class Fleet:
    """Publishes anomaly events as several devices (QoS 1) and collects the hub's Acks."""

    def __init__(self, broker: RunningBroker) -> None:
        cfg = BrokerConfig(url=broker.url)
        self.acked: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.client = make_client(cfg, "test-fleet", persistent=False)
        self.client.on_connect = lambda c, *_: c.subscribe(p.subscription(p.Channel.ACK), qos=1)
        self.client.on_message = self._on_ack
        connect(self.client, cfg)
        wait_until(self.client.is_connected, 5, "publisher connected")

    def _on_ack(self, _c: object, _u: object, msg: object) -> None:
        ack = p.decode(p.Channel.ACK, msg.payload)  # type: ignore[attr-defined]
        with self._lock:
            self.acked.update(ack.ids)

    def send_events(self, n: int) -> list[str]:
        ids, infos = [], []
        for i in range(n):
            device = DEVICES[i % len(DEVICES)]
            event = p.AnomalyEvent(v=p.PROTOCOL_VERSION, event_id=uuid.uuid4().hex, device=device, ts=1.7e9 + i,
                                   detected_at=1.7e9 + i, score=5.0, threshold=1.0, model_version=1,
                                   top_features=["temp"], attribution={"temp": 0.9}, likelihood=0.99)
            ids.append(event.event_id)
            infos.append(self.client.publish(p.device_topic(device, p.Channel.ANOMALY), p.encode(event), qos=1))
        for info in infos:
            info.wait_for_publish(30)
        return ids

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _workers(home: HubHome) -> list[db.HubWorker]:
    with home.sessions()() as s:
        return list(s.scalars(select(db.HubWorker).order_by(db.HubWorker.name)))


def _events(home: HubHome) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.count()).select_from(db.AnomalyEvent)) or 0)


def _lock_holders(home: HubHome) -> int:
    """Backends holding the leader's advisory lock, straight from PostgreSQL."""
    with home.engine().connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                                     "AND objid = :k"), {"k": LEADER_LOCK}).scalar() or 0)


def _live_leaders(home: HubHome, since: float) -> list[db.HubWorker]:
    return [w for w in _workers(home) if w.leader and w.last_seen >= since]


def _the_leader(home: HubHome) -> db.HubWorker:
    """The one worker leading with a heartbeat in the last 3 s; never two at once (polled, not read once: on a
    loaded machine a heartbeat can come late)."""
    found: list[db.HubWorker] = []

    def one() -> bool:
        found[:] = _live_leaders(home, time.time() - 3)
        assert len(found) <= 1, [(w.name, w.pid) for w in found]
        return len(found) == 1

    wait_until(one, 30, "one live leader")
    return found[0]


def test_three_workers_store_every_event_once_and_one_leader_survives_a_kill(
        tmp_path: Path, mosquitto: RunningBroker, postgres_url: str) -> None:
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url, database_url=postgres_url)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "--home", str(home.path), "serve", "--workers",
                              "3"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent())
    fleet = Fleet(mosquitto)
    try:
        t0 = time.time()
        wait_until(lambda: len([w for w in _workers(home) if w.last_seen > t0]) == 3, 90, "3 workers up")
        _the_leader(home)
        assert _lock_holders(home) == 1
        ids = fleet.send_events(3000)
        wait_until(lambda: _events(home) == 3000, 90, "3000 events stored")
        wait_until(lambda: all(fleet.acked[i] >= 1 for i in ids), 30, "every event acknowledged")
        # Stored once: no worker found another's row (a duplicate delivery would count here), and the
        # shared subscription spread the work.
        wait_until(lambda: sum(w.stored for w in _workers(home)) == 3000, 15, "workers' counters")
        workers = _workers(home)
        assert sum(w.duplicates for w in workers) == 0, [(w.name, w.duplicates) for w in workers]
        assert sum(1 for w in workers if w.stored > 0) >= 2, [(w.name, w.stored) for w in workers]
        assert len({w.client_id for w in workers}) == 3

        leader = _the_leader(home)
        os.kill(leader.pid, signal.SIGKILL)
        killed_at = time.time()
        more = fleet.send_events(600)  # while the leader is gone and its successor is being elected

        def new_leader() -> bool:
            live = _live_leaders(home, killed_at + 0.5)
            return len(live) == 1 and live[0].pid != leader.pid

        wait_until(new_leader, 30, "another worker elected after the leader was killed")
        assert _lock_holders(home) == 1
        wait_until(lambda: _events(home) == 3600, 90, "events sent around the kill stored")
        wait_until(lambda: all(fleet.acked[i] >= 1 for i in more), 60, "events around the kill acknowledged")
        # The killed worker was restarted under its name (same MQTT session) and follows the leader.
        wait_until(lambda: next(w for w in _workers(home) if w.name == leader.name).pid != leader.pid, 30,
                   "killed worker restarted")
        _the_leader(home)
        assert _lock_holders(home) == 1
    finally:
        fleet.close()
        serve.terminate()
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert _events(home) == 3600
    assert not any(w.leader for w in _workers(home))  # each stopped worker cleared its flag


def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    HubHome(tmp_path / "hub").init()
    out = CliRunner().invoke(main, ["--home", str(tmp_path / "hub"), "serve", "--workers", "3"])
    assert out.exit_code == 1 and "needs PostgreSQL" in out.output, out.output
    out = CliRunner().invoke(main, ["--home", str(tmp_path / "hub"), "serve", "--worker", "a"])
    assert out.exit_code == 1 and "need PostgreSQL" in out.output, out.output


def test_single_sqlite_hub_leads_and_a_second_on_the_same_file_does_not(tmp_path: Path,
                                                                        mosquitto: RunningBroker) -> None:
    from cloud_hub.ingest import HubServer

    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    first = HubServer(home)
    first.start()
    try:
        assert first.leader.is_leader()
        home.update_config({"broker": {"client_id": "second-hub"}})
        second = HubServer(home)
        second.start()
        try:
            assert not second.leader.is_leader()
            assert [(w.name, w.leader) for w in _workers(home)] == [("edgesentry-hub", True), ("second-hub", False)]
            out = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["--home", str(home.path), "workers"])
            assert out.exit_code == 0 and "edgesentry-hub" in out.output and "second-hub" in out.output, out.output
        finally:
            second.stop()
    finally:
        first.stop()
