"""Typed agent configuration (TOML). Unknown keys are errors; every field is described."""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from shared.inference import Runtime
from shared.mqtt import BrokerConfig
from shared.profiles import FirmwareProfile, is_profile_path, resolve_profile
from shared.protocol import valid_device_id
from shared.schema import SchemaError, describe, doc, load


@dataclass(frozen=True)
class MqttSource:
    """Readings published to an MQTT topic (JSON ``Readings`` messages, see docs/protocol.md)."""

    type: Literal["mqtt"] = doc("Source type.")
    topic: str = doc("Topic to read; empty = edgesentry/<device>/readings.", default="")
    broker: BrokerConfig | None = doc("A separate (local) broker; omitted = the agent's broker.", default=None)


@dataclass(frozen=True)
class CsvSource:
    """Replay a CSV file (timestamp column + numeric feature columns) as a reading stream."""

    type: Literal["csv"] = doc("Source type.")
    path: Path = doc("CSV file to replay.")
    rate_hz: float = doc("Readings per second; 0 = as fast as the agent scores.", default=10.0)
    timestamp_column: str = doc("Name of the timestamp column.", default="timestamp")
    restamp: bool = doc("Replace file timestamps with the replay clock (for live latency).", default=True)
    loop: bool = doc("Start again at the end of the file.", default=False)

    def __post_init__(self) -> None:
        if self.rate_hz < 0:
            raise ValueError("rate_hz must be >= 0")


@dataclass(frozen=True)
class DetectorConfig:
    runtime: Runtime = doc("TFLite runtime: auto (LiteRT, then tflite_runtime, then tensorflow) or one of them.",
                           default=Runtime.AUTO)
    threshold_scale: float = doc("Multiply the bundle's threshold (per-device sensitivity).", default=1.0)
    rearm_readings: int = doc(
        "Normal readings needed after an event before the next can be raised; 0 = the model's window length.",
        default=0,
    )
    num_threads: int = doc("Interpreter threads; 0 = the firmware profile's num_threads (1 without a profile).",
                           default=0)
    max_batch: int = doc("Most windows scored in one interpreter call when readings queue up.", default=64)
    max_future_s: float = doc(
        "Readings stamped more than this many seconds ahead of the agent's clock are rejected (counted as "
        "future_timestamp). Readings not after the previous one are always rejected (stale_timestamp).",
        default=300.0,
    )

    def __post_init__(self) -> None:
        if self.threshold_scale <= 0 or self.rearm_readings < 0 or self.num_threads < 0 or self.max_batch < 1:
            raise ValueError("threshold_scale > 0, rearm_readings >= 0, num_threads >= 0, max_batch >= 1")
        if not self.max_future_s >= 0:
            raise ValueError("max_future_s must be >= 0")


class SyncPolicy(enum.StrEnum):
    FULL = "full"  # every reading
    SMART = "smart"  # flagged windows, hard examples near the threshold, a reservoir sample of normal windows


@dataclass(frozen=True)
class SyncConfig:
    enabled: bool = doc("Upload raw readings to the hub for retraining.", default=True)
    interval_s: float = doc("Seconds between uploads.", default=30.0)
    max_buffered_rows: int = doc("Chosen rows kept in memory until they go to the outbox (at the interval's end, "
                                 "or at each reading commit with a gateway source); beyond it the lowest-priority, "
                                 "oldest rows are dropped (counted). Offline, batches wait in the outbox instead.",
                                 default=200_000)
    policy: SyncPolicy = doc("full: every reading; smart: every flagged window, hard examples, a sample of "
                             "normal windows (see docs/architecture.md).", default=SyncPolicy.FULL)
    bandwidth_bytes_s: float = doc("Upload cap in bytes/s of sync messages, spent by the outbox sender on what it "
                                   "publishes (bursts up to one second's worth); held-back batches wait in the "
                                   "outbox. 0 = unlimited.", default=0.0)
    hard_margin: float = doc("smart: a window whose score is within this fraction of the threshold (either side) "
                             "is a hard example.", default=0.2)
    sample_windows: int = doc("smart: normal windows sampled uniformly (reservoir) per interval.", default=8)
    compress: bool = doc("Send rows packed (zlib-compressed .npy) rather than as JSON numbers.", default=True)

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.max_buffered_rows < 1:
            raise ValueError("interval_s > 0 and max_buffered_rows >= 1")
        if self.bandwidth_bytes_s < 0 or not 0 <= self.hard_margin < 1 or self.sample_windows < 0:
            raise ValueError("bandwidth_bytes_s >= 0, 0 <= hard_margin < 1, sample_windows >= 0")


