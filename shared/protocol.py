"""MQTT topic tree and versioned message schemas (see docs/protocol.md).

Every message is a JSON object with ``"v": 2``.  :func:`decode` is the only way bytes from the
network become messages: it checks the size first, then parses with a depth-limited decoder (orjson:
nesting beyond 1024 levels fails cleanly, never a RecursionError), rejects NaN/Infinity, checks the
version, the schema and the topic's device id, and raises :class:`ProtocolError` with a
:class:`RejectReason` — nothing else.  Callers count and log rejections with :class:`RejectCounter` and
carry on — a malformed message never crashes a peer (see ``shared.mqtt.MessageGuard``).
"""

from __future__ import annotations

import base64
import enum
import functools
import io
import json
import logging
import math
import re
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from shared.schema import SchemaError, doc, dump, load

# 2: model announcements are signed (agents of version 1 would follow unsigned, forgeable ones).
PROTOCOL_VERSION = 2
ROOT = "edgesentry"
FLEET = "fleet"
MAX_MESSAGE_BYTES = 256 * 1024
CHUNK_BYTES = 96 * 1024  # raw bytes per model chunk; base64 keeps a chunk message well under the limit
MAX_SYNC_ROWS = 2000
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

log = logging.getLogger(__name__)


class Channel(enum.StrEnum):
    """Per-device sub-topics: ``edgesentry/<device>/<channel>``."""

    READINGS = "readings"  # sensor readings into the agent (local source): JSON, per reading or columnar
    READINGS_NPY = "readings/npy"  # sensor readings into the agent: numpy .npy float64 [ts, f1..fn] (binary)
    TELEMETRY = "telemetry"  # agent → hub: periodic score statistics
    ANOMALY = "anomaly"  # agent → hub: anomaly events (QoS 1)
    HEARTBEAT = "heartbeat"  # agent → hub: liveness and counters
    STATUS = "status"  # agent → hub, retained: online/offline, active model (LWT = offline)
    SYNC = "sync"  # agent → hub: batches of raw readings for retraining
    MODEL = "model"  # hub → agent, retained: model announcement for this device
    MODEL_REQUEST = "model/request"  # agent → hub: send me the chunks of version N
    MODEL_CHUNK = "model/chunk"  # hub → agent: one chunk of a bundle archive
    ACK = "ack"  # hub → agent: durable ids the hub has stored (the agent's outbox deletes them)


class RejectReason(enum.StrEnum):
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_VERSION = "bad_version"
    SCHEMA = "schema"
    BAD_TOPIC = "bad_topic"
    DEVICE_MISMATCH = "device_mismatch"
    STALE_TIMESTAMP = "stale_timestamp"  # a reading not after the previous one (counted per reading)
    FUTURE_TIMESTAMP = "future_timestamp"  # a reading too far ahead of the agent's clock (per reading)
    NO_MODEL = "no_model"  # plain .npy readings need the active model's feature order
    TOO_DEEP = "too_deep"  # nesting beyond the decoder's depth limit
    BAD_SIGNATURE = "bad_signature"  # unsigned or badly signed model announcement
    BAD_CHUNK = "bad_chunk"  # a model chunk that cannot belong to the announced archive
    INTERNAL_ERROR = "internal_error"  # a handler raised on this message (a bug); counted by channel


class ProtocolError(ValueError):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def valid_device_id(device: str) -> bool:
    return bool(DEVICE_ID_RE.match(device)) and device != FLEET


def device_topic(device: str, channel: Channel) -> str:
    if not valid_device_id(device):
        raise ValueError(f"invalid device id {device!r}: use 1-64 of [A-Za-z0-9_.-], not 'fleet'")
    return f"{ROOT}/{device}/{channel.value}"


def npy_topic(readings_topic: str) -> str:
    """The binary (.npy) sibling of a JSON readings topic: ``<topic>/npy``."""
    return f"{readings_topic}/npy"


