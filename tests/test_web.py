"""Dashboard routes, login, CSRF and /metrics through Starlette's in-process client (the browser test
drives the same pages in Chromium)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.routing import Route
from starlette.testclient import TestClient

from cloud_hub.brokers import RunningBroker
from cloud_hub.cli import main as cli
from cloud_hub.home import HubHome
from cloud_hub.web import auth
from cloud_hub.web.app import create_app
from cloud_hub.web.sample_data import populate
from cloud_hub.web.server import BindError, WebServer, check_bind, parse_listen
from shared import protocol as p
from shared.mqtt import BrokerConfig, connect, make_client
from tests.conftest import wait_until

PASSWORD = "correct horse battery"


@pytest.fixture
def home(tmp_path: Path) -> HubHome:
    home = HubHome(tmp_path / "hub")
    home.init()
    populate(home, devices=6, anomalies=150)
    auth.Users(home.path).set("alice", PASSWORD)
    return home


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "page has no CSRF field"
    return match.group(1)


def _login(client: TestClient, password: str = PASSWORD, user: str = "alice") -> object:
    page = client.get("/login")
    return client.post("/login", data={"username": user, "password": password, "csrf_token": _csrf(page.text),
                                       "next": "/fleet"}, follow_redirects=False)


@pytest.fixture
def client(home: HubHome) -> TestClient:
    c = TestClient(create_app(home))
    assert _login(c).status_code == 303  # type: ignore[attr-defined]
    return c


def test_pages_need_login_and_wrong_password_is_refused(home: HubHome) -> None:
    c = TestClient(create_app(home))
    r = c.get("/devices/gw-001", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Fdevices%2Fgw-001")
    bad = _login(c, "wrong password")
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text  # type: ignore[attr-defined]
    assert _login(c, PASSWORD, user="mallory").status_code == 401  # type: ignore[attr-defined]
    assert c.get("/fleet", follow_redirects=False).status_code == 303
    ok = _login(c)
    assert ok.status_code == 303 and ok.headers["location"] == "/fleet"  # type: ignore[attr-defined]
    cookie = ok.headers["set-cookie"].lower()  # type: ignore[attr-defined]
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/fleet").status_code == 200


def test_login_is_throttled_after_repeated_failures(home: HubHome) -> None:
    c = TestClient(create_app(home))
    for _ in range(5):
        assert _login(c, "nope nope").status_code == 401  # type: ignore[attr-defined]
    assert _login(c).status_code == 429  # type: ignore[attr-defined]  # even the right password, for a while


def test_every_post_route_refuses_a_form_without_csrf_token(client: TestClient) -> None:
    app = client.app
    posts = [r for r in app.routes if isinstance(r, Route) and "POST" in (r.methods or set())]  # type: ignore[attr-defined]
    assert {r.path for r in posts} >= {"/login", "/logout", "/anomalies/{anomaly_id:int}/label",
                                       "/rollouts/{rollout_id:int}/command"}
    for route in posts:
        path = route.path.replace("{anomaly_id:int}", "1").replace("{rollout_id:int}", "1")
        for data in ({}, {"csrf_token": "forged"}):
            r = client.post(path, data={**data, "label": "true_positive", "command": "pause", "username": "alice",
                                        "password": PASSWORD}, follow_redirects=False)
            assert r.status_code == 403, (path, data, r.status_code)
    assert client.get("/fleet").status_code == 200  # still logged in: logout without a token did nothing


def test_fleet_lists_filters_and_sorts(client: TestClient) -> None:
    r = client.get("/fleet")
    assert r.status_code == 200
    rows = re.findall(r'<tr data-device="([^"]+)"', r.text)
    assert rows == [f"gw-{i:03d}" for i in range(6)]
    assert "rolled_back" in r.text and "offline" in r.text and "rpi4-64" in r.text and "plant-a" in r.text
    desc = re.findall(r'<tr data-device="([^"]+)"', client.get("/fleet?sort=device_id&desc=1").text)
    assert desc == rows[::-1]
    plant_a = re.findall(r'<tr data-device="([^"]+)"', client.get("/fleet?group=plant-a").text)
    assert plant_a == ["gw-000", "gw-003"]
    offline = re.findall(r'<tr data-device="([^"]+)"', client.get("/fleet?status=offline").text)
    assert offline == ["gw-005"]
    assert re.findall(r'<tr data-device="([^"]+)"', client.get("/fleet?q=00").text)[:1] == ["gw-000"]
    by_anomalies = re.findall(r'<tr data-device="([^"]+)"', client.get("/fleet?sort=anomalies_24h&desc=1").text)
    assert by_anomalies[0] == "gw-000"  # populate() makes the low ids noisier


def test_device_page_shows_timeline_attribution_and_history(client: TestClient) -> None:
    r = client.get("/devices/gw-001")
    assert r.status_code == 200
    assert '<svg class="chart"' in r.text and 'class="threshold"' in r.text and 'class="mark' in r.text
    assert '<polyline points="' in r.text and 'class="score"' in r.text  # the telemetry score line
    assert 'class="bars"' in r.text  # attribution per anomaly
    history = r.text.split('id="model-history"')[1]
    assert "rolled_back" in history and "probation: anomaly rate" in history
    assert client.get("/devices/nope").status_code == 404
    assert client.get("/devices/gw-001?hours=abc").status_code == 400


def test_anomalies_page_filters_and_pages(client: TestClient) -> None:
    r = client.get("/anomalies")
    assert "150 matching" in r.text and len(re.findall(r'data-anomaly="', r.text)) == 100
    page2 = client.get("/anomalies?page=2")
    assert len(re.findall(r'data-anomaly="', page2.text)) == 50
    only = client.get("/anomalies?device=gw-002")
    devices = set(re.findall(r'<a href="/devices/([^"#]+)#a', only.text))
    assert devices <= {"gw-002"}
    assert client.get("/anomalies?min_score=1e9").text.count('data-anomaly="') == 0
    assert client.get("/anomalies?model=x").status_code == 400


def test_rollouts_and_models_pages(client: TestClient) -> None:
    r = client.get("/rollouts")
    assert "#1" in r.text and "1 healthy" in r.text and "1 rolled_back" in r.text and "3 queued" in r.text
    assert "10%" in r.text and "failures ≤ 25.0%" in r.text  # waves and gates
    detail = client.get("/rollouts/1").text
    assert "Wave 1" in detail and "Wave 3" in detail and "probation: anomaly rate" in detail
    assert client.get("/rollouts/99").status_code == 404
    m = client.get("/models")
    assert "v2" in m.text and "int8" in m.text and "ae-lstm" in m.text
    assert 'from <a href="#v1">v1</a>' in m.text and "flag rate" in m.text  # lineage and held-out metrics
    assert "promoted" in m.text and "new_data" in m.text  # retrain decisions


def test_label_from_the_page_is_the_cli_label(client: TestClient, home: HubHome) -> None:
    page = client.get("/anomalies?label=unlabelled")
    target = int(re.findall(r'data-anomaly="(\d+)"', page.text)[0])
    r = client.post(f"/anomalies/{target}/label", data={"csrf_token": _csrf(page.text), "label": "false_positive",
                                                        "back": "/anomalies?label=false_positive"},
                    follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/anomalies?label=false_positive"
    listed = client.get("/anomalies?label=false_positive").text
    assert f'data-anomaly="{target}"' in listed and "false positive" in listed
    assert f'data-anomaly="{target}"' not in client.get("/anomalies?label=unlabelled").text
    out = CliRunner().invoke(cli, ["--home", str(home.path), "anomalies", "list", "--json", "--limit", "1000"])
    rows = {json.loads(line)["id"]: json.loads(line) for line in out.output.splitlines()}
    assert rows[target]["label"] == "false_positive" and rows[target]["labelled_by"] == "alice"
    csrf = _csrf(page.text)
    assert client.post("/anomalies/999999/label", data={"csrf_token": csrf, "label": "true_positive"}).status_code == 404
    assert client.post(f"/anomalies/{target}/label", data={"csrf_token": csrf, "label": "maybe"}).status_code == 400
    assert client.get("/anomalies?label=maybe").status_code == 400


def test_rollout_pause_resume_abort_from_the_page(client: TestClient, home: HubHome) -> None:
    """The buttons write the same operator command as `cloud-hub rollout pause|resume|abort`; only the
    commands the rollout's state allows are offered, others are refused with 409."""
    from cloud_hub import db

    page = client.get("/rollouts/1").text
    assert 'value="pause"' in page and 'value="abort"' in page and 'value="resume"' not in page
    csrf = _csrf(page)
    r = client.post("/rollouts/1/command", data={"csrf_token": csrf, "command": "pause"}, follow_redirects=False)
    assert r.status_code == 303
    with home.sessions()() as s:
        assert s.get(db.Rollout, 1).command == db.RolloutCommand.PAUSE  # type: ignore[union-attr]
        s.get(db.Rollout, 1).state = db.RolloutState.PAUSED  # what serve's engine does on its next tick  # type: ignore[union-attr]
        s.get(db.Rollout, 1).command = None  # type: ignore[union-attr]
        s.commit()
    page = client.get("/rollouts/1").text
    assert 'value="resume"' in page and 'value="pause"' not in page
    assert client.post("/rollouts/1/command", data={"csrf_token": csrf, "command": "pause"}).status_code == 409
    assert client.post("/rollouts/1/command", data={"csrf_token": csrf, "command": "explode"}).status_code == 400
    assert client.post("/rollouts/9/command", data={"csrf_token": csrf, "command": "abort"}).status_code == 404
    assert client.post("/rollouts/1/command", data={"csrf_token": csrf, "command": "abort"},
                       follow_redirects=False).status_code == 303
    with home.sessions()() as s:
        assert s.get(db.Rollout, 1).command == db.RolloutCommand.ABORT  # type: ignore[union-attr]


