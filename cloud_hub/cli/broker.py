"""``cloud-hub broker-config``: a production Mosquitto configuration for the fleet."""

from __future__ import annotations

from pathlib import Path

import click

from cloud_hub.cli.common import console, home_of
from cloud_hub.cli.devices import RELOAD_OPTION, reload_broker
from cloud_hub.fleet.broker_config import configure_broker, default_hosts
from cloud_hub.fleet.devices import FleetError
from cloud_hub.fleet.tls import TlsFiles

PATH = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("broker-config")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for mosquitto.conf, passwd, acl, TLS files and persistence.")
@click.option("--host", "hosts", multiple=True, help="Name or IP gateways use to reach the broker (repeatable; "
              "the first goes into agent.toml; all go into the server certificate). Default: this host's "
              "FQDN, localhost, 127.0.0.1.")
@click.option("--port", type=int, default=8883, show_default=True, help="TLS listener port.")
@click.option("--bind", default="0.0.0.0", show_default=True, help="Address the listener binds.")
@click.option("--cert", type=PATH, help="Your own server certificate (with --key and --ca) instead of the hub's CA.")
@click.option("--key", type=PATH, help="Private key of --cert.")
@click.option("--ca", type=PATH, help="CA certificate that signed --cert (copied to gateways).")
@click.option("--hub-url", default="", help="URL the hub itself connects to (default mqtts://FIRST-HOST:PORT).")
@click.option("--run-as", default="mosquitto", show_default=True,
              help="User Mosquitto drops to when started as root (`user` in mosquitto.conf).")
@RELOAD_OPTION
@click.pass_context
def broker_config(ctx: click.Context, out: Path, hosts: tuple[str, ...], port: int, bind: str, cert: Path | None,
                  key: Path | None, ca: Path | None, hub_url: str, run_as: str, reload_pid: int | None) -> None:
    """Write a TLS-only, authenticated Mosquitto config with per-device ACLs; give the hub its account."""
    home = home_of(ctx)
    given = [p for p in (cert, key, ca) if p is not None]
    if given and len(given) != 3:
        raise click.UsageError("--cert, --key and --ca go together")
    own = TlsFiles(ca, cert, key) if cert and key and ca else None
    try:
        setup = configure_broker(home, out, list(hosts) or default_hosts(), port, bind, own, hub_url, run_as)
    except (FleetError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"Wrote [bold]{setup.conf}[/] (TLS on {bind}:{port}, passwords, per-device ACL, persistence "
                  f"in {setup.broker_dir / 'data'})")
    if setup.created_ca:
        console.print(f"Created a CA: {setup.tls.ca_cert} (goes to every gateway; keep ca.key private)")
    console.print(f"hub.toml now connects to {setup.hub_url} as [bold]{setup.hub_user}[/]; agents get {setup.agent_url}")
    console.print(f"Run it:  [bold]mosquitto -c {setup.conf}[/]  (systemd: `systemctl edit mosquitto`, "
                  f"ExecStart=/usr/sbin/mosquitto -c {setup.conf})")
    if not setup.shared_with_broker_user:
        console.print(f"[yellow]Could not hand the files to user {run_as!r}: as root run "
                      f"`chgrp {run_as} {setup.broker_dir} && chmod 2750 {setup.broker_dir}` and "
                      f"`chown {run_as} {setup.broker_dir / 'data'}`, or rerun this command as root.[/]")
    console.print("After `cloud-hub devices add/remove`, reload it: [bold]systemctl reload mosquitto[/] or "
                  "[bold]kill -HUP <pid>[/] (or pass --reload-pid to those commands)")
    if reload_pid is not None:
        reload_broker(reload_pid, setup.broker_dir)
