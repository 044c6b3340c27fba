"""Durable store-and-forward for the agent's reports (anomaly events, status, telemetry, sync batches).

Why: the broker's PUBACK only says the broker has a message; a broker restarted without persistence
loses it, and an agent restart loses anything held in memory.  Every report is written here first
(stdlib SQLite, WAL) and stays until the hub acknowledges its durable id (``Ack`` on
``edgesentry/<device>/ack``).  The store is bounded: when full, the lowest priority goes first
(sync before telemetry before status before anomaly events), oldest first within a kind, and every
drop is counted by kind (persisted, so ``edge-agent status`` and heartbeats show it across restarts).

One connection guarded by one lock: callers on the scoring thread only touch the local disk, never
the network.  :class:`Sender` (one thread) publishes what is due while connected; an anomaly event
with nothing ahead of it is published by the scorer itself right after its commit (``Sender.send_now``:
paho only queues the packet for its network thread, nothing blocks on the network), which saves the
sender's wake-up on the reading → report path.
"""

from __future__ import annotations

import enum
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config import DEFAULT_OUTBOX_BYTES as DEFAULT_MAX_BYTES

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from edge_agent.config import OutboxConfig

log = logging.getLogger("edge_agent.outbox")

FILENAME = "outbox.sqlite"
# Checkpoints (WAL → database file, with fsyncs) run on the housekeeping thread after this many row changes
# (``Outbox.checkpoint``), never inside a report's commit on the scoring thread; SQLite's own automatic
# checkpoint stays as a safety net at SAFETY_CHECKPOINT_PAGES (40 MB of WAL) for callers that never call it.
CHECKPOINT_CHANGES = 256
SAFETY_CHECKPOINT_PAGES = 10_000
ENTRY_OVERHEAD = 96  # bytes counted per entry beyond payload and topic (row, index entries)


class Kind(enum.StrEnum):
    ANOMALY = "anomaly"
    STATUS = "status"
    TELEMETRY = "telemetry"
    SYNC = "sync"

    @property
    def priority(self) -> int:
        """Higher survives longer when the outbox is full."""
        return _PRIORITY[self]


