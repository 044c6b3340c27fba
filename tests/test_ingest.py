"""The hub's ingest on a real Mosquitto: idempotent storage under redelivery, acknowledgements, batched
transactions (counted, not timed), one bad row not losing the rest of its batch, and the
persistent session queueing what agents publish while the hub is down."""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.cli import main as cli_main
from cloud_hub.cli.common import console
from cloud_hub.home import HubHome
from cloud_hub.ingest import HubServer
from cloud_hub.ingest.acks import ack_messages
from cloud_hub.ingest.mqtt_io import BufferedSocket, fast_io
from shared import protocol as p
from shared.mqtt import BrokerConfig, connect, make_client
from tests.conftest import wait_until

pytestmark = pytest.mark.integration
DEVICE = "gw-ingest"


def _home(tmp_path: Path, broker: RunningBroker, ingest: str = "") -> HubHome:
    home = HubHome(tmp_path / "hub")
    home.init(broker.url)
    if ingest:
        home.config_path.write_text(home.config_path.read_text() + "\n[ingest]\n" + ingest + "\n")
    return home


def _event(event_id: str | None = None, device: str = DEVICE) -> p.AnomalyEvent:
    return p.AnomalyEvent(v=p.PROTOCOL_VERSION, event_id=event_id or uuid.uuid4().hex, device=device,
                          ts=1.7e9, detected_at=1.7e9, score=5.0, threshold=1.0, model_version=1,
                          top_features=["temp"], attribution={"temp": 0.9}, likelihood=0.99)


def _sync(batch_id: str) -> p.SyncBatch:
    return p.SyncBatch(v=p.PROTOCOL_VERSION, device=DEVICE, batch_id=batch_id, features=["a", "b"],
                       rows=[[1.7e9 + i, float(i), None] for i in range(10)], flags=[0] * 9 + [1])


def _status(msg_id: str, ts: float, failed: int | None = None) -> p.Status:
    return p.Status(v=p.PROTOCOL_VERSION, device=DEVICE, ts=ts, state=p.AgentState.ONLINE,
                    model_state=p.ModelState.FAILED if failed else p.ModelState.COMMITTED, model_version=1,
                    failed_version=failed, error="bundle v2: NaN outputs" if failed else "", msg_id=msg_id)


