"""Provisioning without a broker: password hashes, generated broker files, agent.toml, the devices CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from cloud_hub import db
from cloud_hub.cli import main
from cloud_hub.fleet import broker_files, passwords
from cloud_hub.fleet import devices as fleet
from cloud_hub.home import HubHome
from edge_agent.config import load_config
from shared.profiles import load_profile

# Written by Mosquitto's own `mosquitto_passwd -b pwfile alice secret` (2.0.11).
MOSQUITTO_PASSWD_LINE = ("alice:$7$101$3qj2dBNRJhDHPapW$Myb7XHo6h1J4MuUgNXUY2E5C7kB/jZ8NQi7iHyKrLBN3NlaUGbMBXUK815GG"
                         "SePBK+GpHPr1MMVpY20mcW7bLw==")


def test_password_hash_matches_mosquitto_passwd() -> None:
    user, hashed = MOSQUITTO_PASSWD_LINE.split(":", 1)
    assert passwords.verify("secret", hashed) and not passwords.verify("Secret", hashed)
    salt = __import__("base64").b64decode(hashed.split("$")[3])
    assert passwords.mosquitto_hash("secret", salt=salt) == hashed  # byte-identical to Mosquitto's tool
    mine = passwords.mosquitto_hash("pw")
    assert mine.startswith("$7$101$") and passwords.verify("pw", mine) and mine != passwords.mosquitto_hash("pw")
    with pytest.raises(passwords.PasswordHashError):
        passwords.verify("x", "$6$rounds$plainsha")
    assert len(passwords.new_password()) >= 43 and passwords.new_password() != passwords.new_password()


def test_acl_confines_each_device_to_its_tree() -> None:
    text = broker_files.acl_text("edgesentry-hub", ["gw-a"])
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == ["user edgesentry-hub", "topic readwrite edgesentry/#",
                     "user gw-a", "topic readwrite edgesentry/gw-a/#", "topic read edgesentry/fleet/model"]
    for bad in ("fleet", "a/b", "a#", "a b", ""):
        with pytest.raises(ValueError):
            broker_files.acl_text("hub", [bad])
    with pytest.raises(ValueError):
        broker_files.password_file_text([("x:y", "$7$1$a$b")])


def _cli(home: Path, *args: str, ok: bool = True) -> Result:
    out = CliRunner().invoke(main, ["--home", str(home), *args])
    assert (out.exit_code == 0) == ok, out.output
    return out


@pytest.fixture
def hub(tmp_path: Path) -> HubHome:
    home = HubHome(tmp_path / "hub")
    home.init()
    return home


def test_broker_config_writes_a_secured_mosquitto_conf(hub: HubHome, tmp_path: Path) -> None:
    out = tmp_path / "broker"
    _cli(hub.path, "broker-config", "--out", str(out), "--host", "hub.example.com", "--host", "10.0.0.5",
         "--port", "8884")
    conf = (out / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", f"password_file {out / 'passwd'}", f"acl_file {out / 'acl'}",
                 "listener 8884 0.0.0.0", f"cafile {out / 'ca.crt'}", "persistence true",
                 f"persistence_location {out / 'data'}/", "message_size_limit 262144", "max_queued_messages 100000",
                 "user mosquitto"):
        assert f"\n{line}\n" in conf, line
    assert "allow_anonymous true" not in conf
    cert = x509.load_pem_x509_certificate((out / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["hub.example.com"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    # The CA key is private; the server key is readable by Mosquitto's group at most, never by others.
    assert (out / "ca.key").stat().st_mode & 0o077 == 0 and (out / "server.key").stat().st_mode & 0o007 == 0

    cfg = hub.config()  # hub.toml now holds the hub's account and still loads
    assert cfg.broker.url == "mqtts://hub.example.com:8884" and cfg.broker.username == "edgesentry-hub"
    assert cfg.broker.ca_file == str(out / "ca.crt") and len(cfg.broker.password) >= 43
    assert cfg.fleet.broker_dir == str(out) and hub.config_path.stat().st_mode & 0o077 == 0
    assert cfg.broker.client_id.startswith("edgesentry-hub-")  # serve's session id cannot be guessed
    user, hashed = (out / "passwd").read_text().strip().split(":", 1)
    assert user == "edgesentry-hub" and passwords.verify(cfg.broker.password, hashed)

    # Running it again (new host) keeps the CA gateways trust and the hub's password.
    ca = (out / "ca.crt").read_bytes()
    _cli(hub.path, "broker-config", "--out", str(out), "--host", "broker.example.com")
    assert (out / "ca.crt").read_bytes() == ca and hub.config().broker.password == cfg.broker.password
    assert hub.config().broker.client_id == cfg.broker.client_id

    assert "go together" in _cli(hub.path, "broker-config", "--out", str(out), "--cert", str(out / "server.crt"),
                                 ok=False).output
    assert "without spaces" in _cli(hub.path, "broker-config", "--out", str(out), "--host", "a b", ok=False).output
    assert "without spaces" in _cli(hub.path, "broker-config", "--out", str(out), "--run-as", "x\nuser root",
                                    ok=False).output


def test_operator_certificates_are_used_as_given(hub: HubHome, tmp_path: Path) -> None:
    from cloud_hub.fleet.tls import issue_server_cert

    own = issue_server_cert(tmp_path / "pki", ["mqtt.corp"])
    out = tmp_path / "broker"
    _cli(hub.path, "broker-config", "--out", str(out), "--host", "mqtt.corp", "--cert", str(own.cert),
         "--key", str(own.key), "--ca", str(own.ca_cert))
    conf = (out / "mosquitto.conf").read_text()
    assert f"certfile {own.cert}" in conf and f"keyfile {own.key}" in conf
    assert (out / "ca.crt").read_bytes() == own.ca_cert.read_bytes() and not (out / "ca.key").exists()


def test_devices_add_list_show_remove(hub: HubHome, tmp_path: Path) -> None:
    broker = tmp_path / "broker"
    _cli(hub.path, "broker-config", "--out", str(broker), "--host", "hub.example.com")
    out = _cli(hub.path, "devices", "add", "gw-1", "--profile", "rpi4-64", "--group", "plant-a",
               "--tag", "site=lyon", "--tag", "line=3")
    assert "Provisioned gw-1" in out.output and "kill -HUP" in out.output
    agent_dir = hub.path / "devices" / "gw-1"
    raw = tomllib.loads((agent_dir / "agent.toml").read_text())
    assert raw["device_id"] == "gw-1" and raw["trusted_keys"] == [hub.public_key()]
    assert raw["broker"]["url"] == "mqtts://hub.example.com:8883" and raw["broker"]["username"] == "gw-1"
    assert raw["broker"]["ca_file"] == "ca.crt" and raw["profile"] == "profile.toml"
    assert raw["broker"]["client_id"].startswith("edge-gw-1-") and len(raw["broker"]["client_id"]) == 26
    assert (agent_dir / "ca.crt").read_bytes() == (broker / "ca.crt").read_bytes()
    assert load_profile(agent_dir / "profile.toml").name == "rpi4-64"
    assert (agent_dir / "agent.toml").stat().st_mode & 0o077 == 0  # it holds the password

    with hub.sessions()() as s:
        dev = s.get(db.Device, "gw-1")
        assert dev is not None and (dev.profile, dev.group, dev.tags) == ("rpi4-64", "plant-a", {"site": "lyon", "line": "3"})
        assert passwords.verify(raw["broker"]["password"], dev.password_hash) and dev.revoked_at is None
    passwd = (broker / "passwd").read_text()
    assert raw["broker"]["password"] not in passwd and "\ngw-1:$7$" in passwd
    assert "user gw-1\ntopic readwrite edgesentry/gw-1/#" in (broker / "acl").read_text()

    # Without a profile the agent.toml is exactly what edge-agent loads (ca_file resolved beside it).
    _cli(hub.path, "devices", "add", "gw-2", "--out", str(tmp_path / "gw2"))
    agent_cfg = load_config(tmp_path / "gw2" / "agent.toml")
    assert agent_cfg.device_id == "gw-2" and agent_cfg.broker.ca_file == str(tmp_path / "gw2" / "ca.crt")

    listing = _cli(hub.path, "devices").output  # bare `devices` lists
    assert "gw-1" in listing and "plant-a" in listing and "never" in listing
    assert listing == _cli(hub.path, "devices", "list").output
    shown = _cli(hub.path, "devices", "show", "gw-1").output
    assert "line=3, site=lyon" in shown and "rpi4-64" in shown

    # Operator mistakes: clear errors, nothing changed.
    assert "already provisioned" in _cli(hub.path, "devices", "add", "gw-1", ok=False).output
    assert "must be 1-64" in _cli(hub.path, "devices", "add", "gw/evil", ok=False).output
    assert "must be 1-64" in _cli(hub.path, "devices", "add", "fleet", ok=False).output
    assert "hub's own broker account" in _cli(hub.path, "devices", "add", "edgesentry-hub", ok=False).output
    assert "KEY=VALUE" in _cli(hub.path, "devices", "add", "gw-3", "--tag", "novalue", ok=False).output
    assert "no firmware profile" in _cli(hub.path, "devices", "add", "gw-3", "--profile", "nope", ok=False).output
    assert "unknown device" in _cli(hub.path, "devices", "show", "gw-9", ok=False).output
    assert "gw-3" not in (broker / "passwd").read_text()

    # Rotation: a new password, the old one stops matching; profile/group/tags are kept.
    old_hash = (broker / "passwd").read_text()
    _cli(hub.path, "devices", "add", "gw-1", "--rotate")
    new = tomllib.loads((agent_dir / "agent.toml").read_text())["broker"]["password"]
    with hub.sessions()() as s:
        dev = s.get(db.Device, "gw-1")
        assert dev is not None and passwords.verify(new, dev.password_hash)
        assert not passwords.verify(raw["broker"]["password"], dev.password_hash) and dev.group == "plant-a"
    # The persistent session's id is kept, so the broker's queue for it is not orphaned.
    assert tomllib.loads((agent_dir / "agent.toml").read_text())["broker"]["client_id"] == raw["broker"]["client_id"]
    assert (broker / "passwd").read_text() != old_hash

    out = _cli(hub.path, "devices", "remove", "gw-1")
    assert "Revoked gw-1" in out.output and not (agent_dir / "agent.toml").exists()
    assert "gw-1" not in (broker / "passwd").read_text() and "gw-1" not in (broker / "acl").read_text()
    assert "gw-2" in (broker / "acl").read_text()
    assert "not a provisioned device" in _cli(hub.path, "devices", "remove", "gw-1", ok=False).output
    with hub.sessions()() as s:
        assert [d.device_id for d in fleet.active_devices(s)] == ["gw-2"]
    # A revoked device can be provisioned again, with a fresh password.
    _cli(hub.path, "devices", "add", "gw-1")
    assert "\ngw-1:$7$" in (broker / "passwd").read_text()


def test_devices_need_an_initialised_hub(tmp_path: Path) -> None:
    assert "cloud-hub init" in _cli(tmp_path / "nohub", "devices", "add", "gw-1", ok=False).output
    assert "cloud-hub init" in _cli(tmp_path / "nohub", "devices", ok=False).output


def test_unwritable_output_provisions_nothing(hub: HubHome, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = _cli(hub.path, "devices", "add", "gw-1", "--out", str(blocker / "sub"), ok=False)
    assert "cannot write the agent files" in out.output
    with hub.sessions()() as s:
        assert s.get(db.Device, "gw-1") is None
    _cli(hub.path, "devices", "add", "gw-1")  # and the name is still free