_PRIORITY = {Kind.SYNC: 0, Kind.TELEMETRY: 1, Kind.STATUS: 2, Kind.ANOMALY: 3}

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sent REAL,
    next_send REAL
);
CREATE INDEX IF NOT EXISTS entries_drop ON entries (priority, seq);
CREATE TABLE IF NOT EXISTS drops (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    seq: int
    id: str
    kind: Kind
    topic: str
    payload: bytes
    retain: bool
    created: float
    attempts: int


@dataclass(frozen=True)
class Stats:
    depth: int
    bytes: int
    oldest_created: float | None
    depth_by_kind: dict[str, int]
    dropped: dict[str, int]


def _size(topic: str, payload: bytes) -> int:
    return len(payload) + len(topic) + ENTRY_OVERHEAD


class Outbox:
    """The on-disk queue. Thread-safe; every method is a short local transaction."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, *, synchronous: str = "NORMAL") -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={SAFETY_CHECKPOINT_PAGES}")
        self._synchronous = synchronous
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_db: sqlite3.Connection | None = None
        self._checkpointed_changes = 0
        self._db.executescript(SCHEMA)
        self._bytes = int(self._db.execute(
            f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ENTRY_OVERHEAD}), 0) FROM entries"
        ).fetchone()[0])
        self._listeners: list[Callable[[], None]] = []

    def close(self) -> None:
        with self._checkpoint_lock:
            if self._checkpoint_db is not None:
                self._checkpoint_db.close()
                self._checkpoint_db = None
        with self._lock:
            self._db.close()

    def checkpoint(self, min_changes: int = CHECKPOINT_CHANGES) -> bool:
        """Copy the WAL into the database file once ``min_changes`` rows changed since the last time, on a
        connection of its own (a PASSIVE checkpoint runs beside the writer): the fsyncs of a checkpoint
        happen on the caller's thread (housekeeping), not in the scorer's commit of an anomaly event, where
        they were the reading → report latency's worst case.  True if it ran."""
        with self._lock:
            changes = self._db.total_changes
        if changes - self._checkpointed_changes < min_changes:
            return False
        with self._checkpoint_lock:
            if self._checkpoint_db is None:
                self._checkpoint_db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._checkpoint_db.execute(f"PRAGMA synchronous={self._synchronous}")
            self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._checkpointed_changes = changes
        return True

    def on_change(self, callback: Callable[[], None]) -> None:
        """Called (outside the lock) after each put, so a sender can wake at once."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ writes

    def put(self, id: str, kind: Kind, topic: str, payload: bytes, retain: bool = False) -> bool:
        """Store one report durably; False if it was dropped (full of higher-priority entries or too big)."""
        return self.put_many([(id, kind, topic, payload, retain)])[0]

    def put_many(self, items: list[tuple[str, Kind, str, bytes, bool]], meta: dict[str, str] | None = None
                 ) -> list[bool]:
        """Store reports and meta values in ONE transaction (all or nothing on a crash): the agent's reading
        commit writes its sync batches together with the high-water mark that says they are stored."""
        results: list[bool] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for id_, kind, topic, payload, retain in items:
                    results.append(self._insert(id_, kind, topic, payload, retain) is not None)
                for key, value in (meta or {}).items():
                    self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        if items:
            self._changed()
        return results

    def put_sending(self, id: str, kind: Kind, topic: str, payload: bytes, resend_s: float) -> int | None:
        """Store one report durably, already marked as published (attempt 1, due again after ``resend_s``):
        the caller publishes it right after this commit, from its own thread (the latency path: no wake-up
        of the sender thread).  Only when nothing of the same or higher priority is still unsent, so order
        is kept; otherwise (and when it is dropped or already held) it is stored like ``put``, for the
        sender.  Returns the new entry's seq when the caller is to publish it, else None."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                waiting = self._db.execute("SELECT 1 FROM entries WHERE priority >= ? AND next_send IS NULL LIMIT 1",
                                           (kind.priority,)).fetchone() is not None
                seq = self._insert(id, kind, topic, payload, False, None if waiting else resend_s)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        if waiting or not seq:
            self._changed()
            return None
        return seq

    def _rollback(self) -> None:
        """Caller holds the lock."""
        self._db.execute("ROLLBACK")
        self._bytes = int(self._db.execute(
            f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ENTRY_OVERHEAD}), 0) FROM entries"
        ).fetchone()[0])

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _insert(self, id: str, kind: Kind, topic: str, payload: bytes, retain: bool,
                sending_resend_s: float | None = None) -> int | None:
        """Caller holds the lock inside a transaction.  The new entry's seq; 0 if the id is already held;
        None if dropped.  ``sending_resend_s``: store it as published now (see ``put_sending``)."""
        size = _size(topic, payload)
        if size <= self.max_bytes and self._make_room(size, kind.priority):
            now = time.time()
            sending = sending_resend_s is not None
            try:
                cur = self._db.execute(
                    "INSERT INTO entries (id, kind, priority, topic, payload, retain, created, attempts, last_sent, "
                    "next_send) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (id, kind.value, kind.priority, topic, payload, int(retain), now, int(sending),
                     now if sending else None, now + sending_resend_s if sending_resend_s is not None else None),
                )
            except sqlite3.IntegrityError:
                log.warning("outbox already holds id %s; not stored twice", id)
                return 0
            self._bytes += size
            return int(cur.lastrowid or 0)
        self._count_drop(kind.value, 1)
        log.warning("outbox full (%d bytes): dropped a new %s report", self._bytes, kind.value)
        return None

    def _make_room(self, size: int, priority: int) -> bool:
        """Caller holds the lock. Delete lower-or-equal priority entries, oldest first, until ``size`` fits."""
        while self._bytes + size > self.max_bytes:
            row = self._db.execute(
                f"SELECT seq, kind, LENGTH(payload) + LENGTH(topic) + {ENTRY_OVERHEAD} FROM entries "
                "WHERE priority <= ? ORDER BY priority, seq LIMIT 1", (priority,)
            ).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM entries WHERE seq = ?", (row[0],))
            self._bytes -= int(row[2])
            self._count_drop(row[1], 1)
        return True

    def _count_drop(self, kind: str, n: int) -> None:
        self._db.execute("INSERT INTO drops (kind, n) VALUES (?, ?) ON CONFLICT(kind) DO UPDATE SET n = n + ?",
                         (kind, n, n))

    def ack(self, ids: Iterable[str]) -> int:
        """The hub stored these ids: delete them. Unknown ids (already acked) are ignored."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            return self._delete("id", ids)

    def delete_seqs(self, seqs: Iterable[int]) -> int:
        """Delete by sequence number (``confirm = "broker"``: a PUBACK is enough)."""
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._lock:
            return self._delete("seq", seqs)

    def _delete(self, column: str, keys: list[str] | list[int]) -> int:
        marks = ",".join("?" * len(keys))
        freed = self._db.execute(
            f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ENTRY_OVERHEAD}), 0), COUNT(*) "
            f"FROM entries WHERE {column} IN ({marks})", keys).fetchone()
        self._db.execute(f"DELETE FROM entries WHERE {column} IN ({marks})", keys)
        self._bytes -= int(freed[0])
        return int(freed[1])

    def mark_sent(self, seqs: Iterable[int], ack_timeout_s: float, max_backoff_s: float,
                  now: float | None = None) -> None:
        """Published: due again after ``ack_timeout_s``, doubling per attempt up to ``max_backoff_s`` (a hub
        that is down, or does not acknowledge, is not hammered with the whole backlog every timeout)."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.executemany(
                "UPDATE entries SET next_send = ? + MIN(?, ? * (1 << MIN(attempts, 20))), "
                "attempts = attempts + 1, last_sent = ? WHERE seq = ?",
                [(now, max(max_backoff_s, ack_timeout_s), ack_timeout_s, now, s) for s in seqs])

    def requeue(self, seqs: Iterable[int]) -> None:
        """Due again now (a publish that paho refused)."""
        with self._lock:
            self._db.executemany("UPDATE entries SET next_send = NULL WHERE seq = ?", [(s,) for s in seqs])

    def requeue_all(self) -> None:
        """A new connection: whatever was sent but not acknowledged may be lost, send it again."""
        with self._lock:
            self._db.execute("UPDATE entries SET next_send = NULL WHERE next_send IS NOT NULL")

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    # ------------------------------------------------------------------ reads

    def due(self, now: float, limit: int) -> list[Entry]:
        """Entries to publish now, in order: never sent, or unacknowledged past their re-send time.

        Higher priority first (an anomaly never waits behind a backlog of sync batches), in creation
        order within a priority.  Only the newest entry of a retained topic is published retained, so a
        re-sent old status never replaces the current one on the broker.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, kind, topic, payload, retain, created, attempts FROM entries "
                "WHERE next_send IS NULL OR next_send <= ? ORDER BY priority DESC, seq LIMIT ?",
                (now, limit),
            ).fetchall()
            newest = dict(self._db.execute(
                "SELECT topic, MAX(seq) FROM entries WHERE retain = 1 GROUP BY topic").fetchall())
        return [Entry(seq, id_, Kind(kind), topic, bytes(payload), bool(retain) and newest.get(topic) == seq,
                      created, attempts)
                for seq, id_, kind, topic, payload, retain, created, attempts in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    def stats(self) -> Stats:
        with self._lock:
            return _stats(self._db, self._bytes)

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])


def _stats(db: sqlite3.Connection, nbytes: int | None = None) -> Stats:
    by_kind = {k: int(n) for k, n in db.execute("SELECT kind, COUNT(*) FROM entries GROUP BY kind")}
    if nbytes is None:
        nbytes = int(db.execute(
            f"SELECT COALESCE(SUM(LENGTH(payload) + LENGTH(topic) + {ENTRY_OVERHEAD}), 0) FROM entries"
        ).fetchone()[0])
    oldest = db.execute("SELECT MIN(created) FROM entries").fetchone()[0]
    dropped = {k: int(n) for k, n in db.execute("SELECT kind, n FROM drops")}
    return Stats(sum(by_kind.values()), nbytes, oldest, by_kind, dropped)


def read_stats(path: Path) -> tuple[Stats, dict[str, str]]:
    """Stats and meta of an outbox another process may be writing (read-only; WAL allows it)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return _stats(db), {k: v for k, v in db.execute("SELECT key, value FROM meta")}
    finally:
        db.close()


