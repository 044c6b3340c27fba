"""The dashboard in a real headless Chromium (Playwright, the system's /usr/bin/chromium; browsers are
never downloaded): log in, see the fleet, open a device, label an anomaly, see the label in the CLI;
a wrong password is refused and a form POST without the CSRF token gets 403."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud_hub.home import HubHome
from cloud_hub.web import auth
from cloud_hub.web.sample_data import populate
from cloud_hub.web.server import WebServer

CHROMIUM = os.environ.get("EDGESENTRY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "a browser password"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="chromium is not installed (apt-get install chromium; .ci/run does this)")


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubHome, str]]:
    home = HubHome(tmp_path_factory.mktemp("web") / "hub")
    home.init()
    populate(home, devices=6, anomalies=40)
    auth.Users(home.path).set("operator", PASSWORD)
    web = WebServer(home, "127.0.0.1:0")
    web.start()
    yield home, web.url.rstrip("/")
    web.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context()  # type: ignore[attr-defined]
    yield context.new_page()
    context.close()


def _login(page: object, url: str, password: str = PASSWORD) -> None:
    page.goto(url + "/fleet")  # type: ignore[attr-defined]
    page.fill("input[name=username]", "operator")  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("form.login button[type=submit]")  # type: ignore[attr-defined]


def test_wrong_password_is_refused(dashboard: tuple[HubHome, str], page: object) -> None:
    _, url = dashboard
    _login(page, url, "not the password")
    assert "Wrong user name or password" in page.inner_text("p.error")  # type: ignore[attr-defined]
    assert page.url.startswith(url + "/login")  # type: ignore[attr-defined]
    page.goto(url + "/devices/gw-000")  # type: ignore[attr-defined]
    assert "/login" in page.url  # type: ignore[attr-defined]


def test_login_fleet_device_and_csrf(dashboard: tuple[HubHome, str], page: object) -> None:
    _, url = dashboard
    _login(page, url)
    page.wait_for_url(url + "/fleet")  # type: ignore[attr-defined]
    rows = page.locator("#fleet tbody tr")  # type: ignore[attr-defined]
    assert rows.count() == 6
    assert "rolled_back" in page.inner_text("#fleet")  # type: ignore[attr-defined]
    page.select_option("select[name=status]", "offline")  # type: ignore[attr-defined]
    page.click("#fleet-filter button")  # type: ignore[attr-defined]
    assert page.locator("#fleet tbody tr").count() == 1  # type: ignore[attr-defined]
    page.goto(url + "/fleet")  # type: ignore[attr-defined]
    page.click("text=gw-001")  # type: ignore[attr-defined]
    page.wait_for_url(url + "/devices/gw-001")  # type: ignore[attr-defined]
    assert page.locator("svg.chart circle.mark").count() >= 1  # type: ignore[attr-defined]
    assert "probation" in page.inner_text("#model-history")  # type: ignore[attr-defined]
    # A form POST with the browser's valid session cookie but no CSRF token is refused.
    response = page.request.post(url + "/logout", form={"x": "1"})  # type: ignore[attr-defined]
    assert response.status == 403
    response = page.request.post(url + "/anomalies/1/label", form={"label": "true_positive"})  # type: ignore[attr-defined]
    assert response.status == 403
    page.goto(url + "/fleet")  # type: ignore[attr-defined]
    assert page.url == url + "/fleet"  # still logged in  # type: ignore[attr-defined]


def test_label_an_anomaly_and_see_it_in_the_cli(dashboard: tuple[HubHome, str], page: object) -> None:
    from cloud_hub.cli import main as cli

    home, url = dashboard
    _login(page, url)
    page.goto(url + "/devices/gw-000")  # type: ignore[attr-defined]
    unlabelled = page.locator("#device-anomalies tbody tr:not(:has(.lab))")  # type: ignore[attr-defined]
    row = unlabelled.first
    anomaly_id = int(row.get_attribute("data-anomaly"))
    with page.expect_navigation():  # type: ignore[attr-defined]
        row.locator("button.fp").click()
    assert page.url.endswith(f"#a{anomaly_id}")  # type: ignore[attr-defined]
    assert "false positive" in page.locator(f"#a{anomaly_id}").inner_text()  # type: ignore[attr-defined]
    out = CliRunner().invoke(cli, ["--home", str(home.path), "anomalies", "list", "--device", "gw-000", "--json",
                                   "--limit", "1000"])
    assert out.exit_code == 0, out.output
    listed = {a["id"]: a for a in map(json.loads, out.output.splitlines())}
    assert listed[anomaly_id]["label"] == "false_positive" and listed[anomaly_id]["labelled_by"] == "operator"


def test_pause_a_rollout_from_the_page(dashboard: tuple[HubHome, str], page: object) -> None:
    """The pause button writes the operator command `serve` carries out (as `cloud-hub rollout pause`)."""
    from cloud_hub import db

    home, url = dashboard
    _login(page, url)
    page.goto(url + "/rollouts")  # type: ignore[attr-defined]
    assert "running" in page.inner_text("tr[data-rollout='1']")  # type: ignore[attr-defined]
    page.click("tr[data-rollout='1'] button[value=pause]")  # type: ignore[attr-defined]
    page.wait_for_url(url + "/rollouts/1")  # type: ignore[attr-defined]
    assert "pause requested" in page.inner_text("dl.facts")  # type: ignore[attr-defined]
    with home.sessions()() as s:
        assert s.get(db.Rollout, 1).command == db.RolloutCommand.PAUSE  # type: ignore[union-attr]
