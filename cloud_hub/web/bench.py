"""Dashboard page load times on a big hub database (``cloud-hub bench --only web``): 200 devices and
100,000 anomaly events inserted directly, the dashboard served by uvicorn on loopback, each page fetched
over HTTP (server time to the last byte) and loaded in headless Chromium (navigation to the load event).
Optionally writes the README screenshot."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import time
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

from rich.console import Console

from cloud_hub.home import HubHome
from cloud_hub.web import auth
from cloud_hub.web.sample_data import populate
from cloud_hub.web.server import WebServer

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "bench password"


def _pages(devices: list[str]) -> dict[str, str]:
    return {"fleet": "/fleet", "fleet sorted by anomalies": "/fleet?sort=anomalies_24h&desc=1",
            "device (noisiest, 24 h)": f"/devices/{devices[0]}", "device (quiet, 24 h)": f"/devices/{devices[-2]}",
            "anomalies (page 1)": "/anomalies", "anomalies (page 500)": "/anomalies?page=500",
            "anomalies (one device)": f"/anomalies?device={devices[0]}", "anomalies (unlabelled)":
            "/anomalies?label=unlabelled", "models": "/models", "rollouts": "/rollouts", "metrics": "/metrics"}


def _summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"median_ms": round(statistics.median(ms), 1), "max_ms": round(ms[-1], 1), "runs": len(ms)}


def _http_times(base: str, pages: dict[str, str], runs: int) -> dict[str, Any]:
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = opener.open(base + "/login").read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
    opener.open(base + "/login", urllib.parse.urlencode(
        {"username": "bench", "password": PASSWORD, "csrf_token": token, "next": "/fleet"}).encode()).read()
    out = {}
    for name, path in pages.items():
        times, size = [], 0
        for _ in range(runs):
            t0 = time.perf_counter()
            body = opener.open(base + path).read()
            times.append(time.perf_counter() - t0)
            size = len(body)
        out[name] = {**_summary(times), "bytes": size}
    return out


def _login(page: Any, base: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=username]", "bench")
    page.fill("input[name=password]", PASSWORD)
    page.click("form.login button[type=submit]")
    page.wait_for_url(base + "/fleet")


def _browser_times(base: str, pages: dict[str, str], runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, Any] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        _login(page, base)
        for name, path in pages.items():
            if path == "/metrics":
                continue
            times = []
            for _ in range(runs):
                page.goto(base + path, wait_until="load")
                nav = page.evaluate("() => { const n = performance.getEntriesByType('navigation')[0];"
                                    " return [n.responseEnd, n.loadEventEnd]; }")
                times.append(nav[1] / 1000)
            out[name] = _summary(times)
        browser.close()
    return out


def screenshots(workdir: Path, device_png: Path) -> list[Path]:
    """Device and fleet pages on demo-like data (12 gateways, 6 h, bursts of anomalies) in headless
    Chromium: ``device_png`` and ``<stem>-fleet.png`` beside it."""
    from playwright.sync_api import sync_playwright

    shutil.rmtree(workdir, ignore_errors=True)
    home = HubHome(workdir / "hub")
    home.init()
    names = populate(home, devices=12, anomalies=320, seed=3, span_s=6 * 3600)
    auth.Users(home.path).set("bench", PASSWORD)
    web = WebServer(home, "127.0.0.1:0")
    web.start()
    base = web.url.rstrip("/")
    fleet_png = device_png.with_name(device_png.stem + "-fleet.png")
    device_png.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            _login(page, base)
            page.screenshot(path=str(fleet_png))
            page.goto(f"{base}/devices/{names[0]}?hours=6")
            page.screenshot(path=str(device_png))
            browser.close()
    finally:
        web.stop()
    return [device_png, fleet_png]


def run_web_bench(workdir: Path, out: Path, devices: int = 200, anomalies: int = 100_000, runs: int = 5,
                  screenshot: Path | None = None, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    shutil.rmtree(workdir, ignore_errors=True)
    home = HubHome(workdir / "hub")
    home.init()
    t0 = time.perf_counter()
    names = populate(home, devices=devices, anomalies=anomalies, span_s=24 * 3600)
    console.print(f"[bold]web bench[/] {devices} devices, {anomalies} anomaly events inserted in "
                  f"{time.perf_counter() - t0:.1f} s")
    auth.Users(home.path).set("bench", PASSWORD)
    web = WebServer(home, "127.0.0.1:0")
    web.start()
    base = web.url.rstrip("/")
    pages = _pages(names)
    try:
        results: dict[str, Any] = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_1min": round(os.getloadavg()[0], 1)},
            "data": {"devices": devices, "anomalies": anomalies, "database": "sqlite"},
            "http": _http_times(base, pages, runs),
            "browser": _browser_times(base, pages, runs) if Path(CHROMIUM).exists() else {},
        }
    finally:
        web.stop()
    from rich.table import Table

    table = Table("page", "HTTP median / max ms", "KB", "Chromium load median / max ms")
    for name in pages:
        h, b = results["http"][name], results["browser"].get(name)
        table.add_row(name, f"{h['median_ms']} / {h['max_ms']}", f"{h['bytes'] / 1024:.0f}",
                      f"{b['median_ms']} / {b['max_ms']}" if b else "—")
    console.print(table)
    out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"written to {out}")
    if screenshot is not None:
        shots = screenshots(workdir / "screenshots", screenshot)
        console.print(f"screenshots: {', '.join(map(str, shots))}")
    return results