def fleet_model_topic() -> str:
    return f"{ROOT}/{FLEET}/{Channel.MODEL.value}"


def subscription(channel: Channel) -> str:
    """Wildcard subscription for one channel across all devices."""
    return f"{ROOT}/+/{channel.value}"


def parse_topic(topic: str) -> tuple[str, Channel]:
    """``edgesentry/<device>/<channel>`` → (device, channel); fleet topics give device 'fleet'."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != ROOT:
        raise ProtocolError(RejectReason.BAD_TOPIC, f"not an {ROOT} topic: {topic!r}")
    device, rest = parts[1], "/".join(parts[2:])
    try:
        channel = Channel(rest)
    except ValueError:
        raise ProtocolError(RejectReason.BAD_TOPIC, f"unknown channel in {topic!r}") from None
    if device != FLEET and not valid_device_id(device):
        raise ProtocolError(RejectReason.BAD_TOPIC, f"invalid device id in {topic!r}")
    return device, channel


# ----------------------------------------------------------------------------------------- messages


class AgentState(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class ModelState(enum.StrEnum):
    """The agent's model update lifecycle (edge_agent/update.py owns the transitions)."""

    NONE = "none"  # no model yet: the agent buffers and syncs but does not score
    DOWNLOADING = "downloading"  # fetching the announced bundle's chunks
    VERIFYING = "verifying"  # signature, hash, manifest, profile budgets
    STAGED = "staged"  # loaded beside the running model, checked on recent windows
    ACTIVE = "active"  # swapped in, on probation (live health checks)
    COMMITTED = "committed"  # passed probation: the new rollback target
    FAILED = "failed"  # the offered bundle was refused before activation; see ``error``
    ROLLED_BACK = "rolled_back"  # failed probation: back on the previous committed model; see ``error``


@dataclass(frozen=True)
class Reading:
    """One sensor reading; missing values are null."""

    ts: float = doc("Sample time, seconds since the Unix epoch.")
    values: dict[str, float | None] = doc("Feature name → value (null = missing).")


MAX_READINGS_ROWS = 10_000
MAX_READINGS_FEATURES = 256


@dataclass(frozen=True)
class Readings:
    """Readings in one of two shapes: ``readings`` (one object per reading, for simple sensors) or
    columnar ``ts`` + ``features`` + ``values`` (one row per reading; far cheaper to decode and score).
    ``shared.readings.decode_readings`` decodes either into a numpy block."""

    v: int = doc("Protocol version.")
    readings: list[Reading] = doc("Readings in time order (batch them: one message per reading is slow).",
                                  default_factory=list)
    ts: list[float] = doc("Columnar form: sample times, seconds since the Unix epoch, increasing.",
                          default_factory=list)
    features: list[str] = doc("Columnar form: the column names of ``values``.", default_factory=list)
    values: list[list[float | None]] = doc("Columnar form: one row per ``ts``, one value per feature "
                                           "(null = missing).", default_factory=list)

    def __post_init__(self) -> None:
        if bool(self.readings) == bool(self.ts):
            raise ValueError("give either readings or ts/features/values (and not empty)")
        n = len(self.readings) or len(self.ts)
        if n > MAX_READINGS_ROWS:
            raise ValueError(f"too many readings in one message (max {MAX_READINGS_ROWS})")
        if self.ts:
            check_columnar(len(self.ts), self.features, len(self.values), {len(r) for r in self.values})


def check_columnar(n_ts: int, features: list[str], n_rows: int, widths: set[int]) -> None:
    """Shape rules of a columnar readings block (shared by the JSON and .npy decoders)."""
    if not 1 <= n_ts <= MAX_READINGS_ROWS:
        raise ValueError(f"need 1-{MAX_READINGS_ROWS} readings, got {n_ts}")
    if not 1 <= len(features) <= MAX_READINGS_FEATURES or len(set(features)) != len(features):
        raise ValueError(f"features must be 1-{MAX_READINGS_FEATURES} unique names")
    if any(not isinstance(f, str) or not 1 <= len(f) <= 128 for f in features):
        raise ValueError("feature names must be strings of 1-128 characters")
    if n_rows != n_ts or widths - {len(features)}:
        raise ValueError(f"values must be {n_ts} rows of {len(features)} values (one row per ts)")


