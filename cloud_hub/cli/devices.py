"""``cloud-hub devices``: provision, revoke, list and inspect gateways."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich import box
from rich.table import Column, Table

from cloud_hub import db
from cloud_hub.cli.common import console, home_of
from cloud_hub.db import queries
from cloud_hub.fleet import broker_files
from cloud_hub.fleet import devices as fleet


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 else f"{s / 3600:.1f} h ago"


def _access(d: db.Device) -> str:
    if d.revoked_at is not None:
        return "revoked"
    return "ok" if d.provisioned_at is not None else "none"


def _tags(d: db.Device) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((d.tags or {}).items()))


def _bytes(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} kB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def _outbox(depth: int, nbytes: int, dropped: dict[str, int] | None = None) -> str:
    """The agent's outbox as its heartbeat reported it: reports waiting for the hub's acknowledgement
    (and, for the device list, how many it dropped in all because it was full)."""
    lost = sum((dropped or {}).values())
    return f"{depth} ({_bytes(nbytes)})" + (f", {lost} dropped" if lost else "")


def _drops(dropped: dict[str, int] | None) -> str:
    """Reports the agent dropped because its outbox was full, by kind (lowest priority first)."""
    order = ("sync", "telemetry", "status", "anomaly")
    items = sorted((dropped or {}).items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    return ", ".join(f"{k} {n}" for k, n in items if n) or "0"


def reload_broker(pid: int | None, broker_dir: Path) -> None:
    if pid is None:
        console.print(f"Broker files regenerated in {broker_dir}; reload Mosquitto to apply: "
                      f"[bold]kill -HUP <mosquitto pid>[/] (or pass --reload-pid)")
        return
    try:
        broker_files.reload(pid)
    except (ProcessLookupError, PermissionError) as exc:
        raise click.ClickException(f"could not signal Mosquitto: {exc}") from None
    console.print(f"Broker files regenerated in {broker_dir}; sent SIGHUP to Mosquitto (pid {pid})")


RELOAD_OPTION = click.option("--reload-pid", type=int, help="Send SIGHUP to this Mosquitto process afterwards.")


@click.group(invoke_without_command=True)
@click.pass_context
def devices(ctx: click.Context) -> None:
    """Provisioned and seen devices (`devices` alone lists them)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd)


@devices.command("list")
@click.pass_context
def list_cmd(ctx: click.Context) -> None:
    """Every device: access, online, last seen, model, outbox (waiting reports, drops), profile, group, tags."""
    home = home_of(ctx)
    table = Table(Column("device", no_wrap=True), "access", "online", "last seen", "model", "outbox",
                  "profile", Column("group", no_wrap=True), "tags", box=box.SIMPLE_HEAD)
    with home.sessions()() as s:
        rows = queries.devices(s)
    for d in rows:
        model = f"v{d.model_version} {d.model_state}" if d.model_version else d.model_state
        table.add_row(d.device_id, _access(d), "yes" if d.online else "no", _ago(d.last_seen), model,
                      _outbox(d.outbox_depth, d.outbox_bytes, d.outbox_dropped),
                      d.profile or "-", d.group or "-", _tags(d) or "-")
    console.print(table)


@devices.command("show")
@click.argument("name")
@click.pass_context
def show(ctx: click.Context, name: str) -> None:
    """One device in detail, with its most recent heartbeats."""
    home = home_of(ctx)
    with home.sessions()() as s:
        detail = queries.device_detail(s, name)
    if detail is None:
        raise click.ClickException(f"unknown device {name!r} (see `cloud-hub devices list`)")
    d = detail.device
    info = Table(show_header=False, box=None)
    for key, value in (
        ("device", d.device_id), ("access", _access(d)), ("online", "yes" if d.online else "no"),
        ("last seen", _ago(d.last_seen)), ("model", f"v{d.model_version}" if d.model_version else "-"),
        ("model state", d.model_state), ("agent", d.agent_version or "-"), ("runtime", d.runtime or "-"),
        ("readings scored", str(d.readings_scored)),
        ("outbox", f"{_outbox(d.outbox_depth, d.outbox_bytes)} reports waiting for the hub's acknowledgement"),
        ("outbox drops", _drops(d.outbox_dropped)), ("profile", d.profile or "-"), ("group", d.group or "-"),
        ("tags", _tags(d) or "-"), ("provisioned", _ago(d.provisioned_at or 0.0)),
        ("revoked", _ago(d.revoked_at) if d.revoked_at else "-"), ("last error", d.last_error or "-"),
    ):
        info.add_row(f"[bold]{key}[/]", value)
    console.print(info)
    if detail.heartbeats:
        beats = Table("received", "seq", "model", "received readings", "scored", "anomalies", "rejected", "queue",
                      "outbox", "dropped", title="recent heartbeats")
        for h in detail.heartbeats:
            beats.add_row(_ago(h.received_at), str(h.seq), f"v{h.model_version}" if h.model_version else "-",
                          str(h.readings_received), str(h.readings_scored), str(h.anomalies), str(h.rejected),
                          str(h.queue_depth), _outbox(h.outbox_depth, h.outbox_bytes), _drops(h.outbox_dropped))
        console.print(beats)


@devices.command("add")
@click.argument("name")
@click.option("--profile", default="", help="Firmware profile name (firmware_profiles/NAME.toml) or path.")
@click.option("--group", default="", help="Group for rollout targeting.")
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Tag for rollout targeting (repeatable).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write agent.toml (+ ca.crt, profile.toml); default <home>/devices/NAME.")
@click.option("--rotate", is_flag=True, help="Issue a new password for an already provisioned device.")
@RELOAD_OPTION
@click.pass_context
def add(ctx: click.Context, name: str, profile: str, group: str, tags: tuple[str, ...], out_dir: Path | None,
        rotate: bool, reload_pid: int | None) -> None:
    """Provision a device: random broker password (stored hashed), agent.toml, broker passwd + acl."""
    home = home_of(ctx)
    try:
        p = fleet.add_device(home, name, profile, group, fleet.parse_tags(tags), out_dir, rotate)
    except fleet.FleetError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"{'Rotated' if rotate else 'Provisioned'} [bold]{name}[/]: copy [bold]{p.agent_toml.parent}[/] "
                  f"(agent.toml{', ca.crt' if p.ca_file else ''}) to the gateway, e.g. /etc/edgesentry/")
    if not p.ca_file:
        console.print("[yellow]No TLS: run `cloud-hub broker-config --out DIR` for a secured broker.[/]")
    reload_broker(reload_pid, p.broker_dir)


@devices.command("remove")
@click.argument("name")
@RELOAD_OPTION
@click.pass_context
def remove(ctx: click.Context, name: str, reload_pid: int | None) -> None:
    """Revoke a device's broker credentials (its history stays in the database)."""
    home = home_of(ctx)
    try:
        broker = fleet.remove_device(home, name)
    except fleet.FleetError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"Revoked [bold]{name}[/].")
    reload_broker(reload_pid, broker.path)
