"""Nothing is lost when the hub restarts (issue 8): real agents keep reporting through a real Mosquitto
while `cloud-hub serve` is SIGKILLed for ~10 s and restarted; afterwards every anomaly event each agent
raised and every reading it synced is stored exactly once."""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.home import HubHome
from edge_agent.model_store import ModelStore
from shared import bundle as bundle_fmt
from shared.signing import parse_public_key
from tests.conftest import REPO, simulated_series, start_agent, wait_until, write_csv

pytestmark = pytest.mark.integration
DEVICES = ("gw-r1", "gw-r2")
RATE_HZ = 100
READINGS = 2400  # 24 s of replay per agent
SPIKE_EVERY = 200  # one spike every 2 s
ANOMALY_RE = re.compile(r"anomaly at (\d+\.\d{3})")


def _serve(home: HubHome, log: Path, nth: int) -> subprocess.Popen[bytes]:
    """Start the ``nth`` `cloud-hub serve`; returns once it printed that it serves (it prints that after
    the broker confirmed the subscriptions of its persistent session)."""
    proc = subprocess.Popen([sys.executable, "-m", "cloud_hub.cli", "--home", str(home.path), "serve"], cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    wait_until(lambda: log.read_text().count("hub serving") >= nth, 60, f"serve #{nth} subscribed")
    return proc


def _raised(log: Path) -> list[str]:
    """Anomaly timestamps an agent logged (it logs each event it raises, then publishes it)."""
    return ANOMALY_RE.findall(log.read_text()) if log.exists() else []


def _stored(home: HubHome, device: str) -> tuple[list[str], list[float]]:
    with home.sessions()() as s:
        events = sorted(f"{ts:.3f}" for ts in s.scalars(select(db.AnomalyEvent.ts)
                                                        .where(db.AnomalyEvent.device_id == device)))
        synced: list[float] = []
        for blob in s.scalars(select(db.SyncBatch.data).where(db.SyncBatch.device_id == device)):
            synced.extend(np.load(io.BytesIO(blob), allow_pickle=False)[:, 0].tolist())
    return events, synced


def test_sigkilled_hub_loses_nothing(tmp_path: Path, mosquitto: RunningBroker, trained_home) -> None:  # type: ignore[no-untyped-def]
    src_home, exported = trained_home
    archive = bundle_fmt.pack(bundle_fmt.read_dir(exported.bundle_dir))
    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    serve_log = tmp_path / "serve.log"
    hub = _serve(home, serve_log, 1)
    agents: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, device in enumerate(DEVICES):
            work = tmp_path / device
            work.mkdir()
            store = ModelStore(work / "state", [parse_public_key(src_home.public_key())])
            store.install(archive)
            store.set_active(1)
            # The simulator's 20 Hz sample clock (what the model learned), replayed at RATE_HZ.
            ts, values = simulated_series(READINGS / 20, seed=i + 1, t0=1_700_300_000.0 + i * 10_000)
            values[SPIKE_EVERY // 2 :: SPIKE_EVERY, 0] += 40.0
            write_csv(work / "replay.csv", ts, values)
            agents.append(start_agent(work, device, src_home.public_key(), mosquitto.url,
                                      "heartbeat_s = 1.0\ntelemetry_s = 1.0\n"
                                      f'[[sources]]\ntype = "csv"\npath = "replay.csv"\nrate_hz = {RATE_HZ}\n'
                                      "restamp = false\n[sync]\ninterval_s = 1.0"))
        logs = [log for _, log in agents]

        wait_until(lambda: all(_stored(home, d)[0] for d in DEVICES), 60, "a first event stored per agent")
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
        raised_at_kill = [len(_raised(log)) for log in logs]
        # ~10 s down: until each agent raised five more events (one spike every 2 s) the hub never saw.
        wait_until(lambda: all(len(_raised(log)) >= n + 5 for log, n in zip(logs, raised_at_kill, strict=True)),
                   60, "events raised while the hub is down")
        hub = _serve(home, serve_log, 2)

        for (agent, log), device in zip(agents, DEVICES, strict=True):
            wait_until(lambda d=device: len(_stored(home, d)[1]) >= READINGS, 90, f"{device}: every reading synced")
            assert agent.poll() is None, log.read_text()[-2000:]
        for log, device in zip(logs, DEVICES, strict=True):
            raised = sorted(_raised(log))
            wait_until(lambda d=device, r=raised: _stored(home, d)[0] == r, 30, f"{device}: its events stored")
            events, synced = _stored(home, device)
            assert len(raised) >= 8 and events == raised  # every event raised is stored, exactly once
            assert len(synced) == READINGS and len(set(synced)) == READINGS  # every reading, exactly once
    finally:
        for agent, _ in agents:
            agent.terminate()
            agent.wait(30)
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0, serve_log.read_text()[-2000:]
