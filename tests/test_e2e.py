"""The whole loop on real components: Mosquitto, the hub server, an `edge-agent run` process,
training, int8 export, signed rollout, anomaly report, sync, retrain, second rollout."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from cloud_hub import db, rollout, training
from cloud_hub.brokers import RunningBroker
from cloud_hub.data import from_synced
from cloud_hub.demo.simulator import FEATURES, DeviceSimulator
from cloud_hub.export import Quantization, export
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from edge_agent.update import RecordFile
from shared.mqtt import BrokerConfig, connect, make_client
from shared.protocol import PROTOCOL_VERSION, Channel, ModelState, Reading, Readings, device_topic, encode
from tests.conftest import REPO, start_agent, wait_until

pytestmark = pytest.mark.integration
DEVICE = "gw-test"


def _agent(tmp_path: Path, home: HubHome, broker: RunningBroker) -> subprocess.Popen[bytes]:
    proc, _ = start_agent(tmp_path, DEVICE, home.public_key(), broker.url,
                          "heartbeat_s = 1.0\ntelemetry_s = 1.0\n[sync]\ninterval_s = 1.0\n[update]\nprobation_s = 1.0")
    return proc


class Sensor:
    """Publishes simulated readings to the agent's readings topic, batched like a real gateway."""

    def __init__(self, broker: RunningBroker) -> None:
        self.cfg = BrokerConfig(url=broker.url)
        self.client = make_client(self.cfg, "test-sensor", persistent=False)
        connect(self.client, self.cfg)
        self.sim = DeviceSimulator(DEVICE, 3, period_s=20.0, rate_hz=20.0)
        self.t = time.time() - 3600
        self.sent = 0

    def send(self, n: int, spike: bool = False) -> float:
        """Send n readings (20 Hz sample clock, as fast as possible); returns the spike's timestamp."""
        readings = []
        spike_ts = 0.0
        for i in range(n):
            self.t += 0.05
            values = self.sim.reading(self.t)
            if spike and i == n - 5:
                values = {f: (v + 30.0 if f == FEATURES[0] and v is not None else v) for f, v in values.items()}
                spike_ts = self.t
            readings.append(Reading(ts=self.t, values=values))
        for i in range(0, n, 100):
            msg = Readings(v=PROTOCOL_VERSION, readings=readings[i : i + 100])
            self.client.publish(device_topic(DEVICE, Channel.READINGS), encode(msg), qos=1).wait_for_publish(10)
        self.sent += n
        return spike_ts


def _count(home: HubHome, model: type, *where: object) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _device(home: HubHome) -> db.Device | None:
    with home.sessions()() as s:
        return s.get(db.Device, DEVICE)


def test_full_loop_through_mosquitto(tmp_path: Path, mosquitto: RunningBroker) -> None:
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    server = HubServer(home)
    server.start()
    agent = _agent(tmp_path, home, mosquitto)
    sensor = Sensor(mosquitto)
    try:
        wait_until(lambda: _device(home) is not None and _device(home).online, 30, "agent online")  # type: ignore[union-attr]

        # 1. No model yet: the agent syncs raw readings to the hub.
        sensor.send(2400)
        wait_until(lambda: _synced_rows(home) >= 2400, 60, "synced rows")

        # 2. Retrain on synced data, export int8, sign, roll out.
        cfg = replace(home.config().training, epochs=6, window=16)
        with home.sessions()() as s:
            data = from_synced(s, window=cfg.window)
        assert sorted(data.features) == sorted(FEATURES) and data.rows == 2400
        v1 = training.train(home, data, cfg).version
        export(home, v1, Quantization.INT8)
        info = rollout.start(home, v1, "int8")
        assert info.devices == [DEVICE]
        statuses = rollout.wait_for_activation(home, v1, {DEVICE}, 60)
        assert statuses[DEVICE].model_version == v1 and statuses[DEVICE].runtime == "litert"
        wait_until(lambda: _rollout_state(home, info.rollout_id) in _RUNNING_IT, 30,
                   "activation recorded by the hub")

        # 3. Normal data raises nothing; a spike is reported with the hub receiving it.
        sensor.send(400)
        spike_ts = sensor.send(200, spike=True)
        wait_until(lambda: _count(home, db.AnomalyEvent, db.AnomalyEvent.ts >= spike_ts) >= 1, 30, "anomaly event")
        with home.sessions()() as s:
            event = s.scalars(select(db.AnomalyEvent).where(db.AnomalyEvent.ts >= spike_ts)).first()
            assert event is not None and event.model_version == v1 and event.score > event.threshold
            assert event.ts - spike_ts < 16 * 0.05 + 1e-6  # within one window of the spike
            assert event.top_features[0] == FEATURES[0]
            # Attribution: the spiked channel carries the largest share of the window's score.
            assert list(event.attribution)[0] == FEATURES[0] and event.attribution[FEATURES[0]] > 0.25
            assert 0.0 < event.likelihood <= 1.0
            false_alarms = s.scalar(select(func.count()).select_from(db.AnomalyEvent)
                                    .where(db.AnomalyEvent.ts < spike_ts))
        assert false_alarms <= 1

        # 4. Retrain on everything synced; readings keep flowing during the swap and none is lost.
        wait_until(lambda: _synced_rows(home) >= sensor.sent, 60, "all rows synced")
        with home.sessions()() as s:
            data2 = from_synced(s, window=cfg.window)
        assert data2.excluded_rows > 0  # the flagged spike and its surroundings are not trained on
        v2 = training.train(home, data2, cfg).version
        export(home, v2, Quantization.INT8)
        rollout.start(home, v2, "int8")
        for _ in range(10):
            sensor.send(50)
        statuses = rollout.wait_for_activation(home, v2, {DEVICE}, 60)
        assert statuses[DEVICE].model_version == v2
        sensor.send(100)
        # Nothing dropped: every reading arrived, and every one since v1 went live was scored
        # (the 2400 that came before any model existed are synced, not scored).
        wait_until(lambda: _last_heartbeat(home) == (sensor.sent, sensor.sent - 2400), 30,
                   "every reading received and scored")
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        server.stop()
    # The agent persisted v2 (on probation over v1, or committed) and can restart from disk without the hub.
    rec = RecordFile(tmp_path / "state").load()
    assert (rec.state, rec.candidate, rec.committed) in ((ModelState.ACTIVE, v2, v1), (ModelState.COMMITTED, None, v2))


