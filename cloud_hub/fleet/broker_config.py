"""``cloud-hub broker-config``: one secured Mosquitto for the fleet, and the hub's account on it."""

from __future__ import annotations

import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from cloud_hub import db
from cloud_hub.fleet import broker_files, passwords
from cloud_hub.fleet.devices import FleetError, regenerate
from cloud_hub.fleet.tls import TlsFiles, issue_server_cert
from cloud_hub.home import HubHome
from shared.protocol import valid_device_id

HUB_USER = "edgesentry-hub"
WORD = re.compile(r"[A-Za-z0-9_.:-]{1,253}")


@dataclass(frozen=True)
class BrokerSetup:
    conf: Path
    broker_dir: Path
    tls: TlsFiles
    hub_url: str
    agent_url: str
    hub_user: str
    created_ca: bool
    shared_with_broker_user: bool  # the run_as user can read the files (we could chown them)


def default_hosts() -> list[str]:
    """Names the server certificate covers unless the operator names them: this host, then loopback."""
    return list(dict.fromkeys([socket.getfqdn(), "localhost", "127.0.0.1"]))


def configure_broker(home: HubHome, out: Path, hosts: list[str], port: int = 8883, bind: str = "0.0.0.0",
                     own_tls: TlsFiles | None = None, hub_url: str = "", run_as: str = "mosquitto") -> BrokerSetup:
    """Write mosquitto.conf, TLS files, passwd and acl into ``out``; point hub.toml at it.

    The CA is created once and reused (agents keep trusting it); the server certificate is re-issued for
    ``hosts``.  ``hosts[0]`` is the name agents connect to.  An existing hub account is kept.
    """
    if not hosts:
        raise FleetError("name at least one --host the gateways use to reach the broker")
    for label, value in [("--run-as", run_as), ("--bind", bind), *(("--host", h) for h in hosts)]:
        if not WORD.fullmatch(value):  # these end up in mosquitto.conf and certificates verbatim
            raise FleetError(f"{label} {value!r}: expected a name or address without spaces")
    if not 0 < port < 65536:
        raise FleetError(f"--port {port} is not a TCP port")
    out = out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    created_ca = not (out / "ca.crt").exists()
    if own_tls is None:
        tls = issue_server_cert(out, hosts)
    else:
        for f in (own_tls.ca_cert, own_tls.cert, own_tls.key):
            if not f.is_file():
                raise FleetError(f"TLS file {f} does not exist")
        if own_tls.ca_cert.resolve() != (out / "ca.crt").resolve():
            shutil.copyfile(own_tls.ca_cert, out / "ca.crt")  # what `devices add` hands to gateways
        tls = TlsFiles(out / "ca.crt", own_tls.cert.resolve(), own_tls.key.resolve())
        created_ca = False
    agent_url = f"mqtts://{hosts[0]}:{port}"
    cfg = home.config()
    user = cfg.broker.username or HUB_USER
    if not valid_device_id(user):
        raise FleetError(f"hub broker username {user!r} must be 1-64 of [A-Za-z0-9_.-]")
    with home.sessions()() as s:
        clash = s.get(db.Device, user)
        if clash is not None and clash.provisioned_at is not None and clash.revoked_at is None:
            raise FleetError(f"a provisioned device is called {user!r}, the hub's broker username; "
                             f"set another [broker] username in hub.toml")
    password = cfg.broker.password or passwords.new_password()
    home.update_config({
        "broker": {"url": hub_url or agent_url, "username": user, "password": password, "ca_file": str(tls.ca_cert),
                   # `serve`'s persistent session: unguessable, so no device can take it over (see docs).
                   "client_id": cfg.broker.client_id or passwords.client_id(HUB_USER)},
        "fleet": {"broker_dir": str(out), "agent_broker_url": agent_url},
    })
    broker = regenerate(home)
    conf = broker_files.write_conf(broker, tls, port, bind, run_as)
    shared = broker_files.share_with(broker, run_as, tls.key)
    return BrokerSetup(conf, out, tls, hub_url or agent_url, agent_url, user, created_ca, shared)
