"""Anomaly alerts to webhooks (``[[alerts]]`` in hub.toml): Slack-compatible or generic JSON.

The ingest writer only calls :meth:`AlertDispatcher.observe_batch`, which filters, deduplicates,
rate-limits and enqueues without I/O; one worker thread per webhook POSTs with retries and exponential
backoff.  Every outcome is counted (``edgesentry_alerts_total`` and the dashboard's banner).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, OrderedDict, deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cloud_hub.config import AlertConfig, AlertKind, Severity
from shared import protocol as p

if TYPE_CHECKING:
    from cloud_hub.ingest.batching import Inbound

log = logging.getLogger("cloud_hub.alerts")

SEEN_EVENTS = 10_000  # (device, event_id) remembered so a redelivered event never alerts twice
USER_AGENT = "edgesentry-hub"


class Outcome:
    SENT = "sent"
    FAILED = "failed"  # every attempt failed
    RETRIED = "retried"  # attempts after a failure (an alert can be retried and then sent)
    RATE_LIMITED = "rate_limited"
    DEDUPLICATED = "deduplicated"
    DROPPED = "dropped"  # the queue was full
    FILTERED = "filtered"  # below min_severity or not one of the hook's devices


def severity(event: p.AnomalyEvent, critical_ratio: float) -> Severity:
    return Severity.CRITICAL if event.score >= critical_ratio * event.threshold > 0 else Severity.WARNING


def payload(cfg: AlertConfig, event: p.AnomalyEvent, level: Severity) -> dict[str, Any]:
    """The JSON body for one alert."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(event.ts))
    features = ", ".join(event.top_features[:3]) or "n/a"
    if cfg.kind == AlertKind.SLACK:
        icon = ":rotating_light:" if level == Severity.CRITICAL else ":warning:"
        return {"text": f"{icon} *{level.value}* anomaly on `{event.device}` at {when}: score {event.score:.4g} "
                        f"(threshold {event.threshold:.4g}, model v{event.model_version}); top features: {features}"}
    return {"kind": "anomaly", "severity": level.value, "device": event.device, "event_id": event.event_id,
            "ts": event.ts, "detected_at": event.detected_at, "score": event.score, "threshold": event.threshold,
            "model_version": event.model_version, "top_features": list(event.top_features),
            "attribution": dict(event.attribution), "likelihood": event.likelihood}


class Webhook:
    """One ``[[alerts]]`` entry: admission (filter, dedup, rate limit) and its sending worker."""

    def __init__(self, cfg: AlertConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name or urlsplit(cfg.url).netloc
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[p.AnomalyEvent, Severity] | None] = queue.Queue(cfg.queue_max)
        self._sent_at: dict[str, deque[float]] = {}  # device → times of alerts admitted in the window
        self._last_key: dict[tuple[str, str], float] = {}  # (device, leading feature) → last admitted
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"alerts-{self.name}", daemon=True)

    # ------------------------------------------------------------------ writer thread (no I/O)

    def offer(self, event: p.AnomalyEvent, now: float) -> str | None:
        """Admit or refuse one event; returns the refusal outcome, None if queued."""
        cfg = self.cfg
        level = severity(event, cfg.critical_ratio)
        with self._lock:
            outcome = self._admit(event, level, now)
            if outcome is None:
                try:
                    self._queue.put_nowait((event, level))
                except queue.Full:
                    outcome = Outcome.DROPPED
            if outcome is not None:
                self.counts[outcome] += 1
        return outcome

    def _admit(self, event: p.AnomalyEvent, level: Severity, now: float) -> str | None:
        cfg = self.cfg
        if cfg.min_severity == Severity.CRITICAL and level != Severity.CRITICAL:
            return Outcome.FILTERED
        if cfg.devices and not any(fnmatch.fnmatchcase(event.device, pat) for pat in cfg.devices):
            return Outcome.FILTERED
        ident = (event.device, event.event_id)
        if ident in self._seen:
            return Outcome.DEDUPLICATED
        self._seen[ident] = None
        if len(self._seen) > SEEN_EVENTS:
            self._seen.popitem(last=False)
        key = (event.device, event.top_features[0] if event.top_features else "")
        last = self._last_key.get(key)
        if last is not None and now - last < cfg.dedup_s:
            return Outcome.DEDUPLICATED
        window = self._sent_at.setdefault(event.device, deque())
        while window and now - window[0] >= cfg.rate_window_s:
            window.popleft()
        if len(window) >= cfg.rate_limit:
            return Outcome.RATE_LIMITED
        window.append(now)
        self._last_key[key] = now
        if len(self._last_key) > SEEN_EVENTS:  # bounded: forget the oldest keys
            self._last_key.pop(next(iter(self._last_key)))
        return None

    # ------------------------------------------------------------------ worker thread

    def start(self) -> None:
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Send what is queued for up to ``drain_s`` (no further retries), then stop."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=drain_s)
        self._thread.join(timeout=drain_s + self.cfg.timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, level = item
            ok = self._deliver(payload(self.cfg, event, level))
            with self._lock:
                self.counts[Outcome.SENT if ok else Outcome.FAILED] += 1
            if not ok:
                log.warning("alert for %s/%s to %s failed after %d attempt(s)", event.device, event.event_id,
                            self.name, 1 + self.cfg.retries)

    def _deliver(self, body: dict[str, Any]) -> bool:
        data = json.dumps(body).encode()
        delay = self.cfg.backoff_s
        for attempt in range(1 + self.cfg.retries):
            if attempt:
                with self._lock:
                    self.counts[Outcome.RETRIED] += 1
                if self._stop.wait(delay):  # stopping: no more retries
                    return False
                delay *= 2
            retry = self._post(data)
            if retry is None:
                return True
            if not retry:
                return False
        return False

    def _post(self, data: bytes) -> bool | None:
        """None on success; True if worth retrying (network error, timeout, 5xx, 429), False if not."""
        req = urllib.request.Request(self.cfg.url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": USER_AGENT})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:  # noqa: S310 (http(s) only)
                resp.read(1024)
                return None
        except urllib.error.HTTPError as exc:
            log.debug("alert POST to %s: HTTP %s", self.name, exc.code)
            return exc.code >= 500 or exc.code == 429
        except (OSError, ValueError) as exc:
            log.debug("alert POST to %s: %s", self.name, exc)
            return True

    def snapshot(self) -> tuple[str, dict[str, int], int]:
        with self._lock:
            return self.name, dict(self.counts), self._queue.qsize()


class AlertDispatcher:
    """All configured webhooks; fed by the ingest writer after each stored batch."""

    def __init__(self, configs: list[AlertConfig]) -> None:
        self.hooks = [Webhook(c) for c in configs]

    def observe_batch(self, batch: list[Inbound], stored_at: float) -> None:
        for it in batch:
            if it.channel == p.Channel.ANOMALY:
                for hook in self.hooks:
                    hook.offer(it.message, stored_at)

    def start(self) -> None:
        for hook in self.hooks:
            hook.start()

    def stop(self) -> None:
        for hook in self.hooks:
            hook.stop()

    def snapshot(self) -> list[tuple[str, dict[str, int], int]]:
        return [hook.snapshot() for hook in self.hooks]

    def failures(self) -> dict[str, int]:
        """Webhook → failed alerts (only those with failures), for the dashboard banner."""
        return {name: counts[Outcome.FAILED] for name, counts, _ in self.snapshot() if counts.get(Outcome.FAILED)}


__all__ = ["AlertDispatcher", "Outcome", "Webhook", "payload", "severity"]
