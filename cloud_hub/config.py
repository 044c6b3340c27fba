"""Hub configuration (``hub.toml`` in the hub home). Unknown keys are errors."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

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

__all__ = ["FleetConfig", "HubConfig", "IngestConfig", "RolloutConfig", "TrainingConfig", "load_hub_config", "DEFAULT_TOML"]