@dataclass(frozen=True)
class AnomalyEvent:
    v: int = doc("Protocol version.")
    event_id: str = doc("Unique id chosen by the agent (idempotent storage).")
    device: str = doc("Reporting device.")
    ts: float = doc("Time of the newest reading in the anomalous window.")
    detected_at: float = doc("Agent clock when the event was raised.")
    score: float = doc("Anomaly score A(t).")
    threshold: float = doc("Threshold in force.")
    model_version: int = doc("Model version that scored the window.")
    reconstruction_error: float = doc("Raw reconstruction MSE.", default=0.0)
    prediction_error: float = doc("Raw prediction MSE.", default=0.0)
    top_features: list[str] = doc("Features that contributed most, largest first.", default_factory=list)
    attribution: dict[str, float] = doc("Share of the window's channel scores per top feature (sums to <= 1).",
                                        default_factory=dict)
    likelihood: float = doc("Streaming anomaly likelihood in [0, 1] (log-scaled tail probability).", default=0.0)

    def __post_init__(self) -> None:
        if not 1 <= len(self.event_id) <= 64:
            raise ValueError("event_id must be 1-64 characters")


@dataclass(frozen=True)
class Heartbeat:
    v: int = doc("Protocol version.")
    device: str = doc("Device id.")
    ts: float = doc("Agent clock.")
    seq: int = doc("Increments by one per heartbeat since start.")
    uptime_s: float = doc("Seconds since the agent started.")
    model_version: int | None = doc("Active model version, null if none.")
    readings_received: int = doc("Readings accepted since start.")
    readings_scored: int = doc("Readings scored since start.")
    anomalies: int = doc("Anomaly events raised since start.")
    rejected: int = doc("Messages (and readings refused by the timestamp rule) rejected since start.")
    queue_depth: int = doc("Readings waiting to be scored.")
    rejects: dict[str, int] = doc("Rejections since start by reason (RejectReason values).", default_factory=dict)
    outbox_depth: int = doc("Reports in the agent's outbox not yet acknowledged by the hub.", default=0)
    outbox_bytes: int = doc("Bytes those reports take (counted against the outbox budget).", default=0)
    outbox_dropped: dict[str, int] = doc("Reports dropped because the outbox was full, by kind, since install.",
                                         default_factory=dict)


@dataclass(frozen=True)
class Status:
    v: int = doc("Protocol version.")
    device: str = doc("Device id.")
    ts: float = doc("Agent clock.")
    state: AgentState = doc("online | offline (offline is the broker-delivered last will).")
    model_state: ModelState = doc("Update lifecycle state (see ModelState).", default=ModelState.NONE)
    model_version: int | None = doc("Active model version.", default=None)
    agent_version: str = doc("edgesentry version on the agent.", default="")
    runtime: str = doc("TFLite runtime in use (litert, tflite_runtime, tensorflow).", default="")
    error: str = doc("Why the last bundle was refused or rolled back, if it was.", default="")
    failed_version: int | None = doc("Version of the refused or rolled-back bundle.", default=None)
    rollout_id: int | None = doc("Rollout whose announcement the model state answers.", default=None)
    msg_id: str = doc("Durable id of this status change (acknowledged by the hub); empty for the last will.",
                      default="")