DEFAULT_OUTBOX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class OutboxConfig:
    """The durable outbox (state_dir/outbox.sqlite): every report waits there until delivered."""

    max_bytes: int = doc(
        "Disk budget for undelivered reports; when full, sync batches are dropped first, then telemetry, then "
        "status, anomaly events last (each drop counted). 0 = the firmware profile's outbox_max_bytes if a "
        "profile is configured, else 64 MiB.", default=0)
    confirm: Literal["hub", "broker"] = doc(
        "When an entry may be deleted: hub = on the hub's Ack (it is in the database; survives a broker "
        "restarted without persistence); broker = on the broker's PUBACK (for hubs that do not acknowledge).",
        default="hub")
    ack_timeout_s: float = doc("Seconds after which an unacknowledged entry is published again (doubling per "
                               "attempt up to ack_timeout_max_s; every reconnect sends all of them again).",
                               default=30.0)
    ack_timeout_max_s: float = doc("Longest wait before re-sending an unacknowledged entry.", default=600.0)
    max_messages_per_s: float = doc("Rate cap for publishing (replay after an outage included).", default=200.0)
    max_bytes_per_s: float = doc("Byte-rate cap for publishing (payload bytes/s).", default=2_000_000.0)
    max_inflight: int = doc("QoS-1 messages published but not yet PUBACKed by the broker (flow control).",
                            default=50)
    synchronous: Literal["normal", "full"] = doc(
        "SQLite synchronous mode: normal survives a process crash, full also a power cut (slower).",
        default="normal")

    def __post_init__(self) -> None:
        if self.max_bytes < 0 or self.ack_timeout_s <= 0 or self.max_inflight < 1:
            raise ValueError("max_bytes >= 0, ack_timeout_s > 0 and max_inflight >= 1")
        if self.ack_timeout_max_s < self.ack_timeout_s:
            raise ValueError("ack_timeout_max_s must be >= ack_timeout_s")
        if self.max_messages_per_s <= 0 or self.max_bytes_per_s <= 0:
            raise ValueError("max_messages_per_s and max_bytes_per_s must be > 0")


@dataclass(frozen=True)
class UpdateConfig:
    """How a new model is checked before and after it replaces the running one (edge_agent/update.py)."""

    probation_s: float = doc("Seconds a new model runs on probation (live health checks) before it is committed "
                             "and becomes the rollback target.", default=600.0)
    min_windows: int = doc("Windows needed before a health check judges; with fewer recent windows the staged "
                           "data check is skipped and probation decides.", default=100)
    recent_windows: int = doc("Most recent windows a staged model is scored on before the swap.", default=256)
    max_anomaly_rate: float = doc("Largest share of windows a new model may flag beyond the share the running "
                                  "model flagged over its last recent_windows windows (staged and on probation).",
                                  default=0.2)
    max_restarts: int = doc("Agent restarts while one update is in flight at which it is refused (before "
                            "activation) or rolled back (on probation): a crash-loop guard.", default=2)
    download_stall_s: float = doc("Seconds without a chunk before the bundle is requested again.", default=10.0)
    download_attempts: int = doc("Requests for one bundle before the download is given up.", default=5)

    def __post_init__(self) -> None:
        if self.probation_s < 0 or self.min_windows < 1 or self.recent_windows < 1:
            raise ValueError("probation_s >= 0, min_windows >= 1 and recent_windows >= 1")
        if not 0 < self.max_anomaly_rate <= 1 or self.max_restarts < 1:
            raise ValueError("0 < max_anomaly_rate <= 1 and max_restarts >= 1")
        if self.download_stall_s <= 0 or self.download_attempts < 1:
            raise ValueError("download_stall_s > 0 and download_attempts >= 1")


@dataclass(frozen=True)
class MetricsConfig:
    """The agent's own Prometheus endpoint (off unless ``listen`` is set; needs prometheus-client)."""

    listen: str = doc("HOST:PORT serving /metrics, e.g. 127.0.0.1:9101 (bind a LAN address only if the "
                      "scraper is remote); empty = off.", default="")

    def __post_init__(self) -> None:
        if self.listen:
            from edge_agent.metrics import parse_listen

            parse_listen(self.listen)


