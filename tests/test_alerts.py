"""Alert webhooks against a real local HTTP receiver: payloads, filters, rate limit, dedup, retries."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cloud_hub.brokers import RunningBroker
from cloud_hub.config import AlertConfig, HubConfig
from cloud_hub.home import HubHome
from cloud_hub.ingest.batching import Inbound
from cloud_hub.web.alerts import AlertDispatcher, Outcome
from shared import protocol as p
from shared.mqtt import BrokerConfig, connect, make_client
from shared.schema import SchemaError, load
from tests.conftest import wait_until


class Receiver:
    """http.server in a thread: records each POSTed JSON body; answers 500 to the first ``fail`` requests."""

    def __init__(self, fail: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.fail = fail
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.requests += 1
                    failing = outer.requests <= outer.fail
                    if not failing:
                        assert self.headers["Content-Type"] == "application/json"
                        outer.bodies.append(json.loads(body))
                self.send_response(500 if failing else 200)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _event(device: str = "gw-1", score: float = 3.0, feature: str = "temp", event_id: str | None = None
           ) -> p.AnomalyEvent:
    return p.AnomalyEvent(v=p.PROTOCOL_VERSION, event_id=event_id or uuid.uuid4().hex, device=device, ts=1.7e9,
                          detected_at=1.7e9 + 0.01, score=score, threshold=1.0, model_version=2,
                          top_features=[feature, "power"], attribution={feature: 0.7, "power": 0.2}, likelihood=0.99)


def _feed(dispatcher: AlertDispatcher, events: list[p.AnomalyEvent], now: float = 1000.0) -> None:
    dispatcher.observe_batch([Inbound(p.Channel.ANOMALY, e.device, e, now, 0, 0) for e in events], now)


def _dispatcher(url: str, **kw: Any) -> AlertDispatcher:
    d = AlertDispatcher([AlertConfig(url=url, name="hook", backoff_s=0.05, timeout_s=2.0, **kw)])
    d.start()
    return d


def _counts(d: AlertDispatcher) -> dict[str, int]:
    return d.snapshot()[0][1]


def test_generic_and_slack_payloads(receiver: Receiver) -> None:
    generic, slack = _dispatcher(receiver.url), _dispatcher(receiver.url, kind="slack")
    try:
        _feed(generic, [_event(score=3.0)])
        _feed(slack, [_event(device="gw-2", score=1.5)])
        wait_until(lambda: len(receiver.bodies) == 2, 10, "two alerts received")
    finally:
        generic.stop()
        slack.stop()
    body = next(b for b in receiver.bodies if "kind" in b)
    assert body["kind"] == "anomaly" and body["severity"] == "critical" and body["device"] == "gw-1"
    assert body["score"] == 3.0 and body["threshold"] == 1.0 and body["model_version"] == 2
    assert body["top_features"] == ["temp", "power"] and body["attribution"] == {"temp": 0.7, "power": 0.2}
    text = next(b for b in receiver.bodies if "text" in b)["text"]
    assert set(next(b for b in receiver.bodies if "text" in b)) == {"text"}
    assert "warning" in text and "`gw-2`" in text and "temp" in text and "v2" in text
    assert _counts(generic)[Outcome.SENT] == 1 and _counts(slack)[Outcome.SENT] == 1


def test_rate_limit_dedup_and_filters(receiver: Receiver) -> None:
    d = _dispatcher(receiver.url, rate_limit=2, rate_window_s=60, dedup_s=30, min_severity="critical",
                    devices=["gw-*"])
    try:
        noisy = [_event(feature=f"f{i}") for i in range(5)]  # distinct leading features: not duplicates
        _feed(d, noisy, now=1000.0)
        _feed(d, [_event(device="gw-2", feature="f0")], now=1000.0)  # another device has its own budget
        _feed(d, [noisy[0]], now=1000.0)  # a redelivered event
        _feed(d, [_event(device="gw-2", feature="f0")], now=1010.0)  # same device + feature within dedup_s
        _feed(d, [_event(device="gw-3", score=1.2)], now=1010.0)  # not critical
        _feed(d, [_event(device="other", feature="x")], now=1010.0)  # not one of the hook's devices
        _feed(d, [_event(feature="late")], now=1061.0)  # the rate window has passed
        wait_until(lambda: len(receiver.bodies) == 4, 10, "four alerts received")
    finally:
        d.stop()
    counts = _counts(d)
    assert counts[Outcome.SENT] == 4
    assert counts[Outcome.RATE_LIMITED] == 3
    assert counts[Outcome.DEDUPLICATED] == 2
    assert counts[Outcome.FILTERED] == 2
    assert [b["device"] for b in receiver.bodies].count("gw-1") == 3


def test_retry_after_500_then_sent() -> None:
    r = Receiver(fail=2)
    d = _dispatcher(r.url, retries=3)
    try:
        _feed(d, [_event()])
        wait_until(lambda: _counts(d).get(Outcome.SENT) == 1, 10, "alert sent after retries")
    finally:
        d.stop()
        r.close()
    assert r.requests == 3 and len(r.bodies) == 1
    assert _counts(d)[Outcome.RETRIED] == 2 and Outcome.FAILED not in _counts(d)


def test_failures_are_counted_and_shown_on_the_dashboard(tmp_path: Path) -> None:
    r = Receiver(fail=10**6)
    d = _dispatcher(r.url, retries=1)
    try:
        _feed(d, [_event()])
        wait_until(lambda: _counts(d).get(Outcome.FAILED) == 1, 10, "alert failed")
    finally:
        d.stop()
        r.close()
    assert r.requests == 2 and d.failures() == {"hook": 1}
    from cloud_hub.web.app import create_app

    home = HubHome(tmp_path / "hub")
    home.init()
    page = TestClient(create_app(home, require_login=False, alerts=d)).get("/fleet")
    assert 'id="alert-failures"' in page.text and "1 failed" in page.text
    from cloud_hub.web.metrics import HubMetrics

    text = HubMetrics(home, alerts=d).render()[0].decode()
    assert 'edgesentry_alerts_total{hook="hook",outcome="failed"} 1.0' in text


def test_full_queue_drops_and_counts() -> None:
    d = AlertDispatcher([AlertConfig(url="http://127.0.0.1:9/", name="hook", queue_max=2, rate_limit=100,
                                     dedup_s=0)])  # not started: nothing drains the queue
    _feed(d, [_event(feature=f"f{i}") for i in range(5)])
    assert _counts(d)[Outcome.DROPPED] == 3 and d.snapshot()[0][2] == 2


def test_alert_config_is_typed_and_strict() -> None:
    cfg = load(HubConfig, {"alerts": [{"url": "https://example.com/h", "kind": "slack"}]})
    assert cfg.alerts[0].kind == "slack" and cfg.alerts[0].retries == 3
    for bad in ({"url": "https://example.com/h", "colour": "red"}, {"url": "ftp://x"},
                {"url": "http://x", "kind": "teams"}, {"url": "http://x", "rate_limit": 0}):
        with pytest.raises((SchemaError, ValueError)):
            load(HubConfig, {"alerts": [bad]})


def test_alert_from_a_live_hub(tmp_path: Path, mosquitto: RunningBroker, receiver: Receiver) -> None:
    """An anomaly published over MQTT reaches the webhook through serve's ingest hook."""
    from cloud_hub.server import HubServer

    home = HubHome(tmp_path / "hub")
    home.init(mosquitto.url)
    home.config_path.write_text(home.config_path.read_text() + f'\n[[alerts]]\nurl = "{receiver.url}"\n')
    server = HubServer(home)
    dispatcher = AlertDispatcher(home.config().alerts)
    server.on_stored.append(dispatcher.observe_batch)
    dispatcher.start()
    server.start()
    client = make_client(BrokerConfig(url=mosquitto.url), "alert-peer", persistent=False)
    connect(client, BrokerConfig(url=mosquitto.url))
    try:
        event = _event(device="gw-live")
        client.publish(p.device_topic("gw-live", p.Channel.ANOMALY), p.encode(event), qos=1).wait_for_publish(10)
        wait_until(lambda: len(receiver.bodies) == 1, 15, "alert from the live hub")
    finally:
        client.disconnect()
        client.loop_stop()
        server.stop()
        dispatcher.stop()
    assert receiver.bodies[0]["event_id"] == event.event_id and receiver.bodies[0]["device"] == "gw-live"