class Peer:
    """A test client on the broker: publishes like an agent and collects the hub's Acks."""

    def __init__(self, broker: RunningBroker) -> None:
        cfg = BrokerConfig(url=broker.url)
        self.acked: Counter[str] = Counter()
        self.ack_messages = 0
        self._lock = threading.Lock()
        self.client = make_client(cfg, "test-peer", persistent=False)
        self.client.on_connect = lambda c, *_: c.subscribe(p.subscription(p.Channel.ACK), qos=1)
        self.client.on_message = self._on_message
        connect(self.client, cfg)
        wait_until(lambda: self.client.is_connected(), 5, "peer connected")

    def _on_message(self, _c: object, _u: object, msg: object) -> None:
        ack = p.decode(p.Channel.ACK, msg.payload)  # type: ignore[attr-defined]
        with self._lock:
            self.acked.update(ack.ids)
            self.ack_messages += 1

    def send(self, channel: p.Channel, message: object, device: str = DEVICE) -> None:
        self.client.publish(p.device_topic(device, channel), p.encode(message), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peer(mosquitto: RunningBroker) -> Iterator[Peer]:
    peer = Peer(mosquitto)
    yield peer
    peer.close()


def _count(home: HubHome, model: type, *where: object) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_redelivery_is_stored_once_and_acked_twice(tmp_path: Path, mosquitto: RunningBroker, peer: Peer) -> None:
    home = _home(tmp_path, mosquitto)
    server = HubServer(home)
    server.start()
    try:
        events = [_event() for _ in range(20)]
        syncs = [_sync(f"batch-{i}") for i in range(3)]
        statuses = [_status("st-1", 1.7e9), _status("st-2", 1.7e9 + 1, failed=2)]
        ids = [e.event_id for e in events] + [b.batch_id for b in syncs] + ["st-1", "st-2"]
        for _round in range(2):  # the second round is what an agent re-sends without the hub's Ack
            for e in events:
                peer.send(p.Channel.ANOMALY, e)
            for b in syncs:
                peer.send(p.Channel.SYNC, b)
            for st in statuses:
                peer.send(p.Channel.STATUS, st)
            wait_until(lambda r=_round: all(peer.acked[i] == r + 1 for i in ids), 15, f"acks of round {_round + 1}")
        assert _count(home, db.AnomalyEvent) == 20
        assert _count(home, db.SyncBatch) == 3
        assert _count(home, db.StatusChange) == 2
        assert set(peer.acked) == set(ids)
        assert server.stored["anomaly"] == 20 and server.stored["sync"] == 3 and server.stored["status"] == 2
        assert server.stored["duplicate"] == 25
        with home.sessions()() as s:
            dev = s.get(db.Device, DEVICE)
            assert dev is not None and dev.last_error == "bundle v2: NaN outputs"  # the refusal is kept
            reasons = list(s.scalars(select(db.StatusChange.error).order_by(db.StatusChange.ts)))
        assert reasons == ["", "bundle v2: NaN outputs"]
        assert server.rejects.total == 0
    finally:
        server.stop()


def test_stale_status_is_kept_in_history_but_not_applied(tmp_path: Path, mosquitto: RunningBroker,
                                                         peer: Peer) -> None:
    home = _home(tmp_path, mosquitto)
    server = HubServer(home)
    server.start()
    try:
        peer.send(p.Channel.STATUS, _status("new", 1.7e9 + 10, failed=3))
        peer.send(p.Channel.STATUS, _status("old", 1.7e9))  # a late re-send of an older status
        wait_until(lambda: peer.acked["old"] == 1 and peer.acked["new"] == 1, 10, "both statuses acked")
        assert _count(home, db.StatusChange) == 2
        with home.sessions()() as s:
            dev = s.get(db.Device, DEVICE)
            assert dev is not None and dev.model_state == "failed"
    finally:
        server.stop()


def test_messages_are_written_in_few_transactions(tmp_path: Path, mosquitto: RunningBroker, peer: Peer) -> None:
    # Batches close at 100 messages; the long waits make the count independent of machine speed.
    home = _home(tmp_path, mosquitto, "batch_max = 100\nbatch_wait_ms = 3000\nbatch_idle_ms = 1500")
    server = HubServer(home)
    server.start()
    try:
        infos = [peer.client.publish(p.device_topic(DEVICE, p.Channel.ANOMALY), p.encode(_event()), qos=1)
                 for _ in range(500)]
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: _count(home, db.AnomalyEvent) == 500, 30, "500 events stored")
        wait_until(lambda: len(peer.acked) == 500, 10, "500 ids acked")
        assert 5 <= server.transactions <= 7, server.transactions
        assert peer.ack_messages <= server.transactions  # one Ack per device per transaction
    finally:
        server.stop()


def test_one_bad_row_does_not_lose_its_batch(tmp_path: Path, mosquitto: RunningBroker, peer: Peer) -> None:
    home = _home(tmp_path, mosquitto, "batch_max = 50\nbatch_wait_ms = 3000\nbatch_idle_ms = 1500")
    with home.engine().begin() as conn:  # a real database-side failure for exactly one row
        conn.execute(text("CREATE TRIGGER poison BEFORE INSERT ON anomaly_events WHEN NEW.event_id = 'poison' "
                          "BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"))
    server = HubServer(home)
    server.start()
    try:
        events = [_event() for _ in range(49)]
        events.insert(20, _event("poison"))
        infos = [peer.client.publish(p.device_topic(DEVICE, p.Channel.ANOMALY), p.encode(e), qos=1) for e in events]
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: _count(home, db.AnomalyEvent) == 49, 20, "the 49 good events stored")
        wait_until(lambda: len(peer.acked) == 49, 10, "the 49 good events acked")
        assert "poison" not in peer.acked  # the agent keeps it and re-sends it later
        assert server.rejects.internal_errors() == {"batch": 1, "anomaly": 1}
        peer.send(p.Channel.ANOMALY, _event("after"))
        wait_until(lambda: peer.acked["after"] == 1, 10, "a later event stored and acked")
    finally:
        server.stop()


