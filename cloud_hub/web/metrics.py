"""``/metrics`` in Prometheus format: the hub's ingest counters (live, from the running ``serve``) and
fleet state read from the database at scrape time (cached briefly so frequent scrapes cost one query set).

Each hub gets its own :class:`CollectorRegistry`: several hubs in one process (tests) never mix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.db.queries import device_status
from cloud_hub.home import HubHome

if TYPE_CHECKING:
    from cloud_hub.ingest.batching import Inbound
    from cloud_hub.ingest.service import HubServer

PREFIX = "edgesentry"
DB_CACHE_S = 5.0
# Receive → committed: milliseconds when idle, up to seconds when the writer is behind.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HubMetrics:
    """The registry behind ``/metrics``; hooks into a running :class:`HubServer` if given."""

    def __init__(self, home: HubHome, server: HubServer | None = None, alerts: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.ingest_latency = Histogram(f"{PREFIX}_ingest_latency_seconds",
                                        "Time from receiving a message to committing it, by channel.",
                                        ["channel"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_HubCollector(home, server, alerts))
        if server is not None:
            server.on_stored.append(self.observe_batch)

    def observe_batch(self, batch: list[Inbound], stored_at: float) -> None:
        children: dict[str, Any] = {}
        for it in batch:
            child = children.get(it.channel.value)
            if child is None:
                child = children[it.channel.value] = self.ingest_latency.labels(it.channel.value)
            child.observe(max(0.0, stored_at - it.received_at))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _HubCollector(Collector):
    def __init__(self, home: HubHome, server: HubServer | None, alerts: Any) -> None:
        self.server, self.alerts = server, alerts
        self.sessions = home.sessions()
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] = (-1e9, [])

    def collect(self) -> Iterator[Metric]:
        if self.server is not None:
            yield from self._ingest(self.server)
        if self.alerts is not None:
            yield from self._alerts()
        with self._lock:
            at, metrics = self._cached
            if time.monotonic() - at > DB_CACHE_S:
                metrics = self._from_db()
                self._cached = (time.monotonic(), metrics)
        yield from metrics

    def _ingest(self, srv: HubServer) -> Iterator[Metric]:
        received = CounterMetricFamily(f"{PREFIX}_messages_received", "Valid messages received, by channel.",
                                       labels=["channel"])
        for ch, n in sorted(srv.received.items()):
            received.add_metric([ch], n)
        stored = CounterMetricFamily(f"{PREFIX}_messages_stored", "New rows stored, by channel.",
                                     labels=["channel"])
        duplicates = CounterMetricFamily(f"{PREFIX}_messages_duplicate",
                                         "Redelivered messages stored before (nothing new written).")
        for ch, n in sorted(srv.stored.items()):
            if ch == "duplicate":
                duplicates.add_metric([], n)
            else:
                stored.add_metric([ch], n)
        rejected = CounterMetricFamily(f"{PREFIX}_messages_rejected", "Messages rejected, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(srv.rejects.counts().items()):
            rejected.add_metric([reason], n)
        internal = CounterMetricFamily(f"{PREFIX}_ingest_internal_errors",
                                       "Handler failures by channel (bugs; see the hub log).", labels=["channel"])
        for ch, n in sorted(srv.rejects.internal_errors().items()):
            internal.add_metric([ch], n)
        yield from (received, stored, duplicates, rejected, internal)
        yield CounterMetricFamily(f"{PREFIX}_ingest_transactions", "Committed ingest transactions.",
                                  value=srv.transactions)
        yield CounterMetricFamily(f"{PREFIX}_acks_sent", "Ack messages published to agents.", value=srv.acks_sent)
        yield GaugeMetricFamily(f"{PREFIX}_ingest_queue_depth", "Decoded messages waiting for the writer.",
                                value=len(srv.batcher))

    def _alerts(self) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(f"{PREFIX}_alerts", "Anomaly alerts by webhook and outcome (sent, failed, "
                                       "rate_limited, deduplicated, dropped, filtered).", labels=["hook", "outcome"])
        depth = GaugeMetricFamily(f"{PREFIX}_alert_queue_depth", "Alerts waiting to be sent, by webhook.",
                                  labels=["hook"])
        for hook, counts, queued in self.alerts.snapshot():
            for outcome, n in sorted(counts.items()):
                outcomes.add_metric([hook, outcome], n)
            depth.add_metric([hook], queued)
        yield outcomes
        yield depth

    def _from_db(self) -> list[Metric]:
        now = time.time()
        with self.sessions() as s:
            by_status: dict[str, int] = {"online": 0, "stale": 0, "offline": 0, "revoked": 0}
            by_model: dict[tuple[str, str], int] = {}
            for dev in s.scalars(select(db.Device)):
                st = device_status(dev, now)
                by_status[st] += 1
                if st != "revoked":
                    key = ("" if dev.model_version is None else str(dev.model_version), dev.model_state)
                    by_model[key] = by_model.get(key, 0) + 1
            anomalies = s.execute(select(db.AnomalyEvent.device_id, db.AnomalyEvent.model_version, func.count())
                                  .group_by(db.AnomalyEvent.device_id, db.AnomalyEvent.model_version)).all()
            rollout_states = s.execute(
                select(db.RolloutDevice.rollout_id, db.Rollout.version, db.RolloutDevice.state, func.count())
                .join(db.Rollout, db.Rollout.id == db.RolloutDevice.rollout_id)
                .where(db.Rollout.state.in_((db.RolloutState.RUNNING, db.RolloutState.PAUSED)))
                .group_by(db.RolloutDevice.rollout_id, db.Rollout.version, db.RolloutDevice.state)).all()
            versions = int(s.scalar(select(func.count()).select_from(db.ModelVersion)) or 0)
            retrains = s.execute(select(db.RetrainDecision.trigger, db.RetrainDecision.outcome, func.count())
                                 .group_by(db.RetrainDecision.trigger, db.RetrainDecision.outcome)).all()
            labels = s.execute(select(db.AnomalyLabel.label, func.count()).where(db.AnomalyLabel.current.is_(True))
                               .group_by(db.AnomalyLabel.label)).all()
        devices = GaugeMetricFamily(f"{PREFIX}_devices", "Devices by status (online = reported within 120 s).",
                                    labels=["status"])
        for st, n in by_status.items():
            devices.add_metric([st], n)
        models = GaugeMetricFamily(f"{PREFIX}_devices_by_model", "Devices by running model version and model "
                                   "state.", labels=["version", "state"])
        for (version, state), n in sorted(by_model.items()):
            models.add_metric([version, state], n)
        anomaly_total = CounterMetricFamily(f"{PREFIX}_anomalies", "Anomaly events stored, by device and model "
                                            "version.", labels=["device", "model"])
        for device, version, n in anomalies:
            anomaly_total.add_metric([device, str(version)], n)
        rollouts = GaugeMetricFamily(f"{PREFIX}_rollout_devices", "Devices of active rollouts by state.",
                                     labels=["rollout", "version", "state"])
        for rid, version, state, n in rollout_states:
            rollouts.add_metric([str(rid), str(version), str(getattr(state, "value", state))], n)
        retrain_runs = CounterMetricFamily(f"{PREFIX}_retrain_runs", "Retrain runs and promotions by trigger and "
                                           "outcome (the registry's decisions).", labels=["trigger", "outcome"])
        for trigger, outcome, n in retrains:
            retrain_runs.add_metric([str(getattr(trigger, "value", trigger)), str(getattr(outcome, "value", outcome))],
                                    n)
        labelled = GaugeMetricFamily(f"{PREFIX}_anomaly_labels", "Anomaly events by current operator label.",
                                     labels=["label"])
        for label, n in labels:
            labelled.add_metric([str(getattr(label, "value", label))], n)
        return [devices, models, anomaly_total, rollouts, retrain_runs, labelled,
                GaugeMetricFamily(f"{PREFIX}_model_versions", "Model versions in the registry.", value=versions)]
