"""Provisioning: devices, their credentials and the agent.toml each gateway gets.

The hub database is the one record of who may connect (``db.Device.password_hash``, ``revoked_at``);
every change regenerates the broker's ``passwd``/``acl`` from it.  Plain passwords exist only in the
agent.toml written for the gateway and in hub.toml for the hub's own account.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import tomli_w
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub import db
from cloud_hub.config import HubConfig
from cloud_hub.fleet import broker_files, passwords
from cloud_hub.home import HubHome
from shared.mqtt import parse_url
from shared.profiles import FirmwareProfile, load_profile, profile_path
from shared.protocol import valid_device_id
from shared.schema import SchemaError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class FleetError(ValueError):
    """An operator mistake (unknown device, duplicate name, bad tag); the message says what to do."""


@dataclass(frozen=True)
class Provisioned:
    device_id: str
    password: str
    agent_toml: Path
    ca_file: Path | None
    broker_dir: Path


def parse_tags(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``K=V`` strings → tags; keys and values are short identifiers (they end up in rollout filters)."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not NAME_RE.match(key) or not NAME_RE.match(value):
            raise FleetError(f"tag {item!r}: expected KEY=VALUE, each 1-64 of [A-Za-z0-9_.-]")
        tags[key] = value
    return tags


def _check_label(kind: str, value: str) -> None:
    if value and not NAME_RE.match(value):
        raise FleetError(f"{kind} {value!r}: use 1-64 of [A-Za-z0-9_.-]")


def find_profile(name_or_path: str) -> tuple[Path, FirmwareProfile]:
    """A firmware profile by name or path (the agent's resolver, :func:`shared.profiles.profile_path`)."""
    try:
        path = profile_path(name_or_path)
        return path, load_profile(path)
    except SchemaError as exc:
        raise FleetError(f"firmware profile: {exc.message}") from None


def active_devices(s: Session) -> list[db.Device]:
    """Provisioned devices whose credentials are valid, by id."""
    return list(s.scalars(select(db.Device).where(db.Device.provisioned_at.is_not(None),
                                                  db.Device.revoked_at.is_(None))
                          .order_by(db.Device.device_id)))


def broker_accounts(s: Session, cfg: HubConfig) -> list[tuple[str, str]]:
    """(username, $7$ hash) for the hub account (if configured) and every active device."""
    accounts = [(cfg.broker.username, passwords.mosquitto_hash(cfg.broker.password))] if cfg.broker.username else []
    return accounts + [(d.device_id, d.password_hash) for d in active_devices(s)]


def regenerate(home: HubHome) -> broker_files.BrokerDir:
    """Rewrite the broker's passwd and acl from the database (reload Mosquitto afterwards)."""
    cfg = home.config()
    broker = broker_files.BrokerDir(home.broker_dir)
    with home.sessions()() as s:
        accounts = broker_accounts(s, cfg)
    try:
        broker_files.write_access_files(broker, accounts, cfg.broker.username)
    except OSError as exc:
        raise FleetError(f"the database is updated but the broker files in {broker.path} could not be "
                         f"written ({exc}); fix that and run any `cloud-hub devices add/remove` or "
                         f"`broker-config` again") from None
    return broker


def agent_toml_text(cfg: HubConfig, device: str, password: str, client_id: str, public_key: str,
                    profile_file: str, ca_name: str | None) -> str:
    """The gateway's config; ``profile_file`` and ``ca_name`` are files placed next to it (relative paths)."""
    from_hub = {"url": cfg.fleet.agent_broker_url or cfg.broker.url, "username": device, "password": password,
                "client_id": client_id}
    if ca_name:
        from_hub["ca_file"] = ca_name  # relative: the agent resolves it next to agent.toml
    top: dict[str, object] = {"device_id": device, "state_dir": cfg.fleet.agent_state_dir,
                              "trusted_keys": [public_key]}
    if profile_file:
        top["profile"] = profile_file
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# edge-agent configuration for {device}, written by `cloud-hub devices add` ({stamp}).\n"
              f"# Copy this directory to the gateway (e.g. /etc/edgesentry/); it holds the device's broker\n"
              f"# password, so keep it readable only by the agent's user. Add [[sources]] as needed.\n")
    return header + tomli_w.dumps({**top, "broker": from_hub})