def test_persistent_session_queues_while_the_hub_is_down(tmp_path: Path, mosquitto: RunningBroker,
                                                          peer: Peer) -> None:
    home = _home(tmp_path, mosquitto)
    first = HubServer(home)
    first.start()
    peer.send(p.Channel.ANOMALY, _event("before"))
    wait_until(lambda: peer.acked["before"] == 1, 10, "stored while up")
    first.stop()
    for i in range(30):
        peer.send(p.Channel.ANOMALY, _event(f"down-{i}"))
    assert _count(home, db.AnomalyEvent) == 1
    second = HubServer(home)  # same stable client id: the broker kept its session and queue
    second.start()
    try:
        wait_until(lambda: _count(home, db.AnomalyEvent) == 31, 15, "events queued while down")
        wait_until(lambda: all(peer.acked[f"down-{i}"] == 1 for i in range(30)), 10, "acked after restart")
    finally:
        second.stop()


def test_batched_pubacks_reach_the_broker_so_a_restarted_hub_gets_nothing_again(tmp_path: Path,
                                                                               mosquitto: RunningBroker,
                                                                               peer: Peer) -> None:
    home = _home(tmp_path, mosquitto)
    first = HubServer(home)
    first.start()
    try:
        # The shortcuts are in use (a paho upgrade that changes its internals fails here, not silently).
        assert fast_io(first.client) and isinstance(first.client._sock, BufferedSocket)
        infos = [peer.client.publish(p.device_topic(DEVICE, p.Channel.ANOMALY), p.encode(_event()), qos=1)
                 for _ in range(300)]
        for info in infos:
            info.wait_for_publish(10)
        wait_until(lambda: first.stored["anomaly"] == 300 and first.idle.is_set(), 30, "300 events stored")
    finally:
        first.stop()  # its DISCONNECT is queued behind the PUBACKs
    second = HubServer(home)  # same session: whatever the broker had not seen PUBACKed comes again
    second.start()
    try:
        peer.send(p.Channel.ANOMALY, _event("sentinel"))  # queued behind any redelivery
        wait_until(lambda: peer.acked["sentinel"] == 1, 15, "the sentinel stored")
        assert second.received["anomaly"] == 1 and second.stored["duplicate"] == 0
    finally:
        second.stop()


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    a, b = socket.socketpair()
    try:
        b.sendall(b"\x30\x05hello\x40\x02\x00\x01")
        buffered = BufferedSocket(a)
        assert buffered.recv(1) == b"\x30"  # one kernel read takes everything sent so far
        assert buffered.pending() == 10
        assert [buffered.recv(1), buffered.recv(5), buffered.recv(4), buffered.pending()] == [
            b"\x05", b"hello", b"\x40\x02\x00\x01", 0]
        a.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing buffered, nothing in the kernel: as paho expects
            buffered.recv(1)
        b.close()
        assert buffered.recv(1) == b""  # end of stream
        assert buffered.fileno() == a.fileno()  # everything else is the socket's
    finally:
        a.close()


