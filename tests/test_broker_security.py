"""The secured broker, proven on a real Mosquitto started from the config `cloud-hub broker-config` wrote:
TLS only, no anonymous or unknown clients, per-device ACLs, revocation on SIGHUP, and the whole loop
(hub, rollout, `edge-agent run`) working over it with the generated credentials."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cloud_hub import db, rollout
from cloud_hub.brokers import RunningBroker, free_port, mosquitto_path, run_mosquitto
from cloud_hub.cli import main
from cloud_hub.demo.simulator import FEATURES, DeviceSimulator
from cloud_hub.home import HubHome
from cloud_hub.server import HubServer
from edge_agent.config import load_config
from shared.mqtt import BrokerConfig, connect, make_client
from shared.protocol import (
    PROTOCOL_VERSION,
    Channel,
    Reading,
    Readings,
    device_topic,
    encode,
    fleet_model_topic,
)
from tests.conftest import run_agent, wait_until

pytestmark = pytest.mark.integration


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Secured:
    home: HubHome
    broker: RunningBroker
    broker_dir: Path
    agent_dirs: dict[str, Path]

    def hub_cfg(self, serve: bool = False) -> BrokerConfig:
        """The hub account from hub.toml; only `serve` itself uses its persistent session id."""
        cfg = self.home.config().broker
        return cfg if serve else replace(cfg, client_id="")

    def device_cfg(self, device: str, agent: bool = False) -> BrokerConfig:
        """The broker settings as the gateway's agent reads them from its generated agent.toml; other
        clients on the gateway (sensors, probes) use the account with their own client id."""
        cfg = load_config(self.agent_dirs[device] / "agent.toml").broker
        return cfg if agent else replace(cfg, client_id="")

    def cli(self, *args: str) -> str:
        return _hub_cli(self.home, *args)


def _hub_cli(home: HubHome, *args: str) -> str:
    out = CliRunner().invoke(main, ["--home", str(home.path), *args])
    assert out.exit_code == 0, out.output
    return out.output


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    if mosquitto_path() is None:
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    home = HubHome(tmp_path / "hub")
    home.init()
    port = free_port()
    broker_dir, agent_dirs = tmp_path / "broker", {d: tmp_path / d for d in ("gw-a", "gw-b")}
    # --run-as root: the test runner may be root, and Mosquitto would otherwise drop to a user that cannot
    # read pytest's private tmp directory.  Production keeps the default (mosquitto).
    _hub_cli(home, "broker-config", "--out", str(broker_dir), "--host", "127.0.0.1", "--host", "localhost",
             "--port", str(port), "--bind", "127.0.0.1", "--run-as", "root")
    home.update_config({"fleet": {"agent_state_dir": "state"}})  # relative to each agent.toml
    for device, agent_dir in agent_dirs.items():
        _hub_cli(home, "devices", "add", device, "--out", str(agent_dir), "--group", "test")
    s = Secured(home, run_mosquitto(broker_dir / "mosquitto.conf", port, tmp_path), broker_dir, agent_dirs)
    yield s
    s.broker.stop()


class Inbox:
    """A connected client that records what it receives, so a test can wait for a given message."""

    def __init__(self, cfg: BrokerConfig, name: str, subscriptions: tuple[str, ...] | list[str] = ()) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = make_client(cfg, name, persistent=bool(cfg.client_id))
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        connect(self.client, cfg, timeout_s=10)
        if subscriptions:
            self.client.subscribe([(t, 1) for t in subscriptions])
            assert self._subscribed.wait(10), "no SUBACK"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def wait_for(self, topic: str, payload: bytes, timeout_s: float = 10) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: (topic, payload) in self.messages, timeout_s), \
                f"{topic} {payload!r} never arrived; got {self.messages}"

    def topics(self) -> set[str]:
        with self._cond:
            return {t for t, _ in self.messages}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _refused(cfg: BrokerConfig) -> str:
    client = make_client(cfg, "probe", persistent=bool(cfg.client_id))
    try:
        connect(client, cfg, timeout_s=10)
    except ConnectionError as exc:
        return str(exc)
    client.disconnect()
    client.loop_stop()
    return ""


def test_only_known_accounts_over_verified_tls(secured: Secured) -> None:
    ok = secured.device_cfg("gw-a")
    assert ok.url.startswith("mqtts://") and Path(ok.ca_file).is_file()
    assert _refused(ok) == "" and _refused(secured.hub_cfg()) == ""  # positive controls
    assert "Not authorized" in _refused(replace(ok, password="wrong-password"))
    assert "Not authorized" in _refused(replace(ok, username="gw-unknown", password="anything"))
    assert "Not authorized" in _refused(replace(ok, username="", password=""))  # anonymous
    # A device's password is not another device's: gw-a's password as gw-b is refused.
    assert "Not authorized" in _refused(replace(ok, username="gw-b"))

    # The listener speaks TLS only, with a certificate the shipped CA verifies for the host in agent.toml...
    port = secured.broker.port
    ctx = ssl.create_default_context(cafile=ok.ca_file)
    with socket.create_connection(("127.0.0.1", port), 5) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    # ...and that a client trusting only the system CAs rejects.
    with socket.create_connection(("127.0.0.1", port), 5) as raw, pytest.raises(ssl.SSLCertVerificationError):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_a_device_cannot_touch_another_devices_topics(secured: Secured) -> None:
    hub = Inbox(secured.hub_cfg(), "hub-watch", ["edgesentry/#"])
    a = Inbox(secured.device_cfg("gw-a"), "gw-a", ["edgesentry/#", "edgesentry/gw-b/#", fleet_model_topic()])
    b = Inbox(secured.device_cfg("gw-b"), "gw-b", ["edgesentry/gw-b/#"])
    try:
        # The hub's retained announcement: every device may read it.
        hub.publish(fleet_model_topic(), b"announcement", retain=True)
        a.wait_for(fleet_model_topic(), b"announcement")

        # B reports on its own topic: the hub and B itself get it (positive control).
        secret = device_topic("gw-b", Channel.ANOMALY)
        b.publish(secret, b"b-secret")
        hub.wait_for(secret, b"b-secret")
        b.wait_for(secret, b"b-secret")

        # A forges B's anomaly, B's readings and the fleet announcement, then reports on its own topic.
        a.publish(secret, b"forged")
        a.publish(device_topic("gw-b", Channel.READINGS), b"forged")
        a.publish(fleet_model_topic(), b"forged", retain=True)
        own = device_topic("gw-a", Channel.HEARTBEAT)
        a.publish(own, b"a-marker")
        # One client's QoS-1 messages reach a subscriber in order, and B's message was acknowledged (routed)
        # before A's marker was sent: once the marker is in, anything allowed through would be too.
        hub.wait_for(own, b"a-marker")
        a.wait_for(own, b"a-marker")
        assert (secret, b"forged") not in hub.messages
        assert not [m for m in hub.messages if m[1] == b"forged"], hub.messages
        assert not [t for t in a.topics() if t.startswith("edgesentry/gw-b/")], a.messages
        assert b"forged" not in [p for t, p in b.messages]
        # The retained announcement is still the hub's.
        late = Inbox(secured.device_cfg("gw-b"), "gw-b-late", [fleet_model_topic()])
        late.wait_for(fleet_model_topic(), b"announcement")
        assert (fleet_model_topic(), b"forged") not in late.messages
        late.close()
    finally:
        for c in (hub, a, b):
            c.close()


def test_a_device_cannot_knock_another_off_by_its_conventional_client_id(secured: Secured) -> None:
    """Mosquitto does not bind client ids to accounts (a CONNECT with a live client's id takes its session
    over), so `devices add` gives each agent an unguessable id; the obvious ones take nothing over."""
    b_cfg = secured.device_cfg("gw-b", agent=True)
    assert b_cfg.client_id.startswith("edge-gw-b-") and b_cfg.client_id != secured.device_cfg("gw-a", True).client_id
    hub_cfg = secured.hub_cfg(serve=True)
    assert hub_cfg.client_id.startswith("edgesentry-hub-") and len(hub_cfg.client_id) == 31
    hub = Inbox(hub_cfg, "unused-prefix", ["edgesentry/#"])  # the hub's own persistent session
    b = Inbox(b_cfg, "unused-prefix")
    drops: list[object] = []
    b.client.on_disconnect = lambda *args: drops.append(args)
    hub.client.on_disconnect = lambda *args: drops.append(args)
    try:
        for guess in ("edge-gw-b", "gw-b", "edgesentry-hub"):
            thief = Inbox(replace(secured.device_cfg("gw-a"), client_id=guess), "unused")  # CONNACK received
            thief.close()
        b.publish(device_topic("gw-b", Channel.HEARTBEAT), b"still-here")
        hub.wait_for(device_topic("gw-b", Channel.HEARTBEAT), b"still-here")
        assert b.client.is_connected() and hub.client.is_connected() and not drops
    finally:
        b.close()
        hub.close()


def test_removed_device_is_locked_out_after_reload(secured: Secured) -> None:
    b = Inbox(secured.device_cfg("gw-b"), "gw-b")
    assert b.client.is_connected()
    secured.cli("devices", "remove", "gw-b", "--reload-pid", str(secured.broker.proc.pid))
    assert "gw-b" not in (secured.broker_dir / "passwd").read_text()
    assert "gw-b" not in (secured.broker_dir / "acl").read_text()
    # Mosquitto re-checks connected clients on reload: the revoked one is dropped, and cannot come back.
    wait_until(lambda: not b.client.is_connected(), 15, "revoked client disconnected")
    b.close()
    assert "Not authorized" in _refused(secured.device_cfg("gw-b"))
    assert _refused(secured.device_cfg("gw-a")) == ""  # the others are unaffected
    assert _refused(secured.hub_cfg()) == ""
    listing = secured.cli("devices", "list")
    rows = {line.split()[0]: line.split()[1:] for line in listing.splitlines() if line.strip().startswith("gw-")}
    assert rows["gw-b"][0] == "revoked" and rows["gw-a"][0] == "ok", listing


def _install_trained_model(home: HubHome, trained_home, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Register the session's trained bundle in this hub, re-signed with this hub's key."""
    from shared import bundle as bundle_fmt

    _, exported = trained_home
    files = bundle_fmt.read_dir(exported.bundle_dir)
    manifest = bundle_fmt.parse_manifest(files[bundle_fmt.MANIFEST])
    archive = bundle_fmt.pack(bundle_fmt.signed_files(manifest, {bundle_fmt.MODEL_FILE: files[bundle_fmt.MODEL_FILE]},
                                                      home.signing_key()))
    path = tmp_path / "v1.tar.gz"
    path.write_bytes(archive)
    with home.sessions()() as s:
        s.add(db.ModelVersion(version=1, name=manifest.name,
                              source="test", artifacts_dir=""))
        s.add(db.Bundle(version=1, quantization="int8", path=str(path), size=len(archive),
                        sha256=bundle_fmt.sha256_hex(archive)))
        s.commit()


