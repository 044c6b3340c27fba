"""Typed configuration: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import CsvSource, MqttSource, load_config, reference
from shared.schema import SchemaError

KEY = "uBwEWAHtNxV2gmOgjrxU56VyoCw4hio+dYASbvl9E+g="


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_full_config_loads_with_relative_paths(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, f"""
device_id = "gw-1"
state_dir = "state"
trusted_keys = ["{KEY}"]
[broker]
url = "mqtt://10.0.0.1:1883"
[[sources]]
type = "mqtt"
[[sources]]
type = "csv"
path = "data.csv"
rate_hz = 5
[detector]
threshold_scale = 1.2
"""))
    assert cfg.state_dir == tmp_path / "state"
    assert isinstance(cfg.sources[0], MqttSource) and isinstance(cfg.sources[1], CsvSource)
    assert cfg.sources[1].path == tmp_path / "data.csv" and cfg.detector.threshold_scale == 1.2


@pytest.mark.parametrize(
    ("snippet", "where"),
    [
        ('colour = "blue"', "unknown key"),
        ("[detector]\nthreshold = 3", "detector: unknown key"),
        ('[broker]\nurl = "http://x"', "broker url"),
        ("heartbeat_s = \"often\"", "heartbeat_s"),
        ("[detector]\nthreshold_scale = -1", "threshold_scale"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path: Path, snippet: str, where: str) -> None:
    text = f'device_id = "gw-1"\nstate_dir = "s"\ntrusted_keys = ["{KEY}"]\n{snippet}\n'
    with pytest.raises(SchemaError, match=where):
        load_config(_write(tmp_path, text))


def test_device_id_must_be_topic_safe(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="device_id"):
        load_config(_write(tmp_path, f'device_id = "gw/1"\nstate_dir = "s"\ntrusted_keys = ["{KEY}"]\n'))


def test_every_option_is_described() -> None:
    rows = [r for r in reference().splitlines()[2:]]
    assert len(rows) > 20
    assert all(not r.rstrip().endswith("|  |") for r in rows), [r for r in rows if r.rstrip().endswith("|  |")]
