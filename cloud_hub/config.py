"""Hub configuration (``hub.toml`` in the hub home). Unknown keys are errors."""

from __future__ import annotations

import enum
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.registry.policy import RetrainConfig
from shared.mqtt import BrokerConfig
from shared.schema import SchemaError, doc, load


@dataclass(frozen=True)
class TrainingConfig:
    window: int = doc("Readings per window.", default=32)
    epochs: int = doc("Maximum training epochs (early stopping on validation loss).", default=30)
    batch_size: int = doc("Training batch size.", default=64)
    learning_rate: float = doc("Adam learning rate.", default=0.001)
    latent: int = doc("Autoencoder bottleneck width.", default=16)
    hidden: int = doc("Autoencoder hidden layer width.", default=64)
    lstm_units: int = doc("LSTM units of the prediction head.", default=32)
    prediction_residual: bool = doc(
        "ae-lstm / anomalynet: the prediction head outputs the newest reading it sees plus a learned change. "
        "int8 tracks Keras more closely (the LSTM's quantisation noise scales with the small change) but the "
        "Keras model detects fewer level shifts (persistence predicts a shift lasting past t-1 away): off by "
        "default, see docs/benchmarks.md. false = the paper's plain Dense head.",
        default=False)
    prediction_steps: int = doc(
        "ae-lstm: readings before the newest one that the LSTM prediction head reads (0 = all window - 1). "
        "Fewer unrolled steps accumulate less int8 quantisation noise (docs/benchmarks.md, \"Quantization\").",
        default=0)
    alpha: float = doc("Score weight of the reconstruction error.", default=0.5)
    beta: float = doc("Score weight of the prediction error.", default=0.5)
    threshold_quantile: float = doc("Quantile of normal validation scores used for the threshold.", default=0.999)
    threshold_margin: float = doc("Multiplier on that quantile.", default=1.5)
    validation_fraction: float = doc("Last fraction of each segment held out for calibration.", default=0.2)
    wavelet: str = doc("Denoising wavelet.", default="db4")
    wavelet_level: int = doc("Denoising level (0 = off).", default=1)
    max_windows: int = doc("Cap on training windows (evenly subsampled beyond).", default=50_000)
    seed: int = doc("Random seed.", default=0)
    patience: int = doc("Early-stopping patience in epochs (validation loss).", default=4)
    filters: int = doc("Conv1D filters (anomalynet, cnn, cnn-lstm).", default=32)
    kernel_size: int = doc("Conv1D kernel size.", default=3)
    dropout: float = doc("Dropout rate (anomalynet, cnn, cnn-lstm, vae-dnn's DNN).", default=0.2)
    attention_dim: int = doc("Query/key/value width of anomalynet's attention.", default=32)
    dnn_units: int = doc("Width of the first hidden layer of classifier heads (halved in the second).", default=64)
    top_k: int = doc("Features XGBoost keeps for vae-dnn's classifier.", default=10)
    kl_weight: float = doc("Weight of the KL term in the VAE loss.", default=1.0)
    trees: int = doc("Trees in random-forest, isolation-forest and vae-dnn's XGBoost ranker.", default=200)
    svm_c: float = doc("SVM regularisation C (RBF kernel).", default=1.0)
    class_balance: str = doc("Class imbalance handling for supervised models: weights | oversample | none.",
                             default="weights")

    def __post_init__(self) -> None:
        if not 0 < self.threshold_quantile < 1 or not 0 < self.validation_fraction < 0.9:
            raise ValueError("threshold_quantile in (0,1), validation_fraction in (0,0.9)")
        if self.epochs < 1 or self.batch_size < 1 or self.window < 4:
            raise ValueError("epochs >= 1, batch_size >= 1, window >= 4")
        if self.class_balance not in ("weights", "oversample", "none"):
            raise ValueError("class_balance must be weights, oversample or none")
        if not 0 <= self.dropout < 1 or self.top_k < 1 or self.trees < 1:
            raise ValueError("dropout in [0, 1), top_k >= 1, trees >= 1")
        if self.prediction_steps < 0:
            raise ValueError("prediction_steps >= 0 (0 = the whole window before the newest reading)")