def _last_heartbeat(home: HubHome) -> tuple[int, int] | None:
    with home.sessions()() as s:
        hb = s.scalars(select(db.Heartbeat).order_by(db.Heartbeat.seq.desc())).first()
        return (hb.readings_received, hb.readings_scored) if hb else None


def _synced_rows(home: HubHome) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.sum(db.SyncBatch.rows))) or 0)


_RUNNING_IT = (db.DeviceRolloutState.ACTIVATED, db.DeviceRolloutState.HEALTHY)  # on probation, or passed it


def _rollout_state(home: HubHome, rollout_id: int) -> db.DeviceRolloutState | None:
    with home.sessions()() as s:
        row = s.scalar(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == rollout_id))
        return row.state if row else None


def test_hub_counts_malformed_messages_and_keeps_serving(mosquitto: RunningBroker, hub_server: HubServer) -> None:
    server = hub_server
    home = server.home
    cfg = BrokerConfig(url=mosquitto.url)
    client = make_client(cfg, "test-fuzz", persistent=False)
    connect(client, cfg)
    try:
        garbage = [
            ("edgesentry/gw-1/anomaly", b"\x00\x01garbage"),
            ("edgesentry/gw-1/heartbeat", b'{"v": 2}'),
            ("edgesentry/gw-1/sync", b'{"v": 2, "device": "gw-1", "batch_id": "b", "features": ["a"], "rows": [[1]]}'),
            ("edgesentry/gw-1/status", b'{"v": 99}'),
            ("edgesentry/gw-1/anomaly", b"{" + b" " * 300_000 + b"}"),
            ("edgesentry/gw-2/heartbeat", b'{"v":2,"device":"gw-1","ts":1,"seq":1,"uptime_s":1,"model_version":null,'
                                          b'"readings_received":0,"readings_scored":0,"anomalies":0,"rejected":0,'
                                          b'"queue_depth":0}'),
        ]
        for topic, payload in garbage:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        good = ('{"v":2,"device":"gw-1","ts":1,"seq":1,"uptime_s":1,"model_version":null,"readings_received":0,'
                '"readings_scored":0,"anomalies":0,"rejected":0,"queue_depth":0}')
        client.publish("edgesentry/gw-1/heartbeat", good.encode(), qos=1).wait_for_publish(5)
        wait_until(lambda: _count(home, db.Heartbeat) == 1, 10, "valid heartbeat stored")
        assert server.rejects.total == len(garbage)
        assert set(server.rejects.counts()) == {"not_json", "schema", "bad_version", "too_large", "device_mismatch"}
    finally:
        client.disconnect()
        client.loop_stop()