def add_device(home: HubHome, name: str, profile: str = "", group: str = "", tags: dict[str, str] | None = None,
               out_dir: Path | None = None, rotate: bool = False) -> Provisioned:
    """Provision ``name`` (or give it a new password with ``rotate``), write its agent.toml, regenerate
    the broker's files."""
    cfg = home.config()
    if not valid_device_id(name):
        raise FleetError(f"device id {name!r} must be 1-64 of [A-Za-z0-9_.-] and not 'fleet'")
    if name == cfg.broker.username:
        raise FleetError(f"{name!r} is the hub's own broker account")
    _check_label("group", group)
    profile_file = find_profile(profile) if profile else None
    if profile_file:
        profile = profile_file[1].name
    password = passwords.new_password()
    now = time.time()
    with home.sessions()() as s:
        dev = s.get(db.Device, name)
        if dev is not None and dev.provisioned_at is not None and dev.revoked_at is None and not rotate:
            raise FleetError(f"{name} is already provisioned: `devices add {name} --rotate` issues a new "
                             f"password, `devices remove {name}` revokes it")
        if dev is None:
            dev = db.Device(device_id=name, first_seen=0.0, last_seen=0.0, online=False)
            s.add(dev)
        elif rotate and (dev.provisioned_at is None or dev.revoked_at is not None):
            raise FleetError(f"{name} is not provisioned: add it without --rotate")
        if rotate and not profile_file and dev.profile:
            profile_file = find_profile(dev.profile)
        if not rotate or profile:
            dev.profile = profile
        if not rotate or group:
            dev.group = group
        if not rotate or tags:
            dev.tags = dict(tags or {})
        dev.password_hash = passwords.mosquitto_hash(password)
        dev.mqtt_client_id = dev.mqtt_client_id or passwords.client_id(f"edge-{name}")  # kept on rotation
        dev.provisioned_at, dev.revoked_at = now, None
        # The gateway's files first: if they cannot be written, nothing is committed.
        toml, ca_copy = _write_agent_files(home, cfg, name, password, dev.mqtt_client_id,
                                           out_dir or home.path / "devices" / name,
                                           profile_file[0] if profile_file else None)
        s.commit()
    broker = regenerate(home)
    return Provisioned(name, password, toml, ca_copy, broker.path)


def _write_agent_files(home: HubHome, cfg: HubConfig, name: str, password: str, client_id: str, out: Path,
                       profile: Path | None) -> tuple[Path, Path | None]:
    """agent.toml (0600: it holds the password), plus ca.crt and profile.toml beside it when needed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        ca = home.broker_dir / "ca.crt"
        ca_copy: Path | None = None
        if parse_url(cfg.fleet.agent_broker_url or cfg.broker.url)[2] and ca.is_file():
            ca_copy = out / "ca.crt"
            shutil.copyfile(ca, ca_copy)
        profile_copy: Path | None = None
        if profile:
            profile_copy = out / "profile.toml"  # the agent checks each new model against its budgets
            shutil.copyfile(profile, profile_copy)
        toml = out / "agent.toml"
        fd = os.open(toml, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(agent_toml_text(cfg, name, password, client_id, home.public_key(),
                                     profile_copy.name if profile_copy else "", ca_copy.name if ca_copy else None))
    except OSError as exc:
        raise FleetError(f"cannot write the agent files for {name} in {out}: {exc}") from None
    return toml, ca_copy


def remove_device(home: HubHome, name: str) -> broker_files.BrokerDir:
    """Revoke ``name``: its hash is dropped and it disappears from passwd/acl (history is kept)."""
    with home.sessions()() as s:
        dev = s.get(db.Device, name)
        if dev is None or dev.provisioned_at is None or dev.revoked_at is not None:
            raise FleetError(f"{name} is not a provisioned device (see `cloud-hub devices list`)")
        dev.revoked_at, dev.password_hash = time.time(), ""
        s.commit()
    default_toml = home.path / "devices" / name / "agent.toml"
    default_toml.unlink(missing_ok=True)  # its password no longer works; don't leave it lying around
    return regenerate(home)