def test_short_lived_clients_leave_no_session(mosquitto: RunningBroker) -> None:
    """A clean-session client with a random id: reconnecting finds no session on the broker."""
    cfg = BrokerConfig(url=mosquitto.url, client_id="edgesentry-hub")
    a = make_client(cfg, "cli", persistent=False)
    b = make_client(cfg, "cli", persistent=False)
    assert a._client_id != b._client_id and b"edgesentry-hub" not in (a._client_id, b._client_id)
    present: list[bool] = []
    hub = make_client(cfg, "ignored", persistent=True)
    assert hub._client_id == b"edgesentry-hub"
    for client in (a, hub, hub):
        client.on_connect = lambda _c, _u, flags, *_: present.append(flags.session_present)
        connect(client, cfg)
        client.disconnect()
        client.loop_stop()
    assert present == [False, False, True]  # only the persistent client finds its session again


def test_ack_messages_are_bounded() -> None:
    ids = [f"id-{i}" for i in range(p.MAX_ACK_IDS * 2 + 5)] + ["id-0"]
    acks = ack_messages(DEVICE, ids)
    assert [len(a.ids) for a in acks] == [p.MAX_ACK_IDS, p.MAX_ACK_IDS, 5]
    assert sum((a.ids for a in acks), []) == ids[:-1]
    for a in acks:
        assert len(p.encode(a)) <= p.MAX_MESSAGE_BYTES


def test_telemetry_is_acked_heartbeats_and_last_wills_are_not(tmp_path: Path, mosquitto: RunningBroker,
                                                                peer: Peer, monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home(tmp_path, mosquitto)
    server = HubServer(home)
    server.start()
    try:
        tele = p.Telemetry(v=p.PROTOCOL_VERSION, device=DEVICE, ts=1.7e9, interval_s=10.0, scored=5, score_mean=0.1,
                           score_max=0.3, readings_scored_total=1234, msg_id="tele-1")
        hb = p.Heartbeat(v=p.PROTOCOL_VERSION, device=DEVICE, ts=1.7e9, seq=1, uptime_s=1.0, model_version=1,
                         readings_received=1234, readings_scored=1234, anomalies=0, rejected=0, queue_depth=0,
                         outbox_depth=7, outbox_bytes=40960, outbox_dropped={"telemetry": 3, "sync": 12})
        will = p.Status(v=p.PROTOCOL_VERSION, device=DEVICE, ts=1.7e9 + 5, state=p.AgentState.OFFLINE)
        peer.send(p.Channel.HEARTBEAT, hb)
        peer.send(p.Channel.TELEMETRY, tele)
        peer.send(p.Channel.STATUS, will)
        peer.send(p.Channel.STATUS, will)  # the retained last will, delivered again after a hub restart
        wait_until(lambda: server.stored["status"] + server.stored["duplicate"] == 2, 10, "both wills handled")
        peer.send(p.Channel.ANOMALY, _event("marker"))  # its Ack comes after any Ack of the messages above
        wait_until(lambda: peer.acked["marker"] == 1, 10, "the marker acked")
        assert dict(peer.acked) == {"tele-1": 1, "marker": 1}  # heartbeats and last wills carry no durable id
        assert _count(home, db.Heartbeat) == 1 and _count(home, db.StatusChange) == 1
        with home.sessions()() as s:
            dev = s.get(db.Device, DEVICE)
            assert dev is not None and dev.readings_scored == 1234 and not dev.online
            # The agent's outbox figures (issue 7: every drop counted by kind) are kept and shown.
            assert (dev.outbox_depth, dev.outbox_bytes, dev.outbox_dropped) == (7, 40960, {"telemetry": 3, "sync": 12})
            beat = s.scalars(select(db.Heartbeat)).one()
            assert (beat.outbox_depth, beat.outbox_bytes, beat.outbox_dropped["sync"]) == (7, 40960, 12)
    finally:
        server.stop()
    monkeypatch.setattr(console, "width", 250)  # one line per table row
    for args in (["devices", "list"], ["devices", "show", DEVICE]):
        out = CliRunner().invoke(cli_main, ["--home", str(home.path), *args])
        assert out.exit_code == 0, out.output
        assert "7 (40 kB)" in out.output, out.output
        assert ("sync 12, telemetry 3" if "show" in args else "15 dropped") in out.output, out.output