def _readings(sim: DeviceSimulator, t0: float, n: int, spike_at: int | None = None) -> tuple[list[Reading], float]:
    readings, spike_ts = [], 0.0
    for i in range(n):
        t = t0 + i * 0.05
        values = sim.reading(t)
        if i == spike_at:
            values = {f: (v + 30.0 if f == FEATURES[0] and v is not None else v) for f, v in values.items()}
            spike_ts = t
        readings.append(Reading(ts=t, values=values))
    return readings, spike_ts


def test_agent_and_hub_work_end_to_end_over_tls(secured: Secured, tmp_path: Path,
                                                trained_home) -> None:  # type: ignore[no-untyped-def]
    home = secured.home
    _install_trained_model(home, trained_home, tmp_path)
    server = HubServer(home)  # connects as the hub account from hub.toml, verifying the broker with the CA
    server.start()
    agent, log = run_agent(secured.agent_dirs["gw-a"] / "agent.toml")  # the generated file, verbatim
    sensor = Inbox(secured.device_cfg("gw-a"), "gw-a-sensor")  # a sensor on the gateway uses its account
    try:
        def online() -> bool:
            with home.sessions()() as s:
                dev = s.get(db.Device, "gw-a")
                return dev is not None and dev.online
        wait_until(online, 30, "gw-a online at the hub")
        info = rollout.start(home, 1, "int8")
        assert info.devices == ["gw-a", "gw-b"]
        statuses = rollout.wait_for_activation(home, 1, {"gw-a"}, 60, rollout_id=info.rollout_id)
        assert statuses["gw-a"].model_version == 1, log.read_text()[-2000:]

        sim = DeviceSimulator("sim", 1, period_s=20.0, rate_hz=20.0)  # as trained_home's training data
        readings, _ = _readings(sim, time.time() - 600, 600, spike_at=595)
        topic = device_topic("gw-a", Channel.READINGS)
        for i in range(0, len(readings), 100):
            sensor.publish(topic, encode(Readings(v=PROTOCOL_VERSION, readings=readings[i : i + 100])))

        def stored() -> int:
            with home.sessions()() as s:
                return len(s.scalars(select(db.AnomalyEvent.id).where(db.AnomalyEvent.device_id == "gw-a")).all())

        def raised() -> int:
            return log.read_text().count(" anomaly at ")

        # Every anomaly the agent raised (at least the spike's) is stored by the hub.
        try:
            wait_until(lambda: stored() >= 1 and stored() == raised(), 60, "the agent's anomalies stored by the hub")
        except AssertionError:
            raise AssertionError(f"stored {stored()}, raised {raised()}; agent log:\n{log.read_text()[-3000:]}") from None
        with home.sessions()() as s:
            assert set(s.scalars(select(db.AnomalyEvent.model_version))) == {1}
        assert "gw-a" in secured.cli("devices", "show", "gw-a")
    finally:
        sensor.close()
        agent.terminate()
        assert agent.wait(30) == 0
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0 or not _user_exists("mosquitto"),
                    reason="needs root and a mosquitto user: it runs the production default, where Mosquitto "
                           "starts as root and drops to user mosquitto")
