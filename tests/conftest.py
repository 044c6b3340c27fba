"""Shared fixtures: real brokers on free loopback ports, a hub home, a small trained model."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.brokers import RunningBroker, mosquitto_path, start_amqtt, start_mosquitto
from cloud_hub.demo.simulator import FEATURES, DeviceSimulator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist hands its workers the controller's terminal width as COLUMNS; the CLI's console would
    # then cut tables at it, unlike the piped output of a one-process run (cloud_hub/cli/common.py _width).
    os.environ.pop("COLUMNS", None)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[RunningBroker]:
    """A real Mosquitto on an ephemeral loopback port, stopped after the test."""
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto (.ci/run does this)")
    broker = start_mosquitto(workdir=tmp_path)
    yield broker
    broker.stop()


@pytest.fixture
def hub_server(tmp_path: Path, mosquitto: RunningBroker):  # type: ignore[no-untyped-def]
    """A hub home on the test's Mosquitto with `serve`'s HubServer running in process, stopped after."""
    from cloud_hub.home import HubHome
    from cloud_hub.server import HubServer

    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    server = HubServer(home)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _release_database_engines() -> Iterator[None]:
    """Each process caches one engine per database URL; give the test's connections back afterwards so a
    long session does not collect open SQLite files (not imported here: edge tests must not load it)."""
    yield
    db = sys.modules.get("cloud_hub.db")
    if db is not None:
        db.dispose_engines()


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """One real PostgreSQL for the session (initdb in a temp dir, 127.0.0.1, ephemeral port, run as an
    unprivileged user); skipped only where PostgreSQL is not installed (.ci/run installs it)."""
    from cloud_hub.db.local_postgres import postgres_bin, start_postgres

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed: apt-get install -y postgresql (.ci/run does this)")
    server = start_postgres()
    yield server
    from cloud_hub.db import dispose_engines

    dispose_engines()
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A new, empty database on the session's PostgreSQL."""
    import uuid

    from cloud_hub.db import dispose_engines

    yield postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
    dispose_engines()  # give the connections back (the server allows a few hundred)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then a new PostgreSQL database (storage tests run on both)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hub.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def amqtt_broker(tmp_path: Path) -> Iterator[RunningBroker]:
    broker = start_amqtt(workdir=tmp_path)
    yield broker
    broker.stop()


def simulated_series(seconds: float, seed: int = 1, rate_hz: float = 20.0, period_s: float = 20.0,
                     t0: float = 1_700_000_000.0) -> tuple[np.ndarray, np.ndarray]:
    """Normal multichannel readings from the demo simulator: (timestamps, values with NaN gaps)."""
    sim = DeviceSimulator("sim", seed, period_s, rate_hz)
    ts = t0 + np.arange(int(seconds * rate_hz)) / rate_hz
    rows = []
    for t in ts:
        v = sim.reading(float(t))
        rows.append([np.nan if v[f] is None else v[f] for f in FEATURES])
    return ts, np.asarray(rows)


def write_csv(path: Path, ts: np.ndarray, values: np.ndarray) -> Path:
    with open(path, "w") as fh:
        fh.write("timestamp," + ",".join(FEATURES) + "\n")
        for t, row in zip(ts, values, strict=True):
            fh.write(f"{t:.3f}," + ",".join("" if np.isnan(v) else f"{v:.6f}" for v in row) + "\n")
    return path


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    """Poll a condition another process makes true (e.g. a database row); fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A hub home with model v1 trained on simulated normal data (few epochs) and exported int8."""
    from dataclasses import replace

    from cloud_hub import training
    from cloud_hub.data import from_csv
    from cloud_hub.export import Quantization, export
    from cloud_hub.home import HubHome

    root = tmp_path_factory.mktemp("hub")
    home = HubHome(root / "home")
    home.init()
    ts, values = simulated_series(120)
    csv = write_csv(root / "train.csv", ts, values)
    cfg = replace(home.config().training, epochs=8, window=16)
    result = training.train(home, from_csv(csv), cfg)
    exported = export(home, result.version, Quantization.INT8)
    return home, exported


# An agent source that replays tmp_path/replay.csv as fast as it scores, keeping the file's timestamps.
CSV_REPLAY_TOML = """[[sources]]
type = "csv"
path = "replay.csv"
rate_hz = 0
restamp = false"""


def start_agent(tmp_path: Path, device: str, public_key: str, broker_url: str, extra: str = "",
                broker_extra: str = "") -> tuple[subprocess.Popen[bytes], Path]:
    """Write an agent.toml in tmp_path (state in tmp_path/state) and run `edge-agent run` on it.

    ``extra`` is appended TOML (top-level keys first, then tables); ``broker_extra`` goes into [broker].
    Returns the process and its log (appended to, so a restarted agent's log follows the previous one).
    """
    conf = tmp_path / "agent.toml"
    top, _, tables = extra.strip().partition("\n[")
    if top.startswith("["):
        top, tables = "", extra.strip()[1:]
    conf.write_text(f'device_id = "{device}"\nstate_dir = "state"\ntrusted_keys = ["{public_key}"]\n{top}\n'
                    f'[broker]\nurl = "{broker_url}"\n{broker_extra}\n' + (f"[{tables}\n" if tables else ""))
    return run_agent(conf)


def run_agent(conf: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """Run `edge-agent run` on an existing agent.toml (e.g. one `cloud-hub devices add` wrote); log beside it
    (appended to, so a restarted agent's log follows the previous one)."""
    log = conf.parent / "agent.log"
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(conf)], cwd=REPO,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    return proc, log


def wait_online(broker_url: str, device: str, timeout_s: float = 60) -> None:
    """Wait for the agent's retained ``online`` status: it is published after the agent subscribed, so
    from then on messages to the agent's topics reach it (its "started" log line comes before that)."""
    import threading

    from shared import protocol as p
    from shared.mqtt import BrokerConfig, connect, make_client

    online = threading.Event()

    def on_message(_c: object, _u: object, msg: object) -> None:
        try:
            status = p.decode(p.Channel.STATUS, msg.payload, device=device)  # type: ignore[attr-defined]
        except p.ProtocolError:
            return
        if status.state == p.AgentState.ONLINE:
            online.set()

    cfg = BrokerConfig(url=broker_url)
    client = make_client(cfg, "test-online", persistent=False)
    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe(p.device_topic(device, p.Channel.STATUS), qos=1)
    connect(client, cfg)
    try:
        if not online.wait(timeout_s):
            raise AssertionError(f"agent {device} did not come online within {timeout_s}s")
    finally:
        client.disconnect()
        client.loop_stop()