def test_agent_survives_malformed_readings_and_bad_bundles(tmp_path: Path, mosquitto: RunningBroker,
                                                           trained_home) -> None:  # type: ignore[no-untyped-def]
    """Garbage readings are counted; a bundle signed by another key is refused and reported."""
    from shared import bundle as bundle_fmt

    home = HubHome(tmp_path / "hub")  # the hub the agent trusts (its announcements are signed)
    home.init(mosquitto.url)
    other = HubHome(tmp_path / "other")  # a key the agent does not trust
    other.init(mosquitto.url)
    server = HubServer(home)
    server.start()
    agent = _agent(tmp_path, home, mosquitto)
    sensor = Sensor(mosquitto)
    try:
        wait_until(lambda: _device(home) is not None, 30, "agent seen")
        sensor.client.publish(device_topic(DEVICE, Channel.READINGS), b"not json", qos=1).wait_for_publish(5)
        sensor.send(50)
        # Put a bundle of the trained model signed by the untrusted key in place and announce it.
        _, exported = trained_home
        files = bundle_fmt.read_dir(exported.bundle_dir)
        manifest = bundle_fmt.parse_manifest(files[bundle_fmt.MANIFEST])
        evil = bundle_fmt.pack(bundle_fmt.signed_files(manifest, {bundle_fmt.MODEL_FILE: files[bundle_fmt.MODEL_FILE]},
                                                       other.signing_key()))
        path = tmp_path / "evil.tar.gz"
        path.write_bytes(evil)
        with home.sessions()() as s:
            s.add(db.ModelVersion(version=1, name="ae-lstm", source="test", artifacts_dir=""))
            s.add(db.Bundle(version=1, quantization="int8", path=str(path), size=len(evil),
                            sha256=bundle_fmt.sha256_hex(evil)))
            s.commit()
        info = rollout.start(home, 1, "int8")
        statuses = rollout.wait_for_activation(home, 1, {DEVICE}, 30, rollout_id=info.rollout_id)
        assert statuses[DEVICE].model_version is None and statuses[DEVICE].rollout_id == info.rollout_id
        assert statuses[DEVICE].failed_version == 1 and "untrusted key" in statuses[DEVICE].error
        wait_until(lambda: _rollout_state(home, info.rollout_id) == db.DeviceRolloutState.FAILED, 10, "failure recorded")
        wait_until(lambda: _heartbeat_rejected(home) >= 1, 10, "rejection in heartbeat")

        # The operator fixes the bundle (signed by the key the agent trusts) and rolls out v1 again.
        good = bundle_fmt.pack(bundle_fmt.signed_files(manifest, {bundle_fmt.MODEL_FILE: files[bundle_fmt.MODEL_FILE]},
                                                       home.signing_key()))
        path.write_bytes(good)
        with home.sessions()() as s:
            row = s.scalars(select(db.Bundle)).one()
            row.size, row.sha256 = len(good), bundle_fmt.sha256_hex(good)
            s.commit()
        again = rollout.start(home, 1, "int8")
        statuses = rollout.wait_for_activation(home, 1, {DEVICE}, 30, rollout_id=again.rollout_id)
        assert statuses[DEVICE].model_version == 1
        wait_until(lambda: _rollout_state(home, again.rollout_id) in _RUNNING_IT, 10,
                   "re-rollout recorded as activated")
    finally:
        agent.terminate()
        assert agent.wait(30) == 0
        server.stop()


def _heartbeat_rejected(home: HubHome) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.max(db.Heartbeat.rejected))) or 0)


def test_demo_runs_through_the_embedded_broker(tmp_path: Path) -> None:
    """`cloud-hub demo --quick`: amqtt, hub, three agents, two model versions, a scored summary."""
    summary = tmp_path / "summary.json"
    # --dashboard-port 0: an ephemeral port, not 8080 (two demos on one machine would both try that one)
    out = subprocess.run([sys.executable, "-m", "cloud_hub.cli", "demo", "--quick", "--workdir", str(tmp_path / "w"),
                          "--summary", str(summary), "--dashboard-port", "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    s = json.loads(summary.read_text())
    for key in ("model_versions", "bundle_bytes", "agents_online", "readings_scored", "anomalies_reported",
                "injected_anomalies", "injected_detected", "recall", "false_alarms", "latency_ms_p50",
                "latency_ms_p99"):
        assert key in s, key
    assert s["model_versions"] == [1, 2] and s["agents_online"] == 3
    assert s["activated"] == {"1": ["gw-east", "gw-north", "gw-south"], "2": ["gw-east", "gw-north", "gw-south"]}
    assert s["readings_scored"] > 1000 and s["injected_anomalies"] > 5
    assert s["injected_detected"] >= 1 and s["latency_ms_p50"] < 1000
    assert np.isfinite(s["latency_ms_p99"])
