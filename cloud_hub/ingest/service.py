"""``cloud-hub serve``: the MQTT client and the writer thread.

The MQTT thread only decodes, validates and enqueues.  One writer thread drains the queue in batches,
stores each batch in ONE transaction, publishes the hub's ``Ack`` per device and only then PUBACKs the
messages to the broker (paho manual acknowledgement): a message the hub has not stored is never
acknowledged, so if the hub dies the broker redelivers it to the hub's persistent session.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import paho.mqtt.client as mqtt

from cloud_hub.home import HubHome
from cloud_hub.ingest import store
from cloud_hub.ingest.acks import publish_acks
from cloud_hub.ingest.batching import Batcher, Inbound
from cloud_hub.ingest.leader import Leadership
from cloud_hub.ingest.mqtt_io import HubClient, puback_all
from cloud_hub.ingest.rollout_hooks import serve_model_request
from cloud_hub.rollout.engine import RolloutEngine
from shared import protocol as p
from shared.mqtt import MessageGuard, connect, make_client

log = logging.getLogger("cloud_hub.ingest")

HUB_CLIENT_ID = "edgesentry-hub"  # default persistent-session id; hub.toml broker.client_id overrides it
SHARE_GROUP = "hub"  # workers subscribe to $share/hub/edgesentry/+/<channel>: each message goes to one of them


# Topics repeat (one per device and channel): parse each once.  Bounded, and invalid topics raise
# (lru_cache keeps no exceptions), so hostile topic names cannot grow it past maxsize.
_parse_topic = functools.lru_cache(maxsize=16_384)(p.parse_topic)


GC_THRESHOLDS = (10_000, 10, 10)  # cyclic collector: young objects every 10,000 net allocations (default 700)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a process whose job is ingest (``serve``, the bench).

    Ingest allocates a handful of small objects per message, nearly all freed at once by reference
    counting; with the default thresholds the collector ran ~700 times per 50,000 events, each time
    re-scanning the messages waiting in the queue (a profile of the in-process bench: the larger part of
    the MQTT thread's CPU beyond decoding).  Collect once, freeze what startup built (modules, ORM
    metadata, config: never garbage, never scanned again), and collect young objects less often.
    Reference cycles are still collected, a little later.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class ScaleOutError(ValueError):
    """Several workers asked for where they cannot work (SQLite allows one writer)."""

HUB_CHANNELS = (
    p.Channel.ANOMALY,
    p.Channel.HEARTBEAT,
    p.Channel.STATUS,
    p.Channel.SYNC,
    p.Channel.TELEMETRY,
    p.Channel.MODEL_REQUEST,
)


class HubServer:
    """``worker`` (a short name) makes this one of several ``serve`` processes on one PostgreSQL: its MQTT
    session is ``<client_id>-<worker>`` and it subscribes through the shared subscription ``$share/hub/…``
    so the broker hands each message to one worker; ``self.leader`` elects the one that drives rollouts."""

    def __init__(self, home: HubHome, worker: str | None = None) -> None:
        self.home = home
        self.cfg = home.config()
        self.sessions = home.sessions()
        self.worker = worker
        engine = home.engine()
        if worker is not None and engine.dialect.name != "postgresql":
            raise ScaleOutError("several serve workers need PostgreSQL (hub.toml database_url = "
                                "\"postgresql+psycopg://…\"): SQLite takes one writer; run a single `cloud-hub serve`")
        self.rejects = p.RejectCounter(log)  # rejections by reason; internal errors by channel too
        self.guard = MessageGuard(self.rejects)  # nothing one message raises reaches paho's loop
        self.received: Counter[str] = Counter()
        self.stored: Counter[str] = Counter()  # new rows by channel, plus "duplicate" for redeliveries
        self.transactions = 0  # committed batch transactions (the per-message fallback counts each)
        self.acks_sent = 0
        self.writer_cpu_s = 0.0  # CPU time of the writer thread storing, acknowledging and notifying (bench)
        ing = self.cfg.ingest
        self.batcher = Batcher(ing.batch_max, ing.batch_wait_ms / 1000, ing.batch_idle_ms / 1000, ing.queue_max)
        self._worker = threading.Thread(target=self._work, name="hub-db", daemon=True)
        self._epoch = 0  # connection generation: a PUBACK is only valid on the connection that got the message
        self._closing = False
        base_id = self.cfg.broker.client_id or HUB_CLIENT_ID
        self.client_id = f"{base_id}-{worker}" if worker else base_id
        self.client = make_client(replace(self.cfg.broker, client_id=self.client_id), HUB_CLIENT_ID, persistent=True,
                                  client_class=HubClient)
        self.client.manual_ack_set(True)
        self.client.on_connect = self.guard.callback(self._on_connect, "connect")
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.idle = threading.Event()  # set whenever the queue is drained and written (tests, demo)
        self.leader = Leadership(engine, self.sessions, (worker or self.client_id)[:64], self.client_id, self._stats)
        # Called on the writer thread after each batch is stored: (batch, time stored). Metrics and alerts
        # hook in here; they must not block (alerts only enqueue).
        self.on_stored: list[Callable[[list[Inbound], float], None]] = []
        self.observer_errors = 0
        # The one owner of rollout state runs beside ingest, on the leader only; statuses wake it at once
        # (see cloud_hub/rollout/engine.py).
        self.rollouts = RolloutEngine(home, self.client, self.sessions, self.cfg.rollout, self.leader.is_leader)

    def start(self) -> None:
        """Returns once subscribed: from then on the broker keeps everything for this session."""
        self._worker.start()
        connect(self.client, self.cfg.broker)
        if not self._subscribed.wait(15):
            raise ConnectionError(f"{self.cfg.broker.url} did not confirm the hub's subscriptions")
        self.leader.start()
        self.rollouts.start()
        log.info("hub serving on %s (session %s)", self.cfg.broker.url, self.client_id)

    def stop(self) -> None:
        """Store and acknowledge what was received, then disconnect (the session keeps queueing)."""
        self._closing = True
        self.rollouts.stop()
        self.leader.stop()
        self.batcher.stop()
        self._worker.join(timeout=60)
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ MQTT thread

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if not getattr(reason, "is_failure", False):
            self._epoch += 1
            share = f"$share/{SHARE_GROUP}/" if self.worker else ""
            client.subscribe([(share + p.subscription(ch), 1) for ch in HUB_CHANNELS])

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        """Guarded: nothing raised here reaches paho's loop; a message not queued is PUBACKed at once."""
        if self._closing:
            return  # not acknowledged: the broker redelivers it to the next session
        if not self.guard.handle(self._intake, msg) and msg.qos > 0:
            client.ack(msg.mid, msg.qos)

    def _intake(self, msg: mqtt.MQTTMessage) -> None:
        """Validate and enqueue one message; raises ProtocolError (counted by the guard) if invalid."""
        device, channel = _parse_topic(msg.topic)
        if channel not in HUB_CHANNELS:
            raise p.ProtocolError(p.RejectReason.BAD_TOPIC, f"hub does not consume {channel.value}")
        message = p.decode(channel, msg.payload, device=device)
        self.received[channel.value] += 1
        if self.idle.is_set():  # Event.clear() takes a lock: once per message was measurable
            self.idle.clear()
        self.batcher.put(Inbound(channel, device, message, time.time(), msg.mid if msg.qos > 0 else 0, self._epoch))

    def _stats(self) -> tuple[int, int]:
        """(new rows stored, redeliveries found already stored) since start, for hub_workers."""
        return sum(v for k, v in self.stored.items() if k != "duplicate"), self.stored["duplicate"]

    def feed(self, topic: str, payload: bytes) -> None:
        """Hand one message to ingest exactly as the MQTT thread does, without the network (bench)."""
        msg = mqtt.MQTTMessage(topic=topic.encode())
        msg.payload = payload
        self._on_message(self.client, None, msg)

    # ------------------------------------------------------------------ writer thread

    def _work(self) -> None:
        while (batch := self.batcher.next()) is not None:
            cpu0 = time.thread_time()
            try:
                self._write(batch)
            except Exception as exc:  # a bug must not stop storage: count it and go on
                self.rejects.internal_error("writer", f"a batch of {len(batch)}", exc)
            finally:
                self._puback(batch)
            self._notify(batch)
            self.writer_cpu_s += time.thread_time() - cpu0
            if self.batcher.empty():
                self.idle.set()
        self.idle.set()

    def _notify(self, batch: list[Inbound]) -> None:
        stored_at = time.time()
        for hook in self.on_stored:
            try:
                hook(batch, stored_at)
            except Exception:  # an observer's bug must not stop storage (the batch is stored already)
                self.observer_errors += 1
                if self.observer_errors in (1, 10, 100, 1000) or self.observer_errors % 10_000 == 0:
                    log.exception("on_stored hook %r failed (%d times)", hook, self.observer_errors)

    def _write(self, batch: list[Inbound]) -> None:
        storable = [it for it in batch if it.channel != p.Channel.MODEL_REQUEST]
        result = store.StoreResult()
        if storable:
            try:
                with self.sessions() as s:
                    result = store.write(s, storable)
                    s.commit()
                self.transactions += 1
            except Exception as exc:
                # One bad row must not lose the batch: write each message on its own.
                self.rejects.internal_error("batch", f"a batch of {len(storable)}, retried one by one", exc)
                result = self._write_one_by_one(storable)
        self.stored.update(result.stored)
        self.stored["duplicate"] += sum(result.duplicates.values())
        if result.acked:
            self.acks_sent += publish_acks(self.client, result.acked)
        statuses = [(it.device, it.message) for it in storable if it.channel == p.Channel.STATUS]
        if statuses:
            self.rollouts.wake(statuses)
        for it in batch:
            if it.channel == p.Channel.MODEL_REQUEST:
                self._model_request(it)

    def _write_one_by_one(self, items: list[Inbound]) -> store.StoreResult:
        result = store.StoreResult()
        for it in items:
            try:
                with self.sessions() as s:
                    one = store.write(s, [it])
                    s.commit()
                self.transactions += 1
                result.merge(one)
            except Exception as exc:
                self.rejects.internal_error(it.channel.value, p.device_topic(it.device, it.channel), exc)
        return result

    def _model_request(self, it: Inbound) -> None:
        try:
            with self.sessions() as s:
                serve_model_request(s, self.client, self.cfg.default_quantization, it.device, it.message,
                                    it.received_at)
                s.commit()
        except Exception as exc:
            self.rejects.internal_error(it.channel.value, p.device_topic(it.device, it.channel), exc)

    def _puback(self, batch: list[Inbound]) -> None:
        """PUBACK after storing (one write for the batch); a message from an earlier connection is
        redelivered by the broker instead."""
        epoch = self._epoch
        puback_all(self.client, [it.mid for it in batch if it.mid and it.epoch == epoch])


__all__ = ["HUB_CHANNELS", "HUB_CLIENT_ID", "SHARE_GROUP", "HubServer", "ScaleOutError", "tune_gc"]