@dataclass(frozen=True)
class Telemetry:
    v: int = doc("Protocol version.")
    device: str = doc("Device id.")
    ts: float = doc("End of the interval (agent clock).")
    interval_s: float = doc("Length of the interval.")
    scored: int = doc("Windows scored in the interval.")
    score_mean: float = doc("Mean score in the interval.")
    score_max: float = doc("Max score in the interval.")
    readings_scored_total: int = doc("Readings scored since start.")
    msg_id: str = doc("Durable id (acknowledged by the hub).", default="")
    flagged: int | None = doc("Of the windows scored, how many the model flagged anomalous (its per-window "
                              "decision, before events group them into episodes); null from older agents.",
                              default=None)
    model_version: int | None = doc("Model that scored these windows (one message per model when an interval "
                                    "spans a swap); null from older agents or without a model.", default=None)


MAX_SYNC_FEATURES = 256


@dataclass(frozen=True)
class SyncBatch:
    """Raw readings for retraining, as JSON ``rows`` or compressed ``packed`` (one of the two).

    ``packed`` is base64 of zlib-compressed ``.npy`` bytes of a float64 array (rows, 1 + features):
    ``[ts, value...]`` per row, NaN = missing.  :meth:`table` is the one decoder for both forms.
    """

    v: int = doc("Protocol version.")
    device: str = doc("Device id.")
    batch_id: str = doc("Unique id chosen by the agent (idempotent storage).")
    features: list[str] = doc("Column names of ``rows`` after the timestamp.")
    rows: list[list[float | None]] = doc("[ts, value...] per reading, null = missing.", default_factory=list)
    flags: list[int] = doc("Per row: 1 if the agent's model flagged it anomalous.", default_factory=list)
    model_version: int | None = doc("Model active while the rows were scored.", default=None)
    packed: str = doc("Compressed alternative to ``rows``: base64(zlib(.npy float64 [ts, value...] rows)).",
                      default="")

    def __post_init__(self) -> None:
        if not 1 <= len(self.batch_id) <= 64:
            raise ValueError("batch_id must be 1-64 characters")
        if not 1 <= len(self.features) <= MAX_SYNC_FEATURES or len(self.rows) > MAX_SYNC_ROWS:
            raise ValueError(f"need 1-{MAX_SYNC_FEATURES} features and at most {MAX_SYNC_ROWS} rows")
        if self.packed and self.rows:
            raise ValueError("give rows or packed, not both")
        width = len(self.features) + 1
        if any(len(r) != width or r[0] is None for r in self.rows):
            raise ValueError(f"every row needs a timestamp and {len(self.features)} values")
        n = len(self.table()) if self.packed else len(self.rows)
        if n == 0:
            raise ValueError("a sync batch needs at least one row")
        if self.flags and len(self.flags) != n:
            raise ValueError("flags must have one entry per row")

    @functools.cached_property
    def _packed_table(self) -> np.ndarray:
        return unpack_rows(self.packed, len(self.features) + 1)

    def table(self) -> np.ndarray:
        """(rows, 1 + features) float64, NaN = missing: the one decoding of either form."""
        if self.packed:
            return self._packed_table
        return np.array([[np.nan if v is None else v for v in r] for r in self.rows], dtype=np.float64
                        ).reshape(len(self.rows), len(self.features) + 1)


def pack_rows(table: np.ndarray) -> str:
    """(rows, 1 + features) float64 → the ``packed`` string of a :class:`SyncBatch`."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(table, dtype=np.float64), allow_pickle=False)
    return base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii")


def unpack_rows(packed: str, width: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`, bounded: at most MAX_SYNC_ROWS rows of ``width`` finite-ts floats."""
    try:
        raw = base64.b64decode(packed, validate=True)
        limit = MAX_SYNC_ROWS * width * 8 + 4096  # the .npy header is < 4 KiB
        z = zlib.decompressobj()
        data = z.decompress(raw, limit)
        if z.unconsumed_tail or not z.eof:
            raise ValueError("packed rows are truncated or larger than the row limit")
        table = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - zlib, base64 and numpy's header parser (ast): any error = bad payload
        raise ValueError(f"packed rows: {type(exc).__name__}: {exc}") from None
    if table.dtype != np.float64 or table.ndim != 2 or table.shape[1] != width or len(table) > MAX_SYNC_ROWS:
        raise ValueError(f"packed rows must be float64 (<= {MAX_SYNC_ROWS}, {width}), got {table.dtype} {table.shape}")
    if not np.isfinite(table[:, 0]).all() or np.isinf(table[:, 1:]).any():
        raise ValueError("packed rows need finite timestamps and finite or NaN values")
    return table


