"""Firmware profiles parse, validate and resolve by name or path; the agent config names one and reads
its broker password from a systemd credential; event matching scores detections and false alarms."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import load_config
from shared.metrics import match_events, percentile
from shared.profiles import SHIPPED_DIR, load_profile, profile_names, resolve_profile
from shared.schema import SchemaError
from tests.conftest import REPO

SHIPPED = sorted(SHIPPED_DIR.glob("*.toml"))
KEY = "uBwEWAHtNxV2gmOgjrxU56VyoCw4hio+dYASbvl9E+g="


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_profiles_are_valid_and_resolve_by_name(path: Path) -> None:
    profile = load_profile(path)
    assert profile.name == path.stem and profile.max_model_bytes > 100_000
    assert resolve_profile(path.stem) == profile
    assert profile.latency_p99_ms <= 50 and profile.memory_budget_mb <= 1024 and profile.num_threads <= 4


def test_the_gateways_the_issue_names_are_shipped() -> None:
    names = set(profile_names())
    assert {"rpi3-32", "rpi4-64", "rpi5-64", "cm4-64", "jetson-nano-64", "x86-gateway"} <= names
    assert (REPO / "firmware_profiles" / "rpi4-64.toml").is_file()  # the old checkout path still works
    assert resolve_profile("rpi3-32").arch == "armv7l" and resolve_profile("rpi3-32").runtime == "tflite_runtime"


def test_operator_profiles_are_found_first_and_paths_are_relative_to_base(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rpi4-64.toml").write_text('name = "rpi4-64"\ndescription = "site"\narch = "aarch64"\n'
                                           "max_model_bytes = 2048\n")
    monkeypatch.setenv("EDGESENTRY_PROFILES", str(tmp_path))
    assert resolve_profile("rpi4-64").max_model_bytes == 2048
    assert resolve_profile("rpi4-64.toml", base=tmp_path).description == "site"
    with pytest.raises(SchemaError, match="no firmware profile named 'rpi9'.*rpi4-64"):
        resolve_profile("rpi9")


def _agent_toml(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "gw-1"\nstate_dir = "s"\ntrusted_keys = ["{KEY}"]\n{extra}\n')
    return path


def test_agent_config_names_a_profile_and_takes_its_threads(tmp_path: Path) -> None:
    cfg = load_config(_agent_toml(tmp_path, 'profile = "rpi4-64"'))
    assert cfg.profile == "rpi4-64" and cfg.detector.num_threads == resolve_profile("rpi4-64").num_threads
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "mine.toml").write_text('name = "mine"\ndescription = "d"\narch = "x86_64"\nnum_threads = 3\n')
    cfg = load_config(_agent_toml(tmp_path, 'profile = "p/mine.toml"'))
    assert cfg.profile == str(tmp_path / "p" / "mine.toml") and cfg.detector.num_threads == 3
    explicit = load_config(_agent_toml(tmp_path, 'profile = "p/mine.toml"\n[detector]\nnum_threads = 2'))
    assert explicit.detector.num_threads == 2  # an explicit setting wins over the profile
    assert load_config(_agent_toml(tmp_path, "")).detector.num_threads == 1
    with pytest.raises(SchemaError, match="no firmware profile named 'pi4'"):
        load_config(_agent_toml(tmp_path, 'profile = "pi4"'))


def test_broker_password_from_a_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = '[broker]\nurl = "mqtt://127.0.0.1:1883"\nusername = "gw-1"\npassword_credential = "broker-password"'
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SchemaError, match="broker: .*CREDENTIALS_DIRECTORY"):
        load_config(_agent_toml(tmp_path, text))
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(SchemaError, match="cannot read credential .*broker-password"):
        load_config(_agent_toml(tmp_path, text))
    (creds / "broker-password").write_text("s3cret\n")
    cfg = load_config(_agent_toml(tmp_path, text))
    assert cfg.broker.resolved_password() == "s3cret" and "s3cret" not in repr(cfg)


def test_profile_with_unknown_key_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('name = "x"\ndescription = "d"\narch = "aarch64"\ngpu = true\n')
    with pytest.raises(SchemaError, match="gpu"):
        load_profile(bad)


def test_profile_quantization_is_the_enum_and_refuses_unknown_modes(tmp_path: Path) -> None:
    from shared.inference import Quantization

    assert isinstance(resolve_profile("rpi4-64").quantization, Quantization)
    bad = tmp_path / "p.toml"
    bad.write_text('name = "x"\ndescription = "d"\narch = "aarch64"\nquantization = "int4"\n')
    with pytest.raises(SchemaError, match="quantization"):
        load_profile(bad)


def test_event_matching() -> None:
    spans = [("a", 10.0, 12.0), ("a", 30.0, 31.0), ("b", 10.0, 12.0)]
    events = [("a", 13.5), ("a", 20.0), ("b", 9.0), ("b", 11.0), ("c", 11.0)]
    m = match_events(events, spans, grace_s=2.0)
    assert m.detected == [True, False, True]
    assert m.false_alarms == 3 and m.events_in_spans == 2


def test_percentile() -> None:
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([0, 10], 99) == pytest.approx(9.9)