class TokenBucket:
    """Rate cap (per second) with a one-second burst; ``take`` says how long to wait before sending."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()
        self._lock = threading.Lock()  # the sender thread and the scorer's direct sends share the caps

    def wait_s(self, amount: float) -> float:
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            return 0.0 if self.tokens >= min(amount, self.rate) else (min(amount, self.rate) - self.tokens) / self.rate

    def take(self, amount: float) -> None:
        with self._lock:
            self.tokens -= amount


class Sender:
    """The one thread that publishes due outbox entries while connected, within the rate caps.

    Sync batches also spend a separate token bucket of ``sync_bytes_per_s`` (the sync bandwidth cap).
    QoS-1 PUBACKs (paho's ``on_publish``) only free in-flight slots (flow control); entries are deleted
    when the hub acknowledges them (``confirm = "hub"``), or on PUBACK with ``confirm = "broker"``.
    Un-acknowledged entries are published again after ``ack_timeout_s`` (doubling per attempt up to
    ``ack_timeout_max_s``), and all of them on reconnect.
    """

    def __init__(self, outbox: Outbox, client: mqtt.Client, cfg: OutboxConfig, stop: threading.Event,
                 sync_bytes_per_s: float = 0.0) -> None:
        self.outbox = outbox
        self.client = client
        self.cfg = cfg
        self.stop = stop
        self.connected = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._msgs = TokenBucket(cfg.max_messages_per_s)
        self._bytes = TokenBucket(cfg.max_bytes_per_s)
        # The sync bandwidth cap ([sync] bandwidth_bytes_s) is spent here, on what is actually published:
        # sync batches wait in the outbox (durable, bounded, resumable), never in memory.
        self._sync = TokenBucket(sync_bytes_per_s) if sync_bytes_per_s > 0 else None
        self.published = 0
        self._capped = False  # the last pump stopped at max_inflight: a PUBACK frees room for more
        outbox.on_change(self._wake.set)

    # called from paho's network thread
    def on_connect(self) -> None:
        self.outbox.requeue_all()
        with self._lock:
            self._inflight.clear()
        self.connected.set()
        self._wake.set()

    def on_disconnect(self) -> None:
        self.connected.clear()

    def on_publish(self, mid: int) -> None:
        self._done(mid)

    def on_ack(self, ids: list[str]) -> None:
        self.outbox.ack(ids)

    def _done(self, mid: int) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            capped = self._capped
        if seq is None:
            return
        if self.cfg.confirm == "broker":
            self.outbox.delete_seqs([seq])
        # Only when the in-flight cap held something back: waking the sender on every PUBACK (an SQL query
        # that finds nothing) competed for the CPU with the event's own delivery.  New entries wake it
        # through the outbox, re-sends through its timed wait.
        if capped:
            self._wake.set()

    def send_now(self, id: str, kind: Kind, topic: str, payload: bytes) -> bool:
        """Store a report and, when nothing of its priority waits ahead of it and the caps allow, publish it
        from the calling thread right after the commit (the reading → report latency path: no wake-up of
        the sender thread).  Otherwise the sender delivers it as usual.  True if published here."""
        import paho.mqtt.client as mqtt

        if not (self.connected.is_set() and self.inflight < self.cfg.max_inflight
                and max(self._msgs.wait_s(1), self._bytes.wait_s(len(payload))) == 0):
            self.outbox.put(id, kind, topic, payload)
            return False
        seq = self.outbox.put_sending(id, kind, topic, payload, self.cfg.ack_timeout_s)
        if seq is None:
            return False
        info = self.client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:  # not connected after all: the sender sends it (or the reconnect)
            self.outbox.requeue([seq])
            self._wake.set()
            return False
        self._msgs.take(1)
        self._bytes.take(len(payload))
        with self._lock:
            self.published += 1
            self._inflight[info.mid] = seq
        if info.is_published():  # the PUBACK may have beaten us to the table
            self._done(info.mid)
        return True

    @property
    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def run(self) -> None:
        while not self.stop.is_set():
            self._wake.wait(min(1.0, self.cfg.ack_timeout_s / 2))
            self._wake.clear()
            if self.connected.is_set():
                try:
                    self._pump(self.stop)
                except Exception:  # a bug here must not end delivery for good
                    log.exception("outbox sender failed; retrying")

    def drain(self, timeout_s: float) -> None:
        """On shutdown: publish what was never sent (acknowledgements may still come after a restart)."""
        deadline = time.monotonic() + timeout_s
        never = threading.Event()
        while self.connected.is_set() and time.monotonic() < deadline:
            self._pump(never)
            unsent = self.outbox.due(-math.inf, 1)  # highest priority first
            held = bool(unsent) and unsent[0].kind == Kind.SYNC and self._sync is not None  # by the sync cap
            if (not unsent or held) and self.inflight == 0:
                return
            self._wake.wait(0.05)
            self._wake.clear()

    def _pump(self, stop: threading.Event) -> None:
        import paho.mqtt.client as mqtt

        while self.connected.is_set() and not stop.is_set():
            with self._lock:  # with the pop in _done: a PUBACK after this check sees the flag
                room = self.cfg.max_inflight - len(self._inflight)
                self._capped = room <= 0
            if room <= 0:
                return
            entries = self.outbox.due(time.time(), min(room, 64))
            if not entries:
                return
            sent: list[int] = []
            try:
                for e in entries:
                    if e.kind == Kind.SYNC and self._sync is not None and self._sync.wait_s(len(e.payload)) > 0:
                        return  # sync is due last: nothing else is waiting; the run loop polls again
                    wait = max(self._msgs.wait_s(1), self._bytes.wait_s(len(e.payload)))
                    if wait > 0:
                        if stop.wait(wait):
                            return
                        break  # re-read what is due: an anomaly may have arrived meanwhile
                    info = self.client.publish(e.topic, e.payload, qos=1, retain=e.retain)
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        return
                    self._msgs.take(1)
                    self._bytes.take(len(e.payload))
                    if e.kind == Kind.SYNC and self._sync is not None:
                        self._sync.take(len(e.payload))
                    sent.append(e.seq)
                    with self._lock:
                        self._inflight[info.mid] = e.seq
                    if info.is_published():  # the PUBACK may have beaten us to the table
                        self._done(info.mid)
            finally:
                self.outbox.mark_sent(sent, self.cfg.ack_timeout_s, self.cfg.ack_timeout_max_s)
                with self._lock:
                    self.published += len(sent)


__all__ = ["DEFAULT_MAX_BYTES", "FILENAME", "Entry", "Kind", "Outbox", "Sender", "Stats", "TokenBucket",
           "read_stats"]
