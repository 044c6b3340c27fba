"""``cloud-hub workers``: the `serve` workers sharing this hub's database, which one leads, what each stored."""

from __future__ import annotations

import time

import click
from rich.table import Table

from cloud_hub.cli.common import console, home_of
from cloud_hub.db import queries

STALE_S = 10.0  # a worker refreshes its row every second; older than this, it is not running


@click.command("workers")
@click.pass_context
def workers(ctx: click.Context) -> None:
    """`serve` workers: running or not, leader, MQTT session, rows stored and duplicates since their start."""
    home = home_of(ctx)
    with home.sessions()() as s:
        rows = queries.workers(s)
    now = time.time()
    table = Table("worker", "running", "leader", "host", "pid", "MQTT session", "up", "stored", "duplicates")
    for w in rows:
        running = now - w.last_seen < STALE_S
        table.add_row(w.name, "yes" if running else f"no (last {now - w.last_seen:.0f} s ago)",
                      "yes" if w.leader and running else "-", w.host, str(w.pid), w.client_id,
                      f"{w.last_seen - w.started_at:.0f} s", str(w.stored), str(w.duplicates))
    console.print(table)
    if not rows:
        console.print("no worker has run yet (`cloud-hub serve`)")