def test_no_auth_only_on_loopback_and_listen_parsing() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen(":9000") == ("0.0.0.0", 9000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("8080", "host:", "host:99999"):
        with pytest.raises(BindError):
            parse_listen(bad)
    check_bind("127.0.0.1", require_login=False)
    check_bind("::1", require_login=False)
    check_bind("0.0.0.0", require_login=True)
    for host in ("0.0.0.0", "192.168.1.5", "example.com"):
        with pytest.raises(BindError, match="loopback"):
            check_bind(host, require_login=False)


def test_cli_refuses_no_auth_on_a_public_bind_and_manages_users(home: HubHome) -> None:
    run = CliRunner()
    r = run.invoke(cli, ["--home", str(home.path), "dashboard", "--http", "0.0.0.0:0", "--no-auth"])
    assert r.exit_code != 0 and "loopback" in r.output
    r = run.invoke(cli, ["--home", str(home.path), "web-user", "set", "bob", "--password-stdin"], input="short\n")
    assert r.exit_code != 0 and "at least 8" in r.output
    r = run.invoke(cli, ["--home", str(home.path), "web-user", "set", "bob", "--password-stdin"],
                   input="a long password\n")
    assert r.exit_code == 0, r.output
    assert run.invoke(cli, ["--home", str(home.path), "web-user", "list"]).output.split() == ["alice", "bob"]
    assert (home.path / auth.USERS_FILE).stat().st_mode & 0o077 == 0
    assert "a long password" not in (home.path / auth.USERS_FILE).read_text()


def test_removed_user_is_logged_out(client: TestClient, home: HubHome) -> None:
    assert client.get("/fleet", follow_redirects=False).status_code == 200
    assert auth.Users(home.path).remove("alice")
    assert client.get("/fleet", follow_redirects=False).status_code == 303


def test_oversized_body_is_refused(client: TestClient) -> None:
    r = client.post("/logout", content=b"x" * 200_000, headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


def test_security_headers(client: TestClient) -> None:
    r = client.get("/fleet")
    assert r.headers["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_metrics_from_database_and_token(home: HubHome) -> None:
    c = TestClient(create_app(home))
    text = c.get("/metrics").text  # no login for the scraper
    assert 'edgesentry_devices{status="online"} 5.0' in text
    assert 'edgesentry_devices{status="offline"} 1.0' in text
    assert 'edgesentry_devices_by_model{state="rolled_back",version="1"} 1.0' in text
    assert 'edgesentry_rollout_devices{rollout="1",state="queued",version="2"} 3.0' in text
    assert 'edgesentry_retrain_runs_total{outcome="promoted",trigger="new_data"} 1.0' in text
    assert 'edgesentry_anomaly_labels{label="true_positive"} 1.0' in text
    total = sum(float(v) for v in re.findall(r'^edgesentry_anomalies_total\{[^}]*\} (\S+)$', text, re.M))
    assert total == 150
    home.update_config({"web": {"metrics_token": "s3cret"}})
    c2 = TestClient(create_app(home))
    assert c2.get("/metrics").status_code == 401
    assert c2.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_metrics_follow_live_ingest(tmp_path: Path, mosquitto: RunningBroker) -> None:
    """`serve --http`: /metrics counts what the running hub received, stored and rejected."""
    import urllib.request

    from cloud_hub.server import HubServer
    from cloud_hub.web.metrics import HubMetrics

    home = HubHome(tmp_path / "live")
    home.init(mosquitto.url)
    server = HubServer(home)
    server.start()
    web = WebServer(home, "127.0.0.1:0", require_login=True, metrics=HubMetrics(home, server))
    web.start()
    client = make_client(BrokerConfig(url=mosquitto.url), "metrics-peer", persistent=False)
    connect(client, BrokerConfig(url=mosquitto.url))
    try:
        for _ in range(3):
            event = p.AnomalyEvent(v=p.PROTOCOL_VERSION, event_id=uuid.uuid4().hex, device="gw-m", ts=1.7e9,
                                   detected_at=1.7e9, score=3.0, threshold=1.0, model_version=1)
            client.publish(p.device_topic("gw-m", p.Channel.ANOMALY), p.encode(event), qos=1).wait_for_publish(10)
        client.publish(p.device_topic("gw-m", p.Channel.ANOMALY), b"{not json", qos=1).wait_for_publish(10)
        tele = p.Telemetry(v=p.PROTOCOL_VERSION, device="gw-m", ts=1.7e9, interval_s=10.0, scored=200,
                           score_mean=0.01, score_max=0.04, readings_scored_total=200, msg_id="tele-1")
        for _ in range(2):  # a redelivery is stored once
            client.publish(p.device_topic("gw-m", p.Channel.TELEMETRY), p.encode(tele), qos=1).wait_for_publish(10)

        def scrape() -> str:
            with urllib.request.urlopen(web.url + "metrics", timeout=5) as resp:
                return resp.read().decode()

        wait_until(lambda: 'edgesentry_messages_stored_total{channel="anomaly"} 3.0' in scrape(), 15,
                   "three anomaly events stored")
        text = scrape()
        assert 'edgesentry_messages_received_total{channel="anomaly"} 3.0' in text
        assert re.search(r'edgesentry_messages_rejected_total\{reason="[a-z_]+"\} 1\.0', text)
        assert 'edgesentry_ingest_latency_seconds_count{channel="anomaly"} 3.0' in text
        wait_until(lambda: 'edgesentry_messages_received_total{channel="telemetry"} 2.0' in scrape(), 15,
                   "both telemetry messages received")
        server.idle.wait(10)
        from sqlalchemy import select

        from cloud_hub import db

        with home.sessions()() as s:
            rows = s.execute(select(db.TelemetryRecord.msg_id, db.TelemetryRecord.score_max)).all()
        assert [tuple(r) for r in rows] == [("tele-1", 0.04)]
    finally:
        client.disconnect()
        client.loop_stop()
        web.stop()
        server.stop()


def test_pages_and_metrics_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    """The dashboard's queries (fleet counts, timeline buckets, label filters, paging) on a real PostgreSQL."""
    home = HubHome(tmp_path / "pg")
    home.init(database_url=postgres_url)
    populate(home, devices=6, anomalies=150)
    auth.Users(home.path).set("alice", PASSWORD)
    c = TestClient(create_app(home))
    assert _login(c).status_code == 303  # type: ignore[attr-defined]
    assert re.findall(r'<tr data-device="([^"]+)"', c.get("/fleet?sort=anomalies_24h&desc=1").text)[0] == "gw-000"
    device = c.get("/devices/gw-000").text
    assert 'class="mark' in device and 'class="score"' in device
    assert "150 matching" in c.get("/anomalies").text
    assert c.get("/anomalies?label=unlabelled").text.count('data-anomaly="') == 100
    assert c.get("/anomalies?page=2&min_score=0").text.count('data-anomaly="') == 50
    for path in ("/rollouts", "/rollouts/1", "/models"):
        assert c.get(path).status_code == 200, path
    assert 'edgesentry_devices{status="online"} 5.0' in c.get("/metrics").text