@dataclass(frozen=True)
class IngestConfig:
    """How ``cloud-hub serve`` batches what agents report into database transactions."""

    batch_max: int = doc("Most messages written in one transaction.", default=1000)
    batch_wait_ms: float = doc("Longest a batch waits for more messages after its first one (ms).", default=50.0)
    batch_idle_ms: float = doc("A batch closes early when no further message arrived for this long (ms): the "
                               "broker stops sending once its in-flight window is full, so waiting longer "
                               "would only add latency.", default=5.0)
    queue_max: int = doc("Decoded messages waiting for the writer; when full the MQTT thread waits and the "
                         "broker keeps the rest (nothing is acknowledged before it is stored).", default=50_000)

    def __post_init__(self) -> None:
        if self.batch_max < 1 or self.queue_max < 1:
            raise ValueError("batch_max and queue_max must be >= 1")
        if not 0 <= self.batch_idle_ms <= self.batch_wait_ms:
            raise ValueError("need 0 <= batch_idle_ms <= batch_wait_ms")


@dataclass(frozen=True)
class FleetConfig:
    """Provisioning: where the broker's files live and what each device's agent.toml says."""

    broker_dir: str = doc("Directory of the broker's passwd, acl, mosquitto.conf and TLS files "
                          "(set by `cloud-hub broker-config --out`); empty = <home>/broker.", default="")
    agent_broker_url: str = doc("Broker URL written into each device's agent.toml; empty = broker.url.", default="")
    agent_state_dir: str = doc("state_dir written into each device's agent.toml (a path on the gateway).",
                               default="/var/lib/edgesentry")


class AlertKind(enum.StrEnum):
    SLACK = "slack"  # {"text": ...}: Slack incoming webhooks and compatible (Mattermost, Rocket.Chat)
    GENERIC = "generic"  # the anomaly as a JSON object


class Severity(enum.StrEnum):
    WARNING = "warning"  # score at or above the threshold
    CRITICAL = "critical"  # score at or above critical_ratio x threshold


@dataclass(frozen=True)
class AlertConfig:
    """One webhook the hub posts anomaly alerts to (``[[alerts]]``; several are allowed)."""

    url: str = doc("Webhook URL (http or https) that receives a JSON POST per alert.")
    kind: AlertKind = doc("slack (a Slack-compatible {\"text\"} body) or generic (the event as JSON).",
                          default=AlertKind.GENERIC)
    name: str = doc("Label in metrics and on the dashboard; empty = the URL's host.", default="")
    min_severity: Severity = doc("Send only anomalies at least this severe: warning or critical.",
                                 default=Severity.WARNING)
    critical_ratio: float = doc("score / threshold at which an anomaly counts as critical.", default=2.0)
    devices: list[str] = doc("Only these devices (exact ids or shell patterns like gw-*); empty = all.",
                             default_factory=list)
    rate_limit: int = doc("At most this many alerts per device per rate_window_s (the rest are counted "
                          "as rate_limited).", default=5)
    rate_window_s: float = doc("Window of the per-device rate limit, seconds.", default=300.0)
    dedup_s: float = doc("An alert for the same device and leading feature within this many seconds of the "
                         "last one sent is suppressed (counted as deduplicated).", default=60.0)
    retries: int = doc("Further attempts after a failed POST (connection error, timeout, 5xx, 429).", default=3)
    backoff_s: float = doc("Wait before the first retry; doubles each time.", default=1.0)
    timeout_s: float = doc("HTTP timeout per attempt, seconds.", default=5.0)
    queue_max: int = doc("Alerts waiting to be sent; when full new ones are dropped and counted.", default=1000)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"alert url must be http(s)://..., got {self.url!r}")
        if self.rate_limit < 1 or self.retries < 0 or self.queue_max < 1:
            raise ValueError("rate_limit >= 1, retries >= 0, queue_max >= 1")
        if min(self.rate_window_s, self.timeout_s) <= 0 or self.dedup_s < 0 or self.backoff_s < 0:
            raise ValueError("rate_window_s and timeout_s > 0, dedup_s and backoff_s >= 0")
        if self.critical_ratio < 1:
            raise ValueError("critical_ratio >= 1")