@dataclass(frozen=True)
class AgentConfig:
    """edge-agent configuration file."""

    device_id: str = doc("This gateway's id; it owns the topic tree edgesentry/<device_id>/.")
    state_dir: Path = doc("Where verified bundles and the active-model pointer are kept.")
    trusted_keys: list[str] = doc("Base64 Ed25519 public keys whose bundles are accepted (cloud-hub init prints one).")
    broker: BrokerConfig = doc("Connection to the hub's broker.", default_factory=BrokerConfig)
    profile: str = doc("Firmware profile: a shipped name (rpi4-64, see firmware_profiles/) or a path to a .toml "
                       "(relative to this file); its budgets apply to models on this gateway. Empty = none.",
                       default="")
    sources: list[MqttSource | CsvSource] = doc("Where readings come from.", default_factory=list)
    detector: DetectorConfig = doc("Scoring options.", default_factory=DetectorConfig)
    sync: SyncConfig = doc("Upload of data for retraining.", default_factory=SyncConfig)
    update: UpdateConfig = doc("Staged checks, probation and rollback of new models.", default_factory=UpdateConfig)
    outbox: OutboxConfig = doc("Durable store-and-forward of reports.", default_factory=OutboxConfig)
    metrics: MetricsConfig = doc("Optional Prometheus /metrics of this agent.", default_factory=MetricsConfig)
    heartbeat_s: float = doc("Seconds between heartbeats.", default=10.0)
    telemetry_s: float = doc("Seconds between telemetry (score statistics) messages.", default=10.0)
    queue_size: int = doc("Readings held for scoring before the MQTT reader waits.", default=100_000)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = doc("Logging level.", default="INFO")

    def __post_init__(self) -> None:
        if not valid_device_id(self.device_id):
            raise ValueError(f"device_id {self.device_id!r} must be 1-64 of [A-Za-z0-9_.-] and not 'fleet'")
        if not self.trusted_keys:
            raise ValueError("trusted_keys must list at least one hub public key")
        if self.heartbeat_s <= 0 or self.telemetry_s <= 0 or self.queue_size < 1:
            raise ValueError("heartbeat_s, telemetry_s must be > 0 and queue_size >= 1")


def load_config(path: Path) -> AgentConfig:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SchemaError("", f"cannot read {path}: {exc}") from None
    cfg = load(AgentConfig, data)
    # Relative paths are relative to the config file, as users expect.
    base = path.parent
    profile = agent_profile(cfg, base)
    detector = cfg.detector
    if detector.num_threads == 0:
        detector = DetectorConfig(**{**detector.__dict__, "num_threads": profile.num_threads if profile else 1})
    for key, broker in [("broker", cfg.broker), *((f"sources[{i}].broker", s.broker) for i, s in
                                                  enumerate(cfg.sources) if isinstance(s, MqttSource))]:
        try:
            if broker is not None:
                broker.resolved_password()  # a missing credential is a config error now, not at connect
        except ValueError as exc:
            raise SchemaError(key, str(exc)) from None
    state = cfg.state_dir if cfg.state_dir.is_absolute() else base / cfg.state_dir
    sources = [
        CsvSource(**{**s.__dict__, "path": s.path if s.path.is_absolute() else base / s.path})
        if isinstance(s, CsvSource) else s
        for s in cfg.sources
    ]
    broker = cfg.broker
    if broker.ca_file and not Path(broker.ca_file).expanduser().is_absolute():
        broker = replace(broker, ca_file=str(base / broker.ca_file))  # `devices add` ships ca.crt alongside
    profile_ref = str(base / Path(cfg.profile).expanduser()) if is_profile_path(cfg.profile) else cfg.profile
    outbox = cfg.outbox
    if outbox.max_bytes == 0:  # resolved once here: the agent and `edge-agent status` see the same budget
        outbox = replace(outbox, max_bytes=profile.outbox_max_bytes if profile else DEFAULT_OUTBOX_BYTES)
    return AgentConfig(**{**cfg.__dict__, "state_dir": state, "sources": sources, "broker": broker,
                          "detector": detector, "profile": profile_ref, "outbox": outbox})


def agent_profile(cfg: AgentConfig, base: Path | None = None) -> FirmwareProfile | None:
    """The firmware profile the config names (None without one); SchemaError if it cannot be found."""
    return resolve_profile(cfg.profile, base) if cfg.profile else None


def reference() -> str:
    """Markdown table of every option (used by docs and ``edge-agent config-reference``)."""
    rows = ["| key | type | description |", "|---|---|---|"]
    for cls, prefix in ((AgentConfig, ""), (MqttSource, "sources[type=mqtt]."), (CsvSource, "sources[type=csv].")):
        rows += [f"| `{prefix}{k}` | {t} | {d} |" for k, t, d in describe(cls)]
    return "\n".join(rows)


__all__ = ["AgentConfig", "CsvSource", "DetectorConfig", "MqttSource", "OutboxConfig", "SyncConfig", "SyncPolicy",
           "UpdateConfig",
           "load_config"]