def test_production_default_broker_user_reads_the_files(tmp_path: Path) -> None:
    """Default --run-as mosquitto: the files are handed to that user, and stay readable after a rewrite."""
    shared = Path(tempfile.mkdtemp(prefix="es-broker-", dir="/tmp"))
    shared.chmod(0o755)  # pytest's tmp_path is private to root; the broker user must traverse to its files
    try:
        home = HubHome(tmp_path / "hub")
        home.init()
        port = free_port()
        out = _hub_cli(home, "broker-config", "--out", str(shared / "broker"), "--host", "127.0.0.1",
                       "--port", str(port), "--bind", "127.0.0.1")
        assert "Could not hand the files" not in out
        _hub_cli(home, "devices", "add", "gw-a", "--out", str(tmp_path / "gw-a"))
        broker = run_mosquitto(shared / "broker" / "mosquitto.conf", port, tmp_path)
        try:
            cfg = load_config(tmp_path / "gw-a" / "agent.toml").broker
            assert _refused(cfg) == "" and _refused(replace(home.config().broker, client_id="")) == ""
            # Rewritten as root by `devices add`, the files inherit the broker user's group.
            _hub_cli(home, "devices", "add", "gw-b", "--out", str(tmp_path / "gw-b"),
                     "--reload-pid", str(broker.proc.pid))
            gw_b = load_config(tmp_path / "gw-b" / "agent.toml").broker
            wait_until(lambda: _refused(gw_b) == "", 15, "the reloaded broker to accept gw-b")
            assert broker.proc.poll() is None
            assert (shared / "broker" / "data").stat().st_uid == pwd.getpwnam("mosquitto").pw_uid
        finally:
            broker.stop()
    finally:
        shutil.rmtree(shared)