@dataclass(frozen=True)
class WebConfig:
    """The dashboard and ``/metrics`` (``cloud-hub serve --http`` or ``cloud-hub dashboard``)."""

    listen: str = doc("HOST:PORT `cloud-hub serve` also serves the dashboard on; empty = only with --http.",
                      default="")
    secure_cookie: bool = doc("Send the session cookie over HTTPS only (set it when a TLS proxy fronts the "
                              "dashboard).", default=False)
    session_hours: float = doc("Login lifetime, hours.", default=12.0)
    metrics_token: str = doc("If set, /metrics needs `Authorization: Bearer <token>`; empty = open.",
                             default="")

    def __post_init__(self) -> None:
        if self.session_hours <= 0:
            raise ValueError("session_hours > 0")


@dataclass(frozen=True)
class RolloutConfig:
    """How ``cloud-hub serve`` drives staged rollouts (``cloud_hub/rollout``)."""

    tick_s: float = doc("Seconds between rollout ticks (timeouts, gates, operator commands); agents' status "
                        "reports also wake the engine at once.", default=1.0)
    min_gate_readings: int = doc("Readings the wave's devices must have scored under each model before the "
                                 "anomaly-rate gate judges them (fewer: the gate waits until the wave's wait "
                                 "ends, then passes with a note).", default=200)

    def __post_init__(self) -> None:
        if not 0 < self.tick_s <= 60 or self.min_gate_readings < 1:
            raise ValueError("need 0 < tick_s <= 60 and min_gate_readings >= 1")


@dataclass(frozen=True)
class HubConfig:
    broker: BrokerConfig = doc("MQTT broker the fleet uses.", default_factory=BrokerConfig)
    database_url: str = doc("SQLAlchemy URL; empty = SQLite file hub.db in the hub home.", default="")
    training: TrainingConfig = doc("Defaults for train/retrain.", default_factory=TrainingConfig)
    default_quantization: str = doc("Quantization rolled out by default.", default="int8")
    log_level: str = doc("Logging level.", default="INFO")
    ingest: IngestConfig = doc("Batched, idempotent storage of agent reports.", default_factory=IngestConfig)
    fleet: FleetConfig = doc("Device provisioning and broker files.", default_factory=FleetConfig)
    rollout: RolloutConfig = doc("Staged rollouts: engine tick and gate data.", default_factory=RolloutConfig)
    retrain: RetrainConfig = doc("Retrain triggers in `serve`, challenger vs champion judgement, rollout of a "
                                 "promoted challenger.", default_factory=RetrainConfig)
    web: WebConfig = doc("Dashboard and Prometheus metrics.", default_factory=WebConfig)
    alerts: list[AlertConfig] = doc("Webhooks for anomaly alerts ([[alerts]] tables).", default_factory=list)


def load_hub_config(path: Path) -> HubConfig:
    try:
        return load(HubConfig, tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SchemaError("", f"cannot read {path}: {exc}") from None


DEFAULT_TOML = """\
# edgesentry hub configuration. Every key is optional; see docs/architecture.md.
[broker]
url = "{broker_url}"

[training]
window = 32
epochs = 30
alpha = 0.5
beta = 0.5
"""

__all__ = ["AlertConfig", "AlertKind", "Severity", "WebConfig", "FleetConfig", "HubConfig", "IngestConfig",
           "RetrainConfig", "RolloutConfig", "TrainingConfig", "load_hub_config", "DEFAULT_TOML"]
