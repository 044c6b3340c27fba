"""Delivery under faults on a real Mosquitto with the real hub: every anomaly the agent raised (it logs
each one after it is in the outbox) is stored exactly once; every sync batch it queued arrives once;
readings on the agent's own broker and from a CSV survive an agent SIGKILL and are stored exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker, free_port, mosquitto_path, start_mosquitto
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from edge_agent.mqtt_source import SUBSCRIBED_LOG
from tests.conftest import REPO, start_agent, wait_until
from tests.faults import (
    Raised,
    Sensor,
    hub_toml_fast_reconnect,
    in_outbox,
    install_model,
    raised,
    spiky_csv,
    stored,
)

pytestmark = pytest.mark.integration
DEVICE = "gw-faults"
T0 = 1_700_300_000.0
FAST = "reconnect_max_s = 2"


def _agent_toml(rate_hz: float, outbox: str = "") -> str:
    return ("heartbeat_s = 1.0\ntelemetry_s = 1.0\n[[sources]]\ntype = \"csv\"\npath = \"replay.csv\"\n"
            f"rate_hz = {rate_hz}\nrestamp = false\n[sync]\ninterval_s = 0.5\n[outbox]\nack_timeout_s = 3\n{outbox}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, object]]:
    """Processes a test starts; all stopped at the end whatever happens."""
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed")
    things: dict[str, object] = {}
    yield things
    for proc in things.get("agents", []):  # type: ignore[attr-defined]
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if isinstance(server := things.get("server"), HubServer):
        server.stop()
    if isinstance(broker := things.get("broker"), RunningBroker):
        broker.stop()


def _hub(tmp_path: Path, url: str) -> tuple[HubHome, HubServer]:
    home = HubHome(tmp_path / "hub")
    home.init(url)
    hub_toml_fast_reconnect(home)
    server = HubServer(home)
    server.start()
    return home, server


def _broker(tmp_path: Path, port: int | None = None) -> RunningBroker:
    (tmp_path / "broker").mkdir(exist_ok=True)
    return start_mosquitto(port, workdir=tmp_path / "broker")


def _assert_exact(home: HubHome, r: Raised, n_readings: int | None) -> None:
    s = stored(home, DEVICE)
    assert len(set(r.events)) == len(r.events) > 0
    assert sorted(s.events) == sorted(r.events)  # every raised event stored, exactly once
    assert s.batches == r.batches  # every queued sync batch stored once, whole
    assert len(set(s.timestamps.tolist())) == len(s.timestamps) == r.rows
    if n_readings is not None:
        assert r.rows == n_readings


def test_broker_outage_mid_stream_loses_and_duplicates_nothing(tmp_path: Path, trained_home, cluster) -> None:  # type: ignore[no-untyped-def]
    src_home, exported = trained_home
    broker = cluster["broker"] = _broker(tmp_path)
    home, cluster["server"] = _hub(tmp_path, broker.url)
    install_model(tmp_path / "state", src_home, exported.bundle_dir)
    n = spiky_csv(tmp_path / "replay.csv", seconds=100, rate_hz=20, every=100, t0=T0)  # a spike a second
    agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), broker.url, _agent_toml(100), FAST)
    cluster["agents"] = [agent]

    wait_until(lambda: len(raised(log).events) >= 4 and len(stored(home, DEVICE).events) >= 2, 90,
               "spikes before the outage raised and stored")
    broker.stop()
    before = len(raised(log).events)
    wait_until(lambda: len(raised(log).events) >= before + 8, 60, "spikes raised during the outage")
    broker.restart()
    wait_until(lambda: "finished after" in log.read_text(), 90, "the replay to finish")
    wait_until(lambda: len(stored(home, DEVICE).events) >= len(raised(log).events)
               and stored(home, DEVICE).rows >= n, 120, "everything delivered after the outage")
    _assert_exact(home, raised(log), n)
    assert len(raised(log).events) >= before + 10  # spikes before, during and after


def test_agent_killed_while_broker_down_delivers_after_both_restart(tmp_path: Path, trained_home, cluster) -> None:  # type: ignore[no-untyped-def]
    src_home, exported = trained_home
    broker = cluster["broker"] = _broker(tmp_path)
    home, cluster["server"] = _hub(tmp_path, broker.url)
    install_model(tmp_path / "state", src_home, exported.bundle_dir)
    spiky_csv(tmp_path / "replay.csv", seconds=100, rate_hz=20, every=100, t0=T0)
    agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), broker.url, _agent_toml(100), FAST)
    cluster["agents"] = [agent]

    wait_until(lambda: len(stored(home, DEVICE).events) >= 2, 90, "events stored before the fault")
    broker.stop()
    pending = len(raised(log).events)
    wait_until(lambda: len(raised(log).events) >= pending + 4, 60, "events raised while the broker is down")
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    logged = raised(log)
    offline = logged | in_outbox(tmp_path / "state")  # a report made durable just before the kill is in no log
    broker.restart()
    # Restart without the CSV source: this run only has to deliver what the killed one left on disk.
    agent2, _ = start_agent(tmp_path, DEVICE, src_home.public_key(), broker.url,
                            "heartbeat_s = 1.0\n[outbox]\nack_timeout_s = 3", FAST)
    cluster["agents"] = [agent, agent2]
    wait_until(lambda: sorted(stored(home, DEVICE).events) == sorted(offline.events)
               and stored(home, DEVICE).batches == offline.batches, 90, "the killed agent's outbox delivered")
    _assert_exact(home, offline, None)
    assert raised(log).events == logged.events  # the second run raised nothing new
    agent2.terminate()
    assert agent2.wait(30) == 0


def test_ten_minute_outage_at_50_hz_keeps_every_anomaly_and_counts_drops(tmp_path: Path, trained_home,  # type: ignore[no-untyped-def]
                                                                        cluster) -> None:
    src_home, exported = trained_home
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    install_model(tmp_path / "state", src_home, exported.bundle_dir)
    n = spiky_csv(tmp_path / "replay.csv", seconds=600, rate_hz=50, every=1000, t0=T0)
    assert n == 30_000
    budget = 400_000  # well below what ten minutes of sync batches take (~1.4 MB packed, ~2.5 MB as JSON)
    agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), url,
                             _agent_toml(0, f"max_bytes = {budget}\n"), FAST)
    cluster["agents"] = [agent]
    # No broker for the whole replay: ten minutes of readings (replayed fast) pile up in the outbox.
    wait_until(lambda: raised(log).rows == n, 240, "all 30,000 readings scored and queued for sync")
    offline = raised(log)

    def status() -> dict[str, object]:
        out = subprocess.run([sys.executable, "-m", "edge_agent.cli", "status", "--config",
                              str(tmp_path / "agent.toml"), "--json"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        return dict(json.loads(out))

    st = status()
    dropped = dict(st["outbox_dropped"])  # type: ignore[call-overload]
    assert dropped.get("sync", 0) > 0 and "anomaly" not in dropped
    assert int(st["outbox_bytes"]) <= budget  # type: ignore[call-overload]

    broker = cluster["broker"] = _broker(tmp_path, port)
    home, cluster["server"] = _hub(tmp_path, broker.url)
    wait_until(lambda: sorted(stored(home, DEVICE).events) == sorted(offline.events)
               and len(stored(home, DEVICE).batches) + dropped["sync"] == len(offline.batches), 120,
               "every anomaly and every sync batch that was not dropped delivered")
    s = stored(home, DEVICE)
    assert len(offline.events) >= 30  # a spike every 1000 readings, all kept
    assert set(s.batches) <= set(offline.batches)
    assert all(offline.batches[b] == rows for b, rows in s.batches.items())
    assert len(set(s.timestamps.tolist())) == len(s.timestamps) == s.rows < n
    # The hub keeps the heartbeat's outbox figures: the drops by kind are on the device (devices list/show).
    def hub_drops() -> dict[str, int]:
        with home.sessions()() as ses:
            dev = ses.get(db.Device, DEVICE)
            return dict(dev.outbox_dropped) if dev is not None else {}

    wait_until(lambda: hub_drops().get("sync", 0) >= dropped["sync"], 30, "the drops reported to the hub")
    assert "anomaly" not in hub_drops()
    print(f"\n10-minute outage at 50 Hz: {len(offline.events)} events raised, {len(s.events)} stored; "
          f"{len(offline.batches)} sync batches queued, {len(s.batches)} stored, dropped by kind {dropped}")


def _sigkill(proc: subprocess.Popen[bytes]) -> None:
    assert proc.poll() is None, "the agent died on its own"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_readings_on_the_agents_own_broker_survive_sigkill_exactly_once(tmp_path: Path, trained_home,  # type: ignore[no-untyped-def]
                                                                        cluster) -> None:
    """No [[sources]]: the agent reads edgesentry/<device>/readings on its (cloud) broker.  A sensor keeps
    publishing there while the agent is SIGKILLed and restarted: every reading reaches the hub once."""
    src_home, exported = trained_home
    broker = cluster["broker"] = _broker(tmp_path)
    home, cluster["server"] = _hub(tmp_path, broker.url)
    install_model(tmp_path / "state", src_home, exported.bundle_dir)
    toml = "heartbeat_s = 1.0\ntelemetry_s = 1.0\n[sync]\ninterval_s = 0.5\n[outbox]\nack_timeout_s = 3"

    def start() -> tuple[subprocess.Popen[bytes], Path]:
        before = log.read_text().count(SUBSCRIBED_LOG) if log.is_file() else 0
        proc, path = start_agent(tmp_path, DEVICE, src_home.public_key(), broker.url, toml, FAST)
        wait_until(lambda: path.read_text().count(SUBSCRIBED_LOG) > before, 60, "the readings subscription")
        return proc, path

    log = tmp_path / "agent.log"
    agent, log = start()  # the first run creates the readings session: readings count from now on
    cluster["agents"] = [agent]
    sensor = Sensor(broker.url, DEVICE, rate=200, every=100)
    sensor.start()
    wait_until(lambda: len(raised(log).events) >= 2 and sensor.sent >= 600, 60, "spikes raised before the kill")
    _sigkill(agent)
    killed_at = sensor.sent
    unlogged = in_outbox(tmp_path / "state")  # a report made durable just before the kill is in no log
    wait_until(lambda: sensor.sent >= killed_at + 600, 30, "readings published while the agent is down")
    agent, log = start()
    cluster["agents"] = [*cluster["agents"], agent]  # type: ignore[list-item]
    wait_until(lambda: sensor.sent >= killed_at + 1200, 30, "readings after the restart")
    sensor.stop.set()
    assert sensor.done.wait(30)
    published = np.asarray(sensor.stamps)

    def delivered() -> bool:
        s = stored(home, DEVICE)
        return bool(np.isin(published, s.timestamps).all()) and set(s.events) >= set((raised(log) | unlogged).events)

    wait_until(delivered, 90, "every published reading and every raised event at the hub", interval_s=0.5)
    s, r = stored(home, DEVICE), raised(log) | unlogged
    assert len(s.timestamps) == len(np.unique(s.timestamps)) == len(published)  # each reading exactly once
    assert sorted(set(s.events)) == sorted(set(r.events)) and len(s.events) == len(set(s.events))
    # Telemetry names the model and counts the windows it flagged (the rollout gate's anomaly rate).
    with home.sessions()() as ses:
        tele = list(ses.scalars(select(db.TelemetryRecord).where(db.TelemetryRecord.device_id == DEVICE,
                                                                 db.TelemetryRecord.scored > 0)))
    assert tele and {t.model_version for t in tele} == {1}
    assert 0 < sum(t.flagged or 0 for t in tele) < sum(t.scored for t in tele)
    _sigkill(agent)


def test_csv_replay_resumes_after_sigkill_exactly_once(tmp_path: Path, trained_home, cluster) -> None:  # type: ignore[no-untyped-def]
    """The CSV position is committed with the sync rows: a SIGKILLed agent resumes where they end."""
    src_home, exported = trained_home
    broker = cluster["broker"] = _broker(tmp_path)
    home, cluster["server"] = _hub(tmp_path, broker.url)
    install_model(tmp_path / "state", src_home, exported.bundle_dir)
    n = spiky_csv(tmp_path / "replay.csv", seconds=60, rate_hz=20, every=100, t0=T0)
    agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), broker.url, _agent_toml(200), FAST)
    cluster["agents"] = [agent]
    wait_until(lambda: stored(home, DEVICE).rows >= 300, 60, "a part of the file stored")
    _sigkill(agent)
    unlogged = in_outbox(tmp_path / "state")  # a report made durable just before the kill is in no log
    agent, log = start_agent(tmp_path, DEVICE, src_home.public_key(), broker.url, _agent_toml(200), FAST)
    cluster["agents"] = [*cluster["agents"], agent]  # type: ignore[list-item]
    wait_until(lambda: "finished after" in log.read_text(), 60, "the resumed replay to finish")
    wait_until(lambda: stored(home, DEVICE).rows >= n
               and set(stored(home, DEVICE).events) >= set((raised(log) | unlogged).events), 60, "the rest delivered")
    s = stored(home, DEVICE)
    assert len(s.timestamps) == len(np.unique(s.timestamps)) == n  # every row once: no gap, no overlap
    assert sorted(set(s.events)) == sorted(set((raised(log) | unlogged).events))
    assert "resumes at row" in log.read_text()