MAX_ACK_IDS = 1000


@dataclass(frozen=True)
class Ack:
    """The hub stored (or had already stored) these durable ids from ``device``.

    PUBACK only says the broker has a message; this says the hub's database has it.  The agent's
    outbox deletes an entry only on this acknowledgement and re-sends what stays unacknowledged.
    """

    v: int = doc("Protocol version.")
    device: str = doc("Device whose messages are acknowledged.")
    ids: list[str] = doc("Durable ids: anomaly event_id, sync batch_id, status/telemetry msg_id.")

    def __post_init__(self) -> None:
        if not 1 <= len(self.ids) <= MAX_ACK_IDS:
            raise ValueError(f"ids must hold 1-{MAX_ACK_IDS} entries")
        if any(not 1 <= len(i) <= 64 for i in self.ids):
            raise ValueError("every id must be 1-64 characters")


@dataclass(frozen=True)
class ModelAnnouncement:
    v: int = doc("Protocol version.")
    version: int = doc("Model version to run.")
    name: str = doc("Model architecture.")
    sha256: str = doc("SHA-256 of the bundle archive.")
    size: int = doc("Archive size in bytes.")
    chunks: int = doc("Number of chunks the archive is sent in.")
    rollout_id: int = doc("Hub rollout id.")
    key_id: str = doc("Fingerprint of the hub key that signed this announcement.", default="")
    signature: str = doc("Base64 Ed25519 signature over the other fields (shared.signing.announcement_bytes); "
                         "agents ignore announcements without a valid one.", default="")

    def __post_init__(self) -> None:
        if self.version < 1 or self.chunks < 1 or self.size < 1:
            raise ValueError("version, chunks and size must be positive")


@dataclass(frozen=True)
class ModelRequest:
    v: int = doc("Protocol version.")
    device: str = doc("Requesting device.")
    version: int = doc("Version wanted.")


@dataclass(frozen=True)
class ModelChunk:
    v: int = doc("Protocol version.")
    version: int = doc("Model version.")
    sha256: str = doc("SHA-256 of the whole archive.")
    index: int = doc("Chunk index, from 0.")
    total: int = doc("Number of chunks.")
    data: str = doc("Base64 of the chunk's bytes.")

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.total:
            raise ValueError("index out of range")


Message = (Readings | AnomalyEvent | Heartbeat | Status | Telemetry | SyncBatch | ModelAnnouncement | ModelRequest
           | ModelChunk | Ack)

SCHEMAS: dict[Channel, type] = {
    Channel.READINGS: Readings,
    Channel.ANOMALY: AnomalyEvent,
    Channel.HEARTBEAT: Heartbeat,
    Channel.STATUS: Status,
    Channel.TELEMETRY: Telemetry,
    Channel.SYNC: SyncBatch,
    Channel.MODEL: ModelAnnouncement,
    Channel.MODEL_REQUEST: ModelRequest,
    Channel.MODEL_CHUNK: ModelChunk,
    Channel.ACK: Ack,
}

M = TypeVar("M")


