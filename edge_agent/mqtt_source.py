"""MQTT reading subscriptions, acknowledged only once what the agent keeps of them is durable.

Every MQTT readings path goes through :class:`MqttReadingSource`: a ``[[sources]]`` gateway broker and the
agent's own broker (``edgesentry/<device>/readings`` and any ``[[sources]]`` topic without a broker).
Why: QoS 1 on a persistent session lets the broker queue readings while the agent restarts, but paho
acknowledges a message as soon as its callback returns: readings then held only in memory (queue, sync
buffer) die with a SIGKILL, and whatever the broker redelivers after a restart is synced twice.  Here
each source client uses ``manual_ack``; every message becomes a :class:`Pending` in the
:class:`AckLedger` and is acknowledged by the agent's commit (``Agent._commit_readings``) after the
scorer has processed it and the sync rows and the high-water mark are in the outbox (one SQLite
transaction).  A restarted agent drops redelivered readings at or before the persisted high-water mark.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from shared.mqtt import BrokerConfig, MessageGuard, make_client
from shared.mqtt import start as start_mqtt
from shared.mqtt_direct import DirectWriteClient
from shared.protocol import npy_topic
from shared.readings import ReadingsBlock

log = logging.getLogger("edge_agent.mqtt_source")

HWM_META = "readings_hwm"  # outbox meta key: newest reading timestamp whose sync rows are durable
SUBSCRIBED_LOG = "reading source subscribed"  # logged once a source's subscription is in place (tests wait on it)


@dataclass(frozen=True)
class Pending:
    """A received reading message not yet acknowledged to its broker."""

    position: int  # the reading queue's ``put`` count once this message's readings were queued
    source: MqttReadingSource
    mid: int
    qos: int
    generation: int  # the source's connection at receipt: an ack never crosses a reconnect
    received: float  # monotonic


class AckLedger:
    """Received-but-unacknowledged messages of every MQTT reading source, in queue order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Pending] = []

    def add(self, p: Pending) -> None:
        with self._lock:
            self._items.append(p)

    def settled(self, taken: int) -> list[Pending]:
        """Messages whose readings the scorer has taken (``taken`` = the queue's hand-out count)."""
        with self._lock:
            return [p for p in self._items if p.position <= taken]

    def remove(self, done: list[Pending]) -> None:
        ids = {id(p) for p in done}
        with self._lock:
            self._items = [p for p in self._items if id(p) not in ids]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class MqttReadingSource:
    """The reading topics of one broker: stable client id, persistent QoS-1 session, manual acks.

    ``topics`` are JSON readings topics; each one's ``/npy`` sibling is subscribed too.  The client
    connects in the background and keeps retrying (a gateway may boot before its network).
    ``subscribed`` is set while the subscription is in place; ``on_subscribed`` runs each time it is.
    """

    def __init__(self, broker: BrokerConfig, client_id: str, topics: list[str], guard: MessageGuard,
                 decode: Callable[[str, bytes | bytearray], ReadingsBlock], put: Callable[[ReadingsBlock], int],
                 ledger: AckLedger, boot_hwm: float, on_subscribed: Callable[[], None] | None = None) -> None:
        self.broker = broker
        self.topics = topics
        self._decode = decode
        self._put = put
        self._ledger = ledger
        self._guard = guard
        self.boot_hwm = boot_hwm
        self.redelivered = 0  # readings dropped at start: already persisted by the previous run
        self.generation = 0
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        self._on_subscribed = on_subscribed
        # The scorer's commit PUBACKs from its own thread (no wake-up of this client's network thread).
        self.client = make_client(broker, client_id, persistent=True, manual_ack=True, client_class=DirectWriteClient)
        self.client.on_connect = guard.callback(self._on_connect, "connect")
        self.client.on_disconnect = guard.callback(lambda *_: self.subscribed.clear(), "disconnect")
        self.client.on_message = self._on_message
        self.client.on_subscribe = guard.callback(self._on_subscribe, "subscribe")

    def start(self) -> None:
        start_mqtt(self.client, self.broker)

    def stop(self) -> None:
        """Disconnect first on shutdown: what is unacknowledged is redelivered to the next run."""
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            return
        with self._lock:
            self.generation += 1
        client.subscribe([(t, 1) for topic in self.topics for t in (topic, npy_topic(topic))])

    def _on_subscribe(self, *_: object) -> None:
        log.info("%s to %s on %s", SUBSCRIBED_LOG, ", ".join(self.topics), self.broker.url)
        self.subscribed.set()
        if self._on_subscribed is not None:
            self._on_subscribed()

    def _on_message(self, _client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        queued: list[bool] = []
        try:
            self._guard.handle(lambda m: queued.append(self._handle(m)), msg)
        finally:
            if not queued or not queued[0]:
                self.ack(msg.mid, msg.qos)  # nothing of it to keep (rejected, or all redelivered)

    def _handle(self, msg: mqtt.MQTTMessage) -> bool:
        """Decode and queue; True if the message's readings went to the scorer (ack after the commit)."""
        block = self._decode(msg.topic, msg.payload)
        if len(block) and self.boot_hwm > -float("inf"):
            fresh = block.ts > self.boot_hwm
            if not fresh.all():
                n = int((~fresh).sum())
                self.redelivered += n
                log.info("redelivered: %d reading(s) the previous run already stored, dropped", n)
                block = ReadingsBlock(block.ts[fresh], block.features, block.values[fresh])
        if not len(block) or msg.qos == 0:
            if len(block):
                self._put(block)
            return False
        gen = self.generation
        position = self._put(block)
        self._ledger.add(Pending(position, self, msg.mid, msg.qos, gen, time.monotonic()))
        return True

    def ack(self, mid: int, qos: int, generation: int | None = None) -> None:
        """PUBACK one message, unless the connection it came on is gone (the broker redelivers it)."""
        if qos == 0 or (generation is not None and generation != self.generation):
            return
        if self.client.is_connected():
            self.client.ack(mid, qos)


__all__ = ["HWM_META", "SUBSCRIBED_LOG", "AckLedger", "MqttReadingSource", "Pending"]
