"""The agent's own ``/metrics`` (``[metrics] listen = "127.0.0.1:9101"``): readings, scoring latency,
outbox depth and drops, model version.  prometheus-client (pure Python) is imported only when this is
on, so an agent without it pays no memory for it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge_agent.agent import Agent

PREFIX = "edgesentry_agent"
# Scoring one block of readings: ~1 ms for a few windows on x86, tens of ms for batches on a Pi 3.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); the host is required (use 127.0.0.1 unless a scraper is remote)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics listen must be HOST:PORT, e.g. 127.0.0.1:9101, got {text!r}")
    return host, int(port)


class AgentMetrics:
    """A registry for one agent, served by prometheus-client's HTTP server on its own thread."""

    def __init__(self, agent: Agent, listen: str) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.host, self.port = parse_listen(listen)
        self.agent = agent
        self.registry = CollectorRegistry(auto_describe=False)
        self.scoring_latency = Histogram(f"{PREFIX}_scoring_latency_seconds",
                                         "Time to score one block of readings (windows → scores → decision).",
                                         buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_AgentCollector(agent))
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def observe_scoring(self, seconds: float) -> None:
        self.scoring_latency.observe(seconds)

    def start(self) -> None:
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _AgentCollector:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._last: tuple[float, int] | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        a = self.agent
        now, scored = time.monotonic(), a.counters.scored
        prev_t, prev_n = self._last or (a.started, 0)
        self._last = (now, scored)
        yield CounterMetricFamily(f"{PREFIX}_readings_received", "Readings accepted since start.",
                                  value=a.counters.received)
        yield CounterMetricFamily(f"{PREFIX}_readings_scored", "Readings scored since start.", value=scored)
        yield GaugeMetricFamily(f"{PREFIX}_readings_per_second", "Readings scored per second since the previous "
                                "scrape (since start on the first).", value=(scored - prev_n) / max(now - prev_t, 1e-9))
        yield CounterMetricFamily(f"{PREFIX}_anomalies", "Anomaly events raised since start.",
                                  value=a.counters.anomalies)
        rejected = CounterMetricFamily(f"{PREFIX}_rejected", "Messages and readings rejected, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(a.rejects.counts().items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth", "Readings waiting to be scored.", value=len(a.queue))
        stats = a.outbox.stats()
        depth = GaugeMetricFamily(f"{PREFIX}_outbox_depth", "Reports not yet acknowledged by the hub, by kind.",
                                  labels=["kind"])
        for kind, n in sorted(stats.depth_by_kind.items()):
            depth.add_metric([kind], n)
        yield depth
        yield GaugeMetricFamily(f"{PREFIX}_outbox_bytes", "Bytes the outbox holds (counted against its budget).",
                                value=stats.bytes)
        dropped = CounterMetricFamily(f"{PREFIX}_outbox_dropped", "Reports dropped because the outbox was full, "
                                      "by kind, since install.", labels=["kind"])
        for kind, n in sorted(stats.dropped.items()):
            dropped.add_metric([kind], n)
        yield dropped
        version = a.model_version
        yield GaugeMetricFamily(f"{PREFIX}_model_version", "Active model version (-1: none).",
                                value=-1 if version is None else version)
        yield GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Seconds since the agent started.",
                                value=now - a.started)


__all__ = ["AgentMetrics", "parse_listen"]