def encode(message: Any) -> bytes:
    data = json.dumps(dump(message), separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    return data


def parse_json(payload: bytes | bytearray | memoryview, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Bytes → plain JSON data, bounded: size first, then orjson (depth limit 1024, no NaN/Infinity,
    strict UTF-8).  Raises only :class:`ProtocolError` (``too_large``, ``too_deep``, ``not_json``)."""
    if len(payload) > max_bytes:
        raise ProtocolError(RejectReason.TOO_LARGE, f"{len(payload)} bytes > {max_bytes}")
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        reason = RejectReason.TOO_DEEP if "depth limit" in text or "recursion" in text else RejectReason.NOT_JSON
        raise ProtocolError(reason, text[:200]) from None


def decode(channel: Channel, payload: bytes | bytearray, *, device: str | None = None, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Validate ``payload`` for ``channel``; if ``device`` is given, the message must name it.

    The one way bytes from the network become messages: any input gives a message or a
    :class:`ProtocolError`, never another exception.
    """
    return decode_object(channel, parse_json(payload, max_bytes), device=device)


def envelope(data: Any) -> dict[str, Any]:
    """Parsed JSON that must be an object of our protocol version."""
    if not isinstance(data, dict):
        raise ProtocolError(RejectReason.NOT_OBJECT, f"expected a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(RejectReason.BAD_VERSION, f"protocol version {str(version)[:20]!r} refused: this peer "
                            f"speaks version {PROTOCOL_VERSION} only (upgrade hub and agents together)")
    return data


def decode_object(channel: Channel, data: Any, *, device: str | None = None) -> Any:
    """The schema half of :func:`decode`, for data :func:`parse_json` returned."""
    data = envelope(data)
    if channel not in SCHEMAS:  # binary channels (readings/npy) have their own decoder
        raise ProtocolError(RejectReason.BAD_TOPIC, f"{channel.value} does not carry JSON messages")
    try:
        msg: Any = load(SCHEMAS[channel], data, strict=False)
    except (SchemaError, OverflowError) as exc:
        raise ProtocolError(RejectReason.SCHEMA, str(exc)[:300]) from None
    msg_device = getattr(msg, "device", None)
    if device is not None and msg_device is not None and msg_device != device:
        raise ProtocolError(RejectReason.DEVICE_MISMATCH, f"topic says {device!r}, message says {msg_device!r}")
    return msg


def finite(x: float) -> float:
    """Scores can overflow to inf on absurd inputs; the wire format carries only finite numbers."""
    return x if math.isfinite(x) else 1e300


class RejectCounter:
    """Thread-safe counts of rejected messages by reason, and of handler failures by channel.

    Logging is rate-limited (at most one line per ``log_every_s``, one traceback per interval for
    internal errors) so a flood of hostile messages cannot become a log storm.
    """

    def __init__(self, logger: logging.Logger | None = None, log_every_s: float = 10.0) -> None:
        self._counts: Counter[str] = Counter()
        self._internal: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._log = logger or log
        self._every = log_every_s
        self._last_log = -math.inf
        self._last_trace = -math.inf

    def reject(self, topic: str, error: ProtocolError) -> None:
        self.count(error.reason, 1, f"rejected message on {topic}: {error}")

    def count(self, reason: RejectReason, n: int, what: str) -> None:
        """Count ``n`` rejections (messages, or readings for the timestamp rule); log at most every few s."""
        with self._lock:
            self._counts[reason.value] += n
            now = time.monotonic()
            emit = now - self._last_log >= self._every
            if emit:
                self._last_log = now
        if emit:
            self._log.warning("%s (totals: %s)", what[:300], dict(self._counts))

    def internal_error(self, channel: str, topic: str, exc: BaseException) -> None:
        """A handler raised on one message: count it (reason ``internal_error``, and by channel)."""
        with self._lock:
            self._counts[RejectReason.INTERNAL_ERROR.value] += 1
            self._internal[channel] += 1
            now = time.monotonic()
            trace = now - self._last_trace >= self._every
            if trace:
                self._last_trace = now
            totals = dict(self._internal)
        if trace:
            self._log.error("internal error handling a message on %s (by channel: %s)", topic[:200], totals,
                            exc_info=exc)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def internal_errors(self) -> dict[str, int]:
        """Handler failures by channel."""
        with self._lock:
            return dict(self._internal)
