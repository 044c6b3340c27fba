"""The edge agent: wiring of MQTT in and out, the update machine, the scoring worker, heartbeats and sync.

Threads: paho's network loops (decode and route messages; a reading source scores a small message itself
when the scorer is idle, see ``_offer``), one scoring worker,
one housekeeping timer (heartbeat, telemetry, sync, update ticks, outbox checkpoints), the outbox
sender, one announcement checker (signature checks off the network thread), a short-lived installer
per new bundle, and optional source threads.  Model swaps replace one reference; readings keep flowing.
The model lifecycle (download, checks, probation, rollback) lives in :mod:`edge_agent.update`.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import paho.mqtt.client as mqtt

from edge_agent.config import AgentConfig, CsvSource, MqttSource, agent_profile
from edge_agent.detector import ActiveModel, EpisodeTracker, PushResult, ScoredWindow, StreamingDetector
from edge_agent.health import SystemdNotifier, Watchdog
from edge_agent.model_store import ModelStore
from edge_agent.mqtt_source import HWM_META, AckLedger, MqttReadingSource
from edge_agent.outbox import DEFAULT_MAX_BYTES, FILENAME, Kind, Outbox, Sender
from edge_agent.readings_queue import ReadingQueue
from edge_agent.sources import CsvReplay, csv_progress_key
from edge_agent.sync import SyncSelector
from edge_agent.update import Updater, verified_announcement
from shared import __version__
from shared.mqtt import BrokerConfig, MessageGuard, make_client, topic_channel
from shared.mqtt import start as start_mqtt
from shared.mqtt_direct import DirectWriteClient
from shared.protocol import (
    PROTOCOL_VERSION,
    Ack,
    AgentState,
    AnomalyEvent,
    Channel,
    Heartbeat,
    ModelRequest,
    ProtocolError,
    RejectCounter,
    RejectReason,
    Status,
    SyncBatch,
    Telemetry,
    decode,
    device_topic,
    encode,
    finite,
    fleet_model_topic,
    npy_topic,
)
from shared.readings import ReadingsBlock, decode_readings, decode_readings_npy
from shared.scoring import attribution
from shared.signing import parse_public_key

if TYPE_CHECKING:
    from edge_agent.metrics import AgentMetrics

log = logging.getLogger("edge_agent")

TOP_FEATURES = 3
OUTBOX_KIND = {Channel.ANOMALY: Kind.ANOMALY, Channel.STATUS: Kind.STATUS, Channel.TELEMETRY: Kind.TELEMETRY,
               Channel.SYNC: Kind.SYNC}
STOP_DRAIN_S = 5.0
# MQTT readings are acknowledged by a commit (sync rows + high-water mark in one outbox transaction)
# once COMMIT_MESSAGES messages are processed or the oldest processed one waited COMMIT_S seconds.
# COMMIT_MESSAGES stays below Mosquitto's default max_inflight_messages (20) so the broker never stalls.
COMMIT_MESSAGES = 16
COMMIT_S = 0.5
# Anomaly event ids are derived from what was detected, so a window scored again after a crash (readings
# processed but not yet committed are redelivered) yields the same id and is stored once.
EVENT_NAMESPACE = uuid.UUID("9c7d7f3e-5b7a-4f35-9d61-2f1b8a6e0c41")
GIL_SWITCH_INTERVAL_S = 0.0005  # `edge-agent run` sets it (CPython's default is 0.005)
# A reading message of at most this many readings that finds the scorer idle and nothing queued is scored
# by the thread that received it (no hand-off to the scorer thread); larger blocks always go through the
# queue, so a burst keeps decoding and scoring on two threads.
INLINE_MAX_READINGS = 8


def collect_young_garbage() -> None:
    """Run the cyclic collector's due work now, right after a block was scored and reported.

    Why: its automatic runs start on whichever allocation crosses the threshold, often in the middle of
    scoring a reading (0.2-1.3 ms each, ~180 in a 48 s run at 400 readings/s); here, between readings,
    the same collections (the generation CPython would pick) cost the next reading nothing.  From half the
    gen-0 threshold on, so the automatic trigger is rarely reached.
    """
    c0, c1, c2 = gc.get_count()
    t0, t1, t2 = gc.get_threshold()
    if not gc.isenabled() or t0 == 0 or c0 < t0 // 2:
        return
    gc.collect(2 if c2 >= t2 else 1 if c1 >= t1 else 0)


@dataclass
class TelemetryStats:
    """Windows one model scored in a telemetry interval."""

    n: int = 0
    flagged: int = 0
    total: float = 0.0
    peak: float = 0.0

    def add(self, scores: np.ndarray, anomalous: np.ndarray) -> None:
        self.n += len(scores)
        self.flagged += int(np.count_nonzero(anomalous))
        self.total += float(scores.sum())
        self.peak = max(self.peak, float(scores.max()))


@dataclass
class Counters:
    received: int = 0
    scored: int = 0
    anomalies: int = 0
    sync_dropped: int = 0
    sync_rows_sent: int = 0


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.device = cfg.device_id
        self.store = ModelStore(cfg.state_dir, [parse_public_key(k) for k in cfg.trusted_keys])
        self.detector = StreamingDetector(cfg.detector.threshold_scale, cfg.detector.max_batch,
                                          cfg.detector.max_future_s)
        self.tracker = EpisodeTracker(cfg.detector.rearm_readings)
        self.queue = ReadingQueue(cfg.queue_size)
        self.rejects = RejectCounter(log)
        self.guard = MessageGuard(self.rejects, self._channel_of)
        self.counters = Counters()
        self.started = time.monotonic()
        self.stop_event = threading.Event()
        self.watchdog = Watchdog(SystemdNotifier(), release=self.stop_event)
        self._runtime = ""
        self.updater = Updater(cfg, self.store, self.detector, agent_profile(cfg),
                               swap=self._swap, request=self._request, publish_status=self._publish_status)
        self.sync = SyncSelector(cfg.sync)
        self._tele_lock = threading.Lock()
        self._tele: dict[int, TelemetryStats] = {}  # per model version, since the last telemetry message
        self._hb_seq = 0
        self._threads: list[threading.Thread] = []
        self.sources: list[CsvReplay] = []
        self.readers: list[MqttReadingSource] = []  # every MQTT readings path, one client per broker
        self._own_readers: list[MqttReadingSource] = []  # those on the agent's own broker
        self.ledger = AckLedger()
        self._announcements: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._next_sync = time.monotonic() + cfg.sync.interval_s  # the scorer's sync flush and commit
        self._committed_hwm = -float("inf")
        self.metrics: AgentMetrics | None = None
        if cfg.metrics.listen:  # imported only when on: prometheus-client costs memory
            from edge_agent.metrics import AgentMetrics

            self.metrics = AgentMetrics(self, cfg.metrics.listen)

        self.outbox = Outbox(cfg.state_dir / FILENAME, cfg.outbox.max_bytes or DEFAULT_MAX_BYTES,
                             synchronous=cfg.outbox.synchronous.upper())
        # A stable id and a persistent session: the broker keeps our subscriptions (and queues what the
        # hub sends, e.g. acknowledgements and model chunks) across our restarts.
        # Reports are written to the socket by the thread that publishes them (the scorer for anomaly events).
        self.client = make_client(cfg.broker, f"edge-{self.device}", persistent=True, client_class=DirectWriteClient)
        self.sender = Sender(self.outbox, self.client, cfg.outbox, self.stop_event,
                             cfg.sync.bandwidth_bytes_s if cfg.sync.enabled else 0.0)
        offline = Status(v=PROTOCOL_VERSION, device=self.device, ts=time.time(), state=AgentState.OFFLINE)
        self.client.will_set(self._topic(Channel.STATUS), encode(offline), qos=1, retain=True)
        self.client.on_connect = self.guard.callback(self._on_connect, "connect")
        self.client.on_disconnect = self.guard.callback(lambda *_: self.sender.on_disconnect(), "disconnect")
        self.client.on_publish = self.guard.callback(lambda _c, _u, mid, *_: self.sender.on_publish(mid), "publish")
        self.client.on_message = self.guard.on_message(self._on_message)
        self._reading_brokers = self._reading_subscriptions()
        self._reading_topics = {t for topics in self._reading_brokers.values() for t in topics}
        # Every JSON readings topic T has a binary sibling T/npy (numpy .npy rows, see docs/protocol.md).
        self._npy_topics = {npy_topic(t) for t in self._reading_topics}
        # Topics an older agent read through its main session: unsubscribed at connect (see _on_connect).
        self._legacy_topics = {t for t in self._reading_brokers.get(cfg.broker, [])}
        self._legacy_topics |= {npy_topic(t) for t in self._legacy_topics}

    def _reading_subscriptions(self) -> dict[BrokerConfig, list[str]]:
        """Readings topics per broker: the agent's own readings topic when no source is configured, else
        every ``[[sources]]`` mqtt topic on its broker (none = the agent's broker)."""
        mqtt_sources = ([s for s in self.cfg.sources if isinstance(s, MqttSource)] if self.cfg.sources
                        else [MqttSource(type="mqtt")])
        out: dict[BrokerConfig, list[str]] = {}
        for src in mqtt_sources:
            topics = out.setdefault(src.broker or self.cfg.broker, [])
            topic = src.topic or self._topic(Channel.READINGS)
            if topic not in topics:
                topics.append(topic)
        return out

    # ------------------------------------------------------------------ lifecycle

    def _topic(self, channel: Channel) -> str:
        return device_topic(self.device, channel)

    def start(self) -> None:
        self.updater.boot()
        if self.metrics is not None:
            self.metrics.start()
        start_mqtt(self.client, self.cfg.broker)
        for target, name in ((self._score_loop, "scorer"), (self._housekeeping, "housekeeping"),
                             (self.sender.run, "outbox-sender"), (self._announcement_loop, "announcements")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        for src in self.cfg.sources:
            if isinstance(src, CsvSource):
                resume = self.outbox.meta(csv_progress_key(src))
                replay = CsvReplay(src, self.queue.put, self.stop_event, int(resume) if resume else 0)
                replay.start()
                self.sources.append(replay)
        hwm = self.outbox.meta(HWM_META)
        for broker, topics in self._reading_brokers.items():
            # Stable id + persistent QoS-1 session: the broker queues readings while the agent restarts;
            # manual acks after the commit: nothing acknowledged lives only in memory.
            own = broker == self.cfg.broker
            if own:  # beside the main session, whose id the broker config may set
                broker = replace(broker, client_id=f"{broker.client_id or f'edge-{self.device}'}-readings")
            source = MqttReadingSource(broker, broker.client_id if own else f"edge-src-{self.device}", topics,
                                       self.guard, lambda t, p: self._decode_block(t, p, t in self._npy_topics),
                                       self._offer, self.ledger, float(hwm) if hwm else -float("inf"),
                                       on_subscribed=self._readers_subscribed if own else None)
            self.readers.append(source)
            if own:
                self._own_readers.append(source)
            source.start()
        log.info("agent %s started (model %s)", self.device, self.model_version)

    def stop(self) -> None:
        """Put the last reports in the outbox, publish what is unsent (bounded), disconnect.

        Whatever the hub has not acknowledged stays in the outbox and is sent again after the next start.
        """
        # Reading sources first: what arrives from now on stays queued in their persistent session for
        # the next run; what was received and not acknowledged is redelivered to it.
        for source in self.readers:
            source.stop()
        self.stop_event.set()
        self.queue.close()
        for t in self._threads:
            t.join(timeout=10)
        self._commit_readings(force=True)  # what was scored is kept; the next run skips it
        if self.client.is_connected():
            self._heartbeat()
        self._telemetry()
        self._send(Channel.STATUS, self._status(AgentState.OFFLINE))
        self.sender.drain(STOP_DRAIN_S)
        self.client.disconnect()
        self.client.loop_stop()
        if self.metrics is not None:
            self.metrics.stop()
        self.outbox.close()

    @property
    def model_version(self) -> int | None:
        m = self.detector.model
        return m.version if m else None

    def _swap(self, model: ActiveModel | None) -> None:
        """Put a model in front of the scorer (called by the update machine)."""
        self.detector.swap(model)
        if model is not None:
            self.tracker.rearm = self.cfg.detector.rearm_readings or model.preprocessing.window
            self._runtime = model.model.runtime.value
            log.info("model %s v%d in front of the scorer (%s runtime)", model.name, model.version, self._runtime)

    def _request(self, version: int) -> None:
        req = ModelRequest(v=PROTOCOL_VERSION, device=self.device, version=version)
        self.client.publish(self._topic(Channel.MODEL_REQUEST), encode(req), qos=1)

    # ------------------------------------------------------------------ MQTT

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if getattr(reason, "is_failure", False):
            return
        subs = [(fleet_model_topic(), 1), (self._topic(Channel.MODEL), 1), (self._topic(Channel.MODEL_CHUNK), 1)]
        subs.append((self._topic(Channel.ACK), 1))
        client.subscribe(subs)
        if self._legacy_topics:  # readings have their own session now (MqttReadingSource)
            client.unsubscribe(sorted(self._legacy_topics))
        self.sender.on_connect()
        if all(r.subscribed.is_set() for r in self._own_readers):
            self._publish_status()  # else once they are: "online" means readings published now reach us

    def _readers_subscribed(self) -> None:
        if self.client.is_connected() and all(r.subscribed.is_set() for r in self._own_readers):
            self._publish_status()

    def _channel_of(self, topic: str) -> str:
        if topic in self._reading_topics:
            return Channel.READINGS.value
        return Channel.READINGS_NPY.value if topic in self._npy_topics else topic_channel(topic)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """Route one message (run under ``self.guard``: whatever it raises is counted, never fatal)."""
        topic = msg.topic
        if topic in self._legacy_topics:  # queued for an older agent's main session before the upgrade
            self.queue.put(self._decode_block(topic, msg.payload, topic in self._npy_topics))
        elif topic in (fleet_model_topic(), self._topic(Channel.MODEL)):
            self._announcements.put(msg)  # its signature check (a helper process) must not hold up readings
        elif topic == self._topic(Channel.MODEL_CHUNK):
            self.updater.on_chunk(decode(Channel.MODEL_CHUNK, msg.payload))
        elif topic == self._topic(Channel.ACK):
            ack: Ack = decode(Channel.ACK, msg.payload, device=self.device)
            self.sender.on_ack(ack.ids)
        else:
            raise ProtocolError(RejectReason.BAD_TOPIC, "not a topic this agent consumes")

    def _decode_block(self, _topic: str, payload: bytes | bytearray, npy: bool) -> ReadingsBlock:
        """JSON (per reading or columnar) or .npy → one numpy block for the scoring queue."""
        if npy:
            model = self.detector.model
            return decode_readings_npy(payload, model.preprocessing.features if model else None)
        return decode_readings(payload)

    def _announcement_loop(self) -> None:
        """Announcements in arrival order, off paho's network thread: each one's signature check runs in a
        helper process (~0.1 s on x86, ~1 s on a Pi 3) while readings keep arriving and being scored."""
        while not self.stop_event.is_set():
            try:
                msg = self._announcements.get(timeout=0.5)
            except queue.Empty:
                continue
            self.guard.handle(lambda m: self._handle_announcement(m.topic, m.payload), msg)

    def _handle_announcement(self, topic: str, payload: bytes | bytearray) -> None:
        """Follow a signed announcement; unsigned or badly signed ones raise ``bad_signature``.

        An empty retained payload clears the topic's announcement (it can only stop a pending download).
        """
        ann = None if not payload else verified_announcement(self.store.trusted, payload)
        self.updater.on_announcement(topic == fleet_model_topic(), ann)

    def _status(self, state: AgentState) -> Status:
        return Status(
            v=PROTOCOL_VERSION,
            device=self.device,
            ts=time.time(),
            state=state,
            model_version=self.model_version,
            agent_version=__version__,
            runtime=self._runtime,
            msg_id=uuid.uuid4().hex,
            **self.updater.status_fields(),  # type: ignore[arg-type]
        )

    def _publish_status(self) -> None:
        self._send(Channel.STATUS, self._status(AgentState.ONLINE))

    def _send(self, channel: Channel, *messages: AnomalyEvent | Status | SyncBatch | Telemetry,
              meta: dict[str, str] | None = None) -> None:
        """The one way durable reports leave the agent (anomaly, status, telemetry, sync).

        Each message carries its durable id (``event_id`` / ``batch_id`` / ``msg_id``); the messages and
        ``meta`` are written to the on-disk outbox in one transaction (local disk only, never the
        network) and the sender thread delivers them.
        """
        if channel == Channel.ANOMALY and len(messages) == 1 and meta is None:
            event = messages[0]
            assert isinstance(event, AnomalyEvent)
            # The latency path: durable first, then published from this thread (no sender wake-up).
            self.sender.send_now(event.event_id, Kind.ANOMALY, self._topic(channel), encode(event))
            return
        entries = []
        for message in messages:
            durable_id = (message.event_id if isinstance(message, AnomalyEvent)
                          else message.batch_id if isinstance(message, SyncBatch) else message.msg_id)
            payload = encode(message)
            if isinstance(message, Status):
                meta = {**(meta or {}), "last_status": payload.decode()}
            entries.append((durable_id, OUTBOX_KIND[channel], self._topic(channel), payload,
                            channel == Channel.STATUS))
        self.outbox.put_many(entries, meta)

    # ------------------------------------------------------------------ scoring

    def _score_loop(self) -> None:
        while not self.stop_event.is_set() or len(self.queue):
            self.watchdog.ping()  # systemd restarts the agent when scoring hangs
            batch = self.queue.get(max_items=1024, timeout=COMMIT_S)  # returns holding the scoring turn
            try:
                if batch:
                    self._process(batch)
                self._commit_readings()
                collect_young_garbage()
            finally:
                self.queue.release()

    def _offer(self, block: ReadingsBlock) -> int:
        """A reading source's sink: queue ``block`` for the scorer, or, when it is small and the scorer is
        idle with nothing queued, score it on this thread (the scoring turn keeps one scorer at a time, in
        order).  Returns the block's queue position (the source's ack ledger)."""
        position, claimed = self.queue.put_or_claim(block, INLINE_MAX_READINGS)
        if claimed:
            try:
                self._process([block])
                self._commit_readings()
                collect_young_garbage()
            finally:
                self.queue.release()
        return position

    def _commit_readings(self, force: bool = False) -> None:
        """Acknowledge processed MQTT messages and record CSV progress once what the agent keeps of them is
        durable.

        Runs holding the scoring turn (the scorer thread, or a reading source scoring a small block itself),
        the only writer of sync rows (the sync interval's flush included), so
        the high-water mark (the newest admitted reading) and each CSV replay's next row, written in the
        same outbox transaction as the sync batches, cover exactly the rows stored: a restarted agent
        skips what this run stored and nothing else.  Anomaly events are already in the outbox (``_report``).
        Commits happen every COMMIT_MESSAGES messages or COMMIT_S s (the broker's in-flight window waits for
        the acks), at the end of each sync interval (CSV progress), and at stop.
        """
        now = time.monotonic()
        taken = self.queue.taken
        settled = self.ledger.settled(taken)
        interval = now >= self._next_sync
        if not (force or interval or (settled and (len(settled) >= COMMIT_MESSAGES
                                                   or now - settled[0].received >= COMMIT_S))):
            return
        if interval:
            self._next_sync = now + self.cfg.sync.interval_s
        hwm = self.detector.last_ts
        meta = {HWM_META: repr(hwm)} if np.isfinite(hwm) and hwm != self._committed_hwm else {}
        self._committed_hwm = hwm  # unchanged: no write (an idle gateway's SD card is not written every interval)
        for replay in self.sources:
            row = replay.progress(taken)
            if row is not None:
                meta[csv_progress_key(replay.cfg)] = str(row)
        batches = (self.sync.take(self.device, self.model_version, reservoir=interval or force)
                   if self.cfg.sync.enabled else [])
        self._queue_sync(batches, meta or None)
        for p in settled:
            p.source.ack(p.mid, p.qos, p.generation)
        self.ledger.remove(settled)

    def _process(self, blocks: list[ReadingsBlock]) -> None:
        for block in blocks:
            try:
                t0 = time.perf_counter()
                pushed = self.detector.push_block(block)
                elapsed = time.perf_counter() - t0
                self.updater.observe(pushed.scored, elapsed)
                if self.metrics is not None and pushed.scored is not None and len(pushed.scored):
                    self.metrics.observe_scoring(elapsed)
            except ValueError as exc:  # e.g. more distinct features than the buffer holds
                self.rejects.reject("readings", ProtocolError(RejectReason.SCHEMA, str(exc)))
                continue
            self._account(pushed)

    def _account(self, pushed: PushResult) -> None:
        """Counters, telemetry, events and sync for one detector push: numpy per block, Python per event."""
        for reason, n in pushed.rejected.items():
            self.rejects.count(reason, n, f"{n} reading(s) rejected: {reason.value}")
        self.counters.received += pushed.admitted
        scored = pushed.scored
        if scored is not None and len(scored):
            self.counters.scored += len(scored)
            with self._tele_lock:
                self._tele.setdefault(scored.model_version, TelemetryStats()).add(scored.scores, scored.anomalous)
            for i in self.tracker.starts(scored.anomalous):
                self._report(scored.window(i))
        if self.cfg.sync.enabled:
            self.sync.offer(pushed)

    def _report(self, s: ScoredWindow) -> None:
        model = self.detector.model
        names = model.preprocessing.features if model else []
        shares = attribution(s.contributions, names, TOP_FEATURES)
        event = AnomalyEvent(
            v=PROTOCOL_VERSION,
            event_id=uuid.uuid5(EVENT_NAMESPACE, f"{self.device}/{s.model_version}/{s.ts!r}").hex,
            device=self.device,
            ts=s.ts,
            detected_at=time.time(),
            score=finite(s.score),
            threshold=s.threshold,
            model_version=s.model_version,
            reconstruction_error=finite(s.reconstruction_error),
            prediction_error=finite(s.prediction_error),
            top_features=list(shares),
            attribution=shares,
            likelihood=finite(s.likelihood),
        )
        self.counters.anomalies += 1
        self._send(Channel.ANOMALY, event)  # durable before it is logged: a logged event is never lost
        why = model.decision.scaled(self.detector.threshold_scale).reason(
            s.score, s.likelihood, [names[c] for c in s.stuck]) if model else f"score {s.score:.2f}"
        log.info("anomaly at %.3f: %s (model v%d; %s) id %s", event.ts, why, event.model_version,
                 ", ".join(f"{k} {v:.0%}" for k, v in shares.items()), event.event_id)

    # ------------------------------------------------------------------ housekeeping

    def _housekeeping(self) -> None:
        now = time.monotonic()
        next_hb, next_tele = now, now + self.cfg.telemetry_s
        while not self.stop_event.wait(0.5):
            now = time.monotonic()
            if now >= next_hb:
                next_hb = now + self.cfg.heartbeat_s
                self._heartbeat()
            if now >= next_tele:
                next_tele = now + self.cfg.telemetry_s
                self._telemetry()
            self.updater.tick(now)
            self.outbox.checkpoint()  # the WAL's fsyncs here, not in the scorer's commits

    def _heartbeat(self) -> None:
        self._hb_seq += 1
        stats = self.outbox.stats()
        hb = Heartbeat(
            v=PROTOCOL_VERSION,
            device=self.device,
            ts=time.time(),
            seq=self._hb_seq,
            uptime_s=time.monotonic() - self.started,
            model_version=self.model_version,
            readings_received=self.counters.received,
            readings_scored=self.counters.scored,
            anomalies=self.counters.anomalies,
            rejected=self.rejects.total,
            queue_depth=len(self.queue),
            rejects=self.rejects.counts(),
            outbox_depth=stats.depth,
            outbox_bytes=stats.bytes,
            outbox_dropped=stats.dropped,
        )
        self.client.publish(self._topic(Channel.HEARTBEAT), encode(hb), qos=0)

    def _telemetry(self) -> None:
        """Score statistics since the last call, one message per model that scored (the rollout gate compares
        flagged-window rates per model); one message without a model when nothing was scored."""
        with self._tele_lock:
            stats, self._tele = self._tele, {}
        per_model: list[tuple[int | None, TelemetryStats]] = list(stats.items()) or [(None, TelemetryStats())]
        messages = [Telemetry(
            v=PROTOCOL_VERSION,
            device=self.device,
            ts=time.time(),
            interval_s=self.cfg.telemetry_s,
            scored=st.n,
            score_mean=finite(st.total / st.n) if st.n else 0.0,
            score_max=finite(st.peak),
            readings_scored_total=self.counters.scored,
            msg_id=uuid.uuid4().hex,
            flagged=st.flagged,
            model_version=version,
        ) for version, st in per_model]
        self._send(Channel.TELEMETRY, *messages)

    def _queue_sync(self, batches: list[SyncBatch], meta: dict[str, str] | None = None) -> None:
        if batches or meta:
            self._send(Channel.SYNC, *batches, meta=meta)
        for batch in batches:
            self.counters.sync_rows_sent += len(batch.flags)
            # The fault and chaos tests count what reached the outbox from this line (tests/faults.py).
            log.info("sync batch %s: %d rows queued", batch.batch_id, len(batch.flags))
        self.counters.sync_dropped = sum(self.sync.dropped.values())
