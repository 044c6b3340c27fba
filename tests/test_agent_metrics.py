"""The agent's optional /metrics: a real agent scoring a CSV replay with a real bundle, scraped over HTTP;
without [metrics] the agent never imports prometheus-client."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from cloud_hub.brokers import RunningBroker, free_port
from edge_agent.config import MetricsConfig
from shared import bundle as bundle_fmt
from shared.schema import SchemaError
from shared.signing import parse_public_key
from tests.conftest import CSV_REPLAY_TOML, REPO, simulated_series, start_agent, wait_until, write_csv


def _value(text: str, name: str) -> float | None:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


@pytest.mark.integration
def test_agent_metrics_while_scoring(tmp_path: Path, mosquitto: RunningBroker, trained_home) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.model_store import ModelStore
    from edge_agent.update import provision

    home, exported = trained_home
    store = ModelStore(tmp_path / "state", [parse_public_key(home.public_key())])
    store.install(bundle_fmt.pack(bundle_fmt.read_dir(exported.bundle_dir)))
    provision(tmp_path / "state", 1)
    ts, values = simulated_series(30, seed=5)
    write_csv(tmp_path / "replay.csv", ts, values)
    port = free_port()
    agent, log = start_agent(tmp_path, "gw-metrics", home.public_key(), mosquitto.url,
                             f'[metrics]\nlisten = "127.0.0.1:{port}"\n[sync]\nenabled = false\n{CSV_REPLAY_TOML}')
    url = f"http://127.0.0.1:{port}/metrics"

    def scrape() -> str:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    try:
        window = 16
        wait_until(lambda: _value(scrape(), "edgesentry_agent_readings_scored_total") == len(ts) - window + 1, 60,
                   "the whole replay scored")
        text = scrape()
        assert _value(text, "edgesentry_agent_readings_received_total") == len(ts)
        assert _value(text, "edgesentry_agent_model_version") == 1
        assert (_value(text, "edgesentry_agent_scoring_latency_seconds_count") or 0) >= 1
        assert (_value(text, "edgesentry_agent_scoring_latency_seconds_sum") or 0) > 0
        assert _value(text, "edgesentry_agent_outbox_bytes") is not None
        assert "# TYPE edgesentry_agent_outbox_dropped_total counter" in text
        assert "edgesentry_agent_readings_per_second" in text
    finally:
        agent.terminate()
        assert agent.wait(30) == 0, log.read_text()[-2000:]


def test_metrics_off_imports_nothing_and_listen_is_validated(tmp_path: Path) -> None:
    code = f"""
import sys
from pathlib import Path
from edge_agent.config import load_config
from edge_agent.agent import Agent
p = Path({str(tmp_path / "a.toml")!r})
p.write_text('device_id = "gw"\\nstate_dir = "s"\\ntrusted_keys = ["{'A' * 43}="]\\n')
a = Agent(load_config(p))
print("prometheus_client" in sys.modules, a.metrics)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "None"]
    for bad in ("9101", ":9101", "host:0", "host:x"):
        with pytest.raises((ValueError, SchemaError)):
            MetricsConfig(listen=bad)
    assert MetricsConfig(listen="127.0.0.1:9101").listen == "127.0.0.1:9101"
