"""Supervised network loop: a dead paho thread or a broker gone too long ends the process with status 3.

Real processes on a real Mosquitto.  The thread-death case runs the real CLI under a small launcher
that makes paho's loop raise once a trigger file exists (a fault injected from outside, as a bug or a
library failure would, not a code path in the product).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_hub.brokers import RunningBroker
from cloud_hub.home import HubHome
from shared.mqtt import EXIT_NETWORK
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.integration

LAUNCHER = """
import pathlib, sys
import paho.mqtt.client as m
trigger = pathlib.Path(sys.argv[1])
original = m.Client.loop_misc
def loop_misc(self):
    if trigger.exists():
        raise RuntimeError("injected fault")
    return original(self)
m.Client.loop_misc = loop_misc
if sys.argv[2] == "agent":
    from edge_agent.cli import main
    sys.exit(main(sys.argv[3:]))
from cloud_hub.cli import main
main(sys.argv[3:])
"""


def _hub_home(tmp_path: Path, broker: RunningBroker, limit: float | None = None) -> HubHome:
    home = HubHome(tmp_path / "hub")
    home.init(broker.url)
    if limit is not None:
        text = home.config_path.read_text().replace("[broker]\n", f"[broker]\nmax_disconnected_s = {limit}\n")
        home.config_path.write_text(text)
    return home


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=open(log, "wb"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def _serve(home: HubHome, log: Path, trigger: Path | None = None) -> subprocess.Popen[bytes]:
    cli = ["--home", str(home.path), "serve"]
    if trigger is None:
        return _spawn(["-m", "cloud_hub.cli", *cli], log)
    return _spawn(["-c", LAUNCHER, str(trigger), "hub", *cli], log)


def _finish(proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> tuple[int, str]:
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("process did not exit:\n" + log.read_text()[-3000:]) from None
    return code, log.read_text()


def test_hub_exits_when_the_broker_stays_away(tmp_path: Path, mosquitto: RunningBroker) -> None:
    home = _hub_home(tmp_path, mosquitto, limit=1)
    log = tmp_path / "hub.log"
    proc = _serve(home, log)
    wait_until(lambda: "hub serving" in log.read_text(), 60, "hub serving")
    mosquitto.stop()
    code, text = _finish(proc, log)
    assert code == EXIT_NETWORK, text[-2000:]
    assert "no broker connection for" in text and "disconnected_too_long" in text


def test_hub_exits_when_its_network_thread_dies(tmp_path: Path, mosquitto: RunningBroker) -> None:
    home = _hub_home(tmp_path, mosquitto)
    log, trigger = tmp_path / "hub.log", tmp_path / "kill-loop"
    proc = _serve(home, log, trigger)
    wait_until(lambda: "hub serving" in log.read_text(), 60, "hub serving")
    trigger.touch()
    code, text = _finish(proc, log)
    assert code == EXIT_NETWORK, text[-2000:]
    assert "MQTT network thread died (RuntimeError: injected fault)" in text


def _agent_toml(workdir: Path, device: str, key: str, broker_url: str, broker_extra: str = "") -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "agent.toml"
    conf.write_text(f'device_id = "{device}"\nstate_dir = "{workdir / "state"}"\ntrusted_keys = ["{key}"]\n'
                    f'[broker]\nurl = "{broker_url}"\n{broker_extra}\n')
    return conf


def test_agent_exits_when_its_network_thread_dies(tmp_path: Path, mosquitto: RunningBroker) -> None:
    conf = _agent_toml(tmp_path, "gw-sup", _hub_home(tmp_path, mosquitto).public_key(), mosquitto.url)
    log, trigger = tmp_path / "agent.log", tmp_path / "kill-loop"
    proc = _spawn(["-c", LAUNCHER, str(trigger), "agent", "run", "--config", str(conf)], log)
    wait_until(lambda: "agent gw-sup started" in log.read_text(), 30, "agent started")
    trigger.touch()
    code, text = _finish(proc, log)
    assert code == EXIT_NETWORK, text[-2000:]
    assert "agent: MQTT network thread died (RuntimeError: injected fault)" in text


def test_agent_exits_after_its_configured_limit_but_not_by_default(tmp_path: Path, mosquitto: RunningBroker) -> None:
    key = _hub_home(tmp_path, mosquitto).public_key()
    patient_log, strict_log = tmp_path / "patient.log", tmp_path / "strict.log"
    patient = _spawn(["-m", "edge_agent.cli", "run", "--config",
                      str(_agent_toml(tmp_path / "a", "gw-patient", key, mosquitto.url))], patient_log)
    strict = _spawn(["-m", "edge_agent.cli", "run", "--config",
                     str(_agent_toml(tmp_path / "b", "gw-strict", key, mosquitto.url, "max_disconnected_s = 1"))],
                    strict_log)
    try:
        for log in (patient_log, strict_log):
            wait_until(lambda log=log: "started" in log.read_text(), 30, "agents started")
        mosquitto.stop()
        code, text = _finish(strict, strict_log)
        assert code == EXIT_NETWORK, text[-2000:]
        assert "agent: no broker connection for" in text
        assert patient.poll() is None  # default: an agent rides out outages (it keeps scoring offline)
    finally:
        strict.kill()
        patient.terminate()
        assert patient.wait(30) == 0
