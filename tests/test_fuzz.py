"""Property-based fuzzing of every channel on both sides, through a real Mosquitto.

Hypothesis generates batches of hostile messages — random bytes, truncated and deeply nested JSON,
oversized payloads, NaN/Infinity, wrong types and versions, wrong or invalid device ids, unknown topics,
forged announcements and chunks — and publishes them into ONE running hub (``HubServer``) and ONE
running agent (``edge-agent run``).  Afterwards the same hub stores a valid event and the same agent
reports a spike.  ``make test`` sends >= 10,000 messages per side; ``make fuzz`` (``FUZZ_SCALE=20``)
sends twenty times as many.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.brokers import RunningBroker
from cloud_hub.demo.simulator import FEATURES
from cloud_hub.home import HubHome
from cloud_hub.server import HUB_CHANNELS, HubServer
from edge_agent.model_store import ModelStore
from edge_agent.update import provision
from shared import bundle as bundle_fmt
from shared import protocol as p
from shared import signing
from shared.mqtt import BrokerConfig, connect, make_client
from tests.conftest import simulated_series, start_agent, wait_online, wait_until

SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
BATCH = 250  # messages per Hypothesis example (expanded from its drawn seed)
MIN_MESSAGES = 10_000 * SCALE  # per side, on topics the side subscribes to
DEVICE = "gw-fuzz"
V = p.PROTOCOL_VERSION

# ------------------------------------------------------------------------------ strategies

TEMPLATES: dict[p.Channel, dict[str, Any]] = {
    p.Channel.READINGS: {"v": V, "readings": [{"ts": 1.0, "values": {"temperature": 1.0, "power": None}}]},
    p.Channel.ANOMALY: {"v": V, "event_id": "e", "device": DEVICE, "ts": 1.0, "detected_at": 1.0, "score": 2.0,
                        "threshold": 1.0, "model_version": 1, "top_features": ["a"], "attribution": {"a": 0.5}},
    p.Channel.HEARTBEAT: {"v": V, "device": DEVICE, "ts": 1.0, "seq": 1, "uptime_s": 1.0, "model_version": None,
                          "readings_received": 0, "readings_scored": 0, "anomalies": 0, "rejected": 0,
                          "queue_depth": 0},
    p.Channel.STATUS: {"v": V, "device": DEVICE, "ts": 1.0, "state": "online", "model_state": "active",
                       "model_version": 1, "failed_version": None, "rollout_id": 1, "msg_id": "m"},
    p.Channel.TELEMETRY: {"v": V, "device": DEVICE, "ts": 1.0, "interval_s": 1.0, "scored": 1, "score_mean": 1.0,
                          "score_max": 1.0, "readings_scored_total": 1, "msg_id": "t"},
    p.Channel.SYNC: {"v": V, "device": DEVICE, "batch_id": "b", "features": ["a"], "rows": [[1.0, 2.0]],
                     "flags": [0]},
    p.Channel.MODEL_REQUEST: {"v": V, "device": DEVICE, "version": 99},
    p.Channel.MODEL: {"v": V, "version": 5, "name": "x", "sha256": "a" * 64, "size": 10, "chunks": 1,
                      "rollout_id": 1, "key_id": "0" * 16, "signature": "AAAA"},
    p.Channel.MODEL_CHUNK: {"v": V, "version": 2, "sha256": "c" * 64, "index": 0, "total": 2, "data": "AAAA"},
    p.Channel.ACK: {"v": V, "device": DEVICE, "ids": ["a", "b"]},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    surely_rejected: bool  # the receiver must count it as rejected (never valid by construction)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


@st.composite
def payloads(draw: st.DrawFn, channel: p.Channel) -> tuple[bytes, bool]:
    """(payload, surely_rejected) for one channel."""
    template = dict(TEMPLATES[channel])
    kind = draw(st.sampled_from(["bytes", "truncated", "deep", "nan", "types", "version", "valid"]))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=300)), True
    if kind == "truncated":
        whole = _dumps(template)
        return whole[: draw(st.integers(1, len(whole) - 1))], True
    if kind == "deep":
        n = draw(st.integers(1025, 3000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return b'{"v":2,"x":' + opener * n + b"1" + closer * n + b"}", True
    if kind == "nan":
        key = draw(st.sampled_from(sorted(template)))
        template[key] = "__X__"
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        return _dumps(template).replace(b'"__X__"', constant.encode()), True
    if kind == "version":
        template["v"] = draw(st.one_of(st.integers().filter(lambda v: v != V), st.floats(allow_nan=False),
                                       st.text(max_size=4), st.none(), st.booleans()))
        return _dumps(template), True
    if kind == "types":
        for _ in range(draw(st.integers(1, 3))):
            key = draw(st.sampled_from([*sorted(template), "extra"]))
            if draw(st.booleans()) and key in template and key != "v":
                del template[key]
            else:
                template[key] = draw(json_values)
        return _dumps(template), False
    # "valid" shapes with random field values: the schema and __post_init__ checks decide
    for key, value in list(template.items()):
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "v":
            template[key] = draw(st.integers(-3, 10**6) if isinstance(value, int) else st.floats(-1e6, 1e6))
    return _dumps(template), False


# Hypothesis draws each batch's seed and a couple of structure-aware messages; a seeded ``random.Random``
# expands that into the batch (the same families of faults), fast enough for 10,000s of messages.
KINDS = ["bytes", "truncated", "deep", "nan", "types", "version", "valid"]
BAD_VERSIONS: list[Any] = [0, 1, 3, -1, 2**70, 2.0, "2", None, True, False, [], {}]


def _rnd_text(rnd: random.Random, max_len: int = 16) -> str:
    chars = (chr(rnd.randint(0x20, 0xD7FF)) for _ in range(rnd.randint(0, max_len)))
    return "".join(c for c in chars if c not in "/+#\x7f" and not 0x80 <= ord(c) <= 0x9F)


def _rnd_json(rnd: random.Random, depth: int = 2) -> Any:
    kind = rnd.randrange(8 if depth > 0 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rnd.random() < 0.5
    if kind == 2:
        return rnd.choice([0, -1, 1, 2**31, 2**63, -(2**64), 2**70, rnd.randint(-10**6, 10**6)])
    if kind == 3:
        return rnd.choice([0.0, -0.0, 1e308, -1e308, 5e-324, rnd.uniform(-1e9, 1e9)])
    if kind in (4, 5):
        return _rnd_text(rnd)
    if kind == 6:
        return [_rnd_json(rnd, depth - 1) for _ in range(rnd.randint(0, 4))]
    return {_rnd_text(rnd, 6): _rnd_json(rnd, depth - 1) for _ in range(rnd.randint(0, 4))}


def _npy(array: Any, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


def _rnd_npy(rnd: random.Random) -> tuple[bytes, bool]:
    """Binary readings (``readings/npy``): garbage, truncated, pickled objects, wrong shapes and types."""
    rows = rnd.randint(1, 50)
    valid = np.column_stack([np.sort(np.array([rnd.uniform(-1e6, 1e6) for _ in range(rows)])),
                             np.array([[rnd.uniform(-1e3, 1e3) for _ in FEATURES] for _ in range(rows)])])
    kind = rnd.randrange(7)
    if kind == 0:
        return rnd.randbytes(rnd.randint(1, 300)), True
    if kind == 1:
        whole = _npy(valid)
        return whole[: rnd.randint(1, len(whole) - 1)], True
    if kind == 2:
        return _npy(np.array([{"x": 1}, "evil"], dtype=object), allow_pickle=True), True  # never unpickled
    if kind == 3:
        return _npy(valid[:, : rnd.randint(0, len(FEATURES))]), True  # too few columns
    if kind == 4:
        return _npy(valid.astype(rnd.choice(["<U8", "complex128", "bool"]))), False
    if kind == 5:
        bad = valid.copy()
        bad[rnd.randrange(rows), rnd.randrange(1 + len(FEATURES))] = rnd.choice([np.nan, np.inf, -np.inf])
        return _npy(bad), False
    return _npy(valid), False


def _rnd_payload(rnd: random.Random, channel: p.Channel) -> tuple[bytes, bool]:
    """(payload, surely_rejected): one of the fault families, for one channel."""
    if channel not in TEMPLATES:
        return _rnd_npy(rnd)
    template = dict(TEMPLATES[channel])
    kind = rnd.choice(KINDS)
    if kind == "bytes":
        return rnd.randbytes(rnd.randint(1, 300)), True
    if kind == "truncated":
        whole = _dumps(template)
        return whole[: rnd.randint(1, len(whole) - 1)], True
    if kind == "deep":
        n = rnd.randint(1025, 3000)
        opener, closer = rnd.choice([(b"[", b"]"), (b'{"a":', b"}")])
        return b'{"v":2,"x":' + opener * n + b"1" + closer * n + b"}", True
    if kind == "nan":
        template[rnd.choice(sorted(template))] = "__X__"
        return _dumps(template).replace(b'"__X__"', rnd.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"])), True
    if kind == "version":
        template["v"] = rnd.choice(BAD_VERSIONS)
        return _dumps(template), True
    if kind == "types":
        for _ in range(rnd.randint(1, 3)):
            key = rnd.choice([*sorted(template), "extra"])
            if rnd.random() < 0.3 and key in template and key != "v":
                del template[key]
            else:
                template[key] = _rnd_json(rnd)
        return _dumps(template), False
    for key, value in list(template.items()):  # "valid" shapes with random values: the schema decides
        if isinstance(value, int) and not isinstance(value, bool) and key != "v":
            template[key] = rnd.randint(-3, 10**6)
        elif isinstance(value, float):
            template[key] = rnd.uniform(-1e6, 1e6)
    return _dumps(template), False


def _hub_topic(rnd: random.Random, channel: p.Channel) -> str:
    device = rnd.choice([DEVICE, DEVICE, "gw-other", "fleet", "", _rnd_text(rnd, 70)])
    roll = rnd.random()
    if roll < 0.8:
        return f"edgesentry/{device}/{channel.value}"
    if roll < 0.95:
        other = rnd.choice([c.value for c in p.Channel] + ["nope", "anomaly/x", "", _rnd_text(rnd)])
        return f"edgesentry/{device}/{other}"
    return f"other/{_rnd_text(rnd)}"


def _agent_topic(rnd: random.Random, channel: p.Channel) -> str:
    if channel == p.Channel.MODEL:
        return rnd.choice([p.fleet_model_topic(), p.device_topic(DEVICE, p.Channel.MODEL)])
    if channel == p.Channel.READINGS_NPY:
        return p.npy_topic(p.device_topic(DEVICE, p.Channel.READINGS))
    if rnd.random() < 0.95:
        return p.device_topic(DEVICE, channel)
    return f"edgesentry/{DEVICE}/{_rnd_text(rnd)}"


def _batches(channels: list[p.Channel], topic_for: Any) -> st.SearchStrategy[list[Msg]]:
    """One batch: two Hypothesis-built messages plus BATCH expanded from a drawn seed."""

    @st.composite
    def batch(draw: st.DrawFn) -> list[Msg]:
        rnd = random.Random(draw(st.integers(0, 2**64 - 1)))  # not st.randoms(): it records every call
        out = []
        for _ in range(2):
            channel = draw(st.sampled_from([c for c in channels if c in TEMPLATES]))
            payload, surely = draw(payloads(channel))
            out.append(Msg(topic_for(rnd, channel), payload, surely))
        for _ in range(BATCH):
            channel = rnd.choice(channels)
            payload, surely = _rnd_payload(rnd, channel)
            out.append(Msg(topic_for(rnd, channel), payload, surely))
        return out

    return batch()


def _delivered(topic: str, channels: list[str]) -> bool:
    parts = topic.split("/")
    return parts[0] == p.ROOT and len(parts) >= 3 and "/".join(parts[2:]) in channels


class Publisher:
    """One paho client that publishes fuzz batches at QoS 1 and counts what it sent."""

    def __init__(self, broker: RunningBroker, name: str) -> None:
        cfg = BrokerConfig(url=broker.url)
        self.client = make_client(cfg, name, persistent=False)
        connect(self.client, cfg)
        self.sent = self.delivered = self.surely_rejected = 0

    def send(self, batch: list[Msg], delivered: Any) -> None:
        info = None
        for m in batch:
            info = self.client.publish(m.topic, m.payload, qos=1)
            self.sent += 1
            if delivered(m.topic):
                self.delivered += 1
                self.surely_rejected += m.surely_rejected
        if info is not None:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _run_fuzz(strategy: st.SearchStrategy[list[Msg]], publish: Any, extra: list[Msg]) -> None:
    """Feed Hypothesis batches (plus ``extra`` each time) to ``publish``: >= MIN_MESSAGES in all."""

    @settings(max_examples=-(-MIN_MESSAGES * 7 // (5 * BATCH)), deadline=None, database=None, derandomize=SCALE == 1,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def feed(batch: list[Msg]) -> None:
        publish(batch + extra)

    feed()


def test_decode_turns_any_bytes_into_a_message_or_a_protocol_error() -> None:
    """The property the network tests rely on, checked without a broker: decode raises nothing else."""

    # Health checks time the strategies: on a loaded machine "too slow" fails a sound test.
    @settings(max_examples=200 * SCALE, deadline=None, database=None, derandomize=SCALE == 1,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(list(p.SCHEMAS)).flatmap(lambda c: st.tuples(st.just(c), payloads(c))))
    def check(case: tuple[p.Channel, tuple[bytes, bool]]) -> None:
        channel, (payload, surely) = case
        try:
            p.decode(channel, payload, device=DEVICE)
        except p.ProtocolError:
            return
        assert not surely, payload[:200]

    check()


# ------------------------------------------------------------------------------ hub side


@pytest.mark.integration
def test_fuzzed_hub_keeps_storing(mosquitto: RunningBroker, hub_server: HubServer) -> None:
    server = hub_server
    home = server.home
    pub = Publisher(mosquitto, "fuzz-hub")
    channels = [c.value for c in HUB_CHANNELS]
    oversized = Msg(f"edgesentry/{DEVICE}/anomaly", b"{" + b" " * p.MAX_MESSAGE_BYTES + b"}", True)
    try:
        _run_fuzz(_batches(list(HUB_CHANNELS), _hub_topic), lambda b: pub.send(b, lambda t: _delivered(t, channels)),
                  [oversized])
        assert pub.delivered >= MIN_MESSAGES

        def handled() -> int:
            return sum(server.received.values()) + server.rejects.total

        try:
            wait_until(lambda: handled() == pub.delivered, 120, f"the hub to handle {pub.delivered} messages")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; handled {handled()}: {server.rejects.counts()} {dict(server.received)}") from None
        assert server.rejects.total >= pub.surely_rejected
        assert server.rejects.internal_errors() == {}, server.rejects.internal_errors()
        event = p.AnomalyEvent(v=V, event_id=uuid.uuid4().hex, device=DEVICE, ts=2.0, detected_at=2.0, score=9.0,
                               threshold=1.0, model_version=1)
        pub.client.publish(p.device_topic(DEVICE, p.Channel.ANOMALY), p.encode(event), qos=1).wait_for_publish(10)

        def stored() -> int:
            with home.sessions()() as s:
                return int(s.scalar(select(func.count()).select_from(db.AnomalyEvent)
                                    .where(db.AnomalyEvent.event_id == event.event_id)) or 0)

        wait_until(lambda: stored() == 1, 30, "a valid event stored by the same hub after the fuzzing")
        assert server.client.is_connected() and server._worker.is_alive()
        print(f"hub: {pub.sent} sent, {pub.delivered} delivered, rejected {server.rejects.counts()}, "
              f"accepted {dict(server.received)}")
    finally:
        pub.close()


# ------------------------------------------------------------------------------ agent side


@pytest.fixture
def fuzz_agent(tmp_path: Path, mosquitto: RunningBroker, trained_home: Any) -> Iterator[tuple[Any, Path, HubHome]]:
    src_home, exported = trained_home
    store = ModelStore(tmp_path / "state", [signing.parse_public_key(src_home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(exported.bundle_dir)))
    provision(tmp_path / "state", 1)
    proc, log = start_agent(tmp_path, DEVICE, src_home.public_key(), mosquitto.url, "heartbeat_s = 0.5")
    try:
        wait_online(mosquitto.url, DEVICE)
        yield proc, log, src_home
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log.read_text()[-3000:]


class Watch:
    """Collects what the agent publishes on its anomaly and heartbeat topics."""

    def __init__(self, broker: RunningBroker) -> None:
        self.events: list[p.AnomalyEvent] = []
        self.heartbeat: p.Heartbeat | None = None
        self.lock = threading.Lock()
        cfg = BrokerConfig(url=broker.url)
        self.client = make_client(cfg, "fuzz-watch", persistent=False)
        self.client.on_message = self._on_message
        connect(self.client, cfg)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe([(p.device_topic(DEVICE, p.Channel.ANOMALY), 1),
                               (p.device_topic(DEVICE, p.Channel.HEARTBEAT), 0)])
        assert subscribed.wait(10)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        _, channel = p.parse_topic(msg.topic)
        message = p.decode(channel, msg.payload, device=DEVICE)
        with self.lock:
            if channel == p.Channel.ANOMALY:
                self.events.append(message)
            else:
                self.heartbeat = message


@pytest.mark.integration
def test_fuzzed_agent_keeps_reporting_spikes(mosquitto: RunningBroker, fuzz_agent: Any) -> None:
    proc, log, home = fuzz_agent
    watch = Watch(mosquitto)
    pub = Publisher(mosquitto, "fuzz-agent")
    subscribed = {p.fleet_model_topic(), *(p.device_topic(DEVICE, c) for c in (
        p.Channel.READINGS, p.Channel.MODEL, p.Channel.MODEL_CHUNK, p.Channel.ACK)),
        p.npy_topic(p.device_topic(DEVICE, p.Channel.READINGS))}
    # A genuine signed announcement of a version nobody serves: the agent starts assembling it, so the
    # forged chunks below meet a download in progress (and must not spoil it or the running model).
    genuine = signing.sign_announcement(home.signing_key(), p.ModelAnnouncement(
        v=V, version=2, name="x", sha256="c" * 64, size=3, chunks=2, rollout_id=7))
    pub.client.publish(p.fleet_model_topic(), p.encode(genuine), qos=1).wait_for_publish(10)
    oversized = Msg(p.device_topic(DEVICE, p.Channel.READINGS), b"[" + b" " * p.MAX_MESSAGE_BYTES + b"]", True)
    try:
        _run_fuzz(_batches([p.Channel.READINGS, p.Channel.READINGS_NPY, p.Channel.MODEL, p.Channel.MODEL_CHUNK,
                            p.Channel.ACK], _agent_topic),
                  lambda b: pub.send(b, subscribed.__contains__), [oversized])
        assert pub.delivered >= MIN_MESSAGES
        # Then normal readings with one spike, stamped after anything the fuzzing sent.
        ts, values = simulated_series(30, seed=1, t0=time.time() - 120)  # the training device
        values[500:503, FEATURES.index("power")] -= 30.0
        for i in range(0, len(ts), 100):
            batch = p.Readings(v=V, readings=[
                p.Reading(ts=float(t), values={f: None if math.isnan(x) else float(x) for f, x in zip(FEATURES, row,
                                                                                                       strict=True)})
                for t, row in zip(ts[i : i + 100], values[i : i + 100], strict=True)])
            pub.client.publish(p.device_topic(DEVICE, p.Channel.READINGS), p.encode(batch), qos=1)

        def spike_reported() -> bool:
            with watch.lock:
                return any(float(ts[500]) <= e.ts <= float(ts[520]) for e in watch.events)

        wait_until(spike_reported, 60, "the same agent reporting the spike after the fuzzing")

        def rejected() -> int:
            with watch.lock:
                return watch.heartbeat.rejected if watch.heartbeat else 0

        wait_until(lambda: rejected() >= pub.surely_rejected, 30,
                   f">= {pub.surely_rejected} rejections in the agent's heartbeat")
        assert proc.poll() is None
        text = log.read_text()
        assert "internal error" not in text and "Traceback" not in text, text[-3000:]
        print(f"agent: {pub.sent} sent, {pub.delivered} delivered, {rejected()} rejected")
    finally:
        pub.close()
        watch.client.disconnect()
        watch.client.loop_stop()
