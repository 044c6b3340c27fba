"""deploy/: the compose setup parses, Prometheus scrapes the hub service, and every metric the Grafana
dashboard queries is one the hub really exports (checked against /metrics output)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from cloud_hub.config import AlertConfig
from cloud_hub.home import HubHome
from cloud_hub.ingest.service import HubServer
from cloud_hub.web.alerts import AlertDispatcher
from cloud_hub.web.metrics import HubMetrics
from cloud_hub.web.sample_data import populate

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMQL_FUNCTIONS = {"rate", "sum", "by", "topk", "increase", "histogram_quantile", "le"}


def _compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_services_volumes_and_secrets() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) >= {"postgres", "hub-init", "mosquitto", "hub", "prometheus", "grafana"}
    hub = services["hub"]
    assert hub["command"][:2] == ["cloud-hub", "serve"] and "--no-auth" not in hub["command"]
    assert hub["depends_on"]["hub-init"]["condition"] == "service_completed_successfully"
    assert services["mosquitto"]["command"] == ["mosquitto", "-c", "/broker/mosquitto.conf"]
    assert "broker:/broker" in services["mosquitto"]["volumes"] and "broker:/broker" in hub["volumes"]
    # Every referenced volume and secret is declared; every secret file is one compose.yaml tells how to make.
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith("."):
                assert src in compose["volumes"], (name, src)
            else:
                assert (DEPLOY / src).exists(), (name, src)
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], (name, secret)
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    for port in (*hub["ports"], *services["grafana"]["ports"], *services["prometheus"]["ports"]):
        assert port.startswith("127.0.0.1:"), f"{port}: web UIs are published on loopback only"
    dockerfile = (DEPLOY / "hub.Dockerfile").read_text()
    assert "deploy/hub-init.sh" in dockerfile and "1883" in dockerfile


def test_hub_init_script_uses_real_commands() -> None:
    from click.testing import CliRunner

    from cloud_hub.cli import main as cli

    script = (DEPLOY / "hub-init.sh").read_text()
    assert subprocess.run(["sh", "-n", str(DEPLOY / "hub-init.sh")]).returncode == 0
    for command in re.findall(r'cloud-hub --home "\$home" ([a-z][a-z-]*(?: [a-z][a-z-]*)?)', script):
        args = command.split()
        result = CliRunner().invoke(cli, [*args, "--help"])
        assert result.exit_code == 0, (command, result.output)
    for option in ("--database-url", "--hub-url", "--run-as", "--password-stdin"):
        assert option in script


def test_prometheus_scrapes_the_hub_service() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    hub = jobs["edgesentry-hub"]
    assert hub.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in hub["static_configs"] for t in sc["targets"]]
    serve_port = _compose()["services"]["hub"]["command"][-1].rsplit(":", 1)[1]
    assert targets == [f"hub:{serve_port}"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names the hub's /metrics can emit (live ingest, alerts and database families)."""
    home = HubHome(tmp_path_factory.mktemp("deploy") / "hub")
    home.init()
    populate(home, devices=4, anomalies=20)
    server = HubServer(home)  # not started: its counters are what /metrics reads
    alerts = AlertDispatcher([AlertConfig(url="http://127.0.0.1:9/")])
    text = HubMetrics(home, server, alerts).render()[0].decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        if kind == "counter":
            names.add(name if name.endswith("_total") else name + "_total")
        elif kind == "histogram":
            names.update(name + s for s in ("_bucket", "_count", "_sum"))
        else:
            names.add(name)
    return names


def test_grafana_dashboard_queries_exported_metrics(exported: set[str]) -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "edgesentry.json").read_text())
    assert dash["uid"] and dash["panels"]
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "prometheus"
        for target in panel["targets"]:
            used.update(re.findall(r"\bedgesentry_[a-z_]+\b", target["expr"]))
    assert used, "the dashboard queries no edgesentry metric"
    assert used <= exported, f"not exported by the hub: {sorted(used - exported)}"
    # The metrics the issue asks for each have a panel.
    for wanted in ("edgesentry_messages_received_total", "edgesentry_messages_stored_total",
                   "edgesentry_messages_rejected_total", "edgesentry_ingest_latency_seconds_bucket",
                   "edgesentry_devices", "edgesentry_anomalies_total", "edgesentry_rollout_devices",
                   "edgesentry_retrain_runs_total", "edgesentry_alerts_total"):
        assert wanted in used, wanted
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus" and ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "edgesentry.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
