"""DirectWriteClient: publishing threads write their own packets, and nothing is lost, reordered or mangled."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt

from cloud_hub.brokers import RunningBroker
from shared.mqtt import BrokerConfig, connect, make_client
from shared.mqtt_direct import DirectWriteClient, direct_write
from tests.conftest import wait_until


def _collector(cfg: BrokerConfig, topic: str) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    sub = make_client(cfg, "direct-sub", persistent=False)
    subscribed = threading.Event()
    sub.on_connect = lambda c, *_: c.subscribe(topic, 1)
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    connect(sub, cfg)
    assert subscribed.wait(10)
    return sub, got


def test_two_threads_publish_directly_in_order(mosquitto: RunningBroker) -> None:
    cfg = BrokerConfig(url=mosquitto.url)
    sub, got = _collector(cfg, "direct/#")
    pub = make_client(cfg, "direct-pub", persistent=False, client_class=DirectWriteClient)
    connect(pub, cfg)
    assert direct_write(pub)  # a paho upgrade that drops the shortcut fails here, not silently
    n = 2000
    # Large payloads too: some writes fill the socket buffer and leave the rest to the network thread.
    payloads = {name: [f"{name}-{i:05d}-".encode() + b"x" * (i % 7 * 3000) for i in range(n)]
                for name in ("a", "b")}
    threads = [threading.Thread(target=lambda name=name: [pub.publish("direct/t", p, qos=1)
                                                          for p in payloads[name]])
               for name in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: len(got) >= 2 * n, 30, "every message delivered")
    assert len(got) == 2 * n
    for name, sent in payloads.items():  # each thread's messages arrive whole, once, in its order
        assert [p for p in got if p.startswith(f"{name}-".encode())] == sent
    assert isinstance(pub, DirectWriteClient) and pub.direct_writes > 0
    # PUBACKs came back for all of them: nothing is left in flight.
    wait_until(lambda: not pub._out_messages, 10, "every PUBACK received")  # type: ignore[attr-defined]
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()


def test_publish_before_connect_is_sent_by_the_network_thread(mosquitto: RunningBroker) -> None:
    cfg = BrokerConfig(url=mosquitto.url)
    sub, got = _collector(cfg, "early/#")
    pub = make_client(cfg, "direct-early", persistent=False, client_class=DirectWriteClient)
    # Not connected yet: paho keeps the QoS-1 message and sends it after CONNACK.
    pub.publish("early/t", b"first", qos=1)
    connect(pub, cfg)
    pub.publish("early/t", b"second", qos=1)
    wait_until(lambda: len(got) >= 2, 15, "both delivered")
    assert got == [b"first", b"second"]
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
