"""``cloud-hub models``: the detector catalogue, and the registry of trained versions (lineage, champions)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich.table import Table

from cloud_hub.cli.common import console, home_of
from cloud_hub.registry import champion as reg_champion
from cloud_hub.registry import lineage


@click.group(invoke_without_command=True)
@click.pass_context
def models(ctx: click.Context) -> None:
    """Detectors the hub can train (`models` alone) and trained versions (`models list/show/diff/promote`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(kinds)


@models.command()
def kinds() -> None:
    """Every detector the hub can train: modes and export support."""
    from cloud_hub.models import MODELS

    table = Table("name", "modes", "TFLite export", "what it is")
    for name, cls in MODELS.items():
        table.add_row(name, ", ".join(m.value for m in cls.modes), ", ".join(cls.quantizations) or "hub only",
                      cls.summary)
    console.print(table)
    console.print("Trained versions: `cloud-hub models list`")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return str(value)


def _date(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _group(g: str) -> str:
    return g or "(fleet)"


@models.command("list")
@click.option("--group", help="Only versions trained for this device group ('' = the fleet default).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
@click.pass_context
def list_cmd(ctx: click.Context, group: str | None, as_json: bool) -> None:
    """Trained versions, newest first: data, parent, held-out flag rate, bundles, champion of which group."""
    home = home_of(ctx)
    with home.sessions()() as s:
        views = lineage.versions(s, group)
        if as_json:
            for v in views:
                click.echo(json.dumps(lineage.flatten(v), default=str))
            return
        table = Table("version", "model", "created (UTC)", "group", "parent", "trained on", "rows",
                      "held-out flag rate", "bundles", "champion of")
        for v in views:
            lin = v.lineage
            data = lin.data if lin else {}
            hold = (lin.metrics or {}).get("holdout", {}) if lin else {}
            where = ", ".join(data.get("devices") or []) or str(data.get("source", v.version.source))
            table.add_row(f"v{v.version.version}", v.version.name, v.version.created_at.strftime("%Y-%m-%d %H:%M"),
                          _group(lin.device_group) if lin else "-",
                          f"v{lin.parent_version}" if lin and lin.parent_version else "-", where,
                          _fmt(data.get("training_rows", data.get("rows"))), _fmt(hold.get("flag_rate")),
                          ", ".join(b.quantization + (f"@{b.profile}" if b.profile else "") for b in v.bundles) or "-",
                          ", ".join(_group(g) for g in v.champion_of) or "")
    console.print(table)


@models.command("show")
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True, help="The flat key → value mapping as JSON.")
@click.pass_context
def show(ctx: click.Context, version: int, as_json: bool) -> None:
    """One version's lineage: training data, settings, parent, metrics, bundles."""
    home = home_of(ctx)
    with home.sessions()() as s:
        try:
            view = lineage.version(s, version)
        except lineage.UnknownVersion as exc:
            raise click.ClickException(str(exc)) from None
        flat = lineage.flatten(view)
    if as_json:
        click.echo(json.dumps(flat, indent=2, default=str))
        return
    table = Table("key", "value", title=f"model v{version}")
    for k, v in flat.items():
        if k.endswith("_ts") and isinstance(v, float):
            v = f"{_date(v)} ({v:.0f})"
        table.add_row(k, _fmt(v))
    console.print(table)


@models.command("diff")
@click.argument("a", type=int)
@click.argument("b", type=int)
@click.pass_context
def diff_cmd(ctx: click.Context, a: int, b: int) -> None:
    """What differs between versions A and B: data, settings, parent, metrics, bundles."""
    home = home_of(ctx)
    with home.sessions()() as s:
        try:
            rows = lineage.diff(lineage.version(s, a), lineage.version(s, b))
        except lineage.UnknownVersion as exc:
            raise click.ClickException(str(exc)) from None
    table = Table("key", f"v{a}", f"v{b}")
    for key, va, vb in rows:
        table.add_row(key, _fmt(va), _fmt(vb))
    console.print(table)


@models.command("promote")
@click.argument("version", type=int)
@click.option("--group", default="", help="Device group ('' = the fleet default).")
@click.option("--reason", default="manual promotion", show_default=True)
@click.option("--rollout", "roll", is_flag=True,
              help="Also queue a staged rollout to the group ([retrain] phases and quantization).")
@click.pass_context
def promote(ctx: click.Context, version: int, group: str, reason: str, roll: bool) -> None:
    """Make VERSION the champion of a group (recorded in `cloud-hub retrain history`)."""
    from cloud_hub.registry.retrain import roll_out

    home = home_of(ctx)
    with home.sessions()() as s:
        try:
            d = reg_champion.promote(s, version, group, reason)
        except lineage.UnknownVersion as exc:
            raise click.ClickException(str(exc)) from None
    was = f" (was v{d.champion_version})" if d.champion_version else ""
    console.print(f"v{version} is the champion of {_group(group)}{was}")
    if not roll:
        console.print(f"roll it out with `cloud-hub models promote {version} --rollout` or `cloud-hub rollout start "
                      f"--model {version}" + (f" --group {group}`" if group else "`"))
        return
    cfg = home.config()
    q = cfg.retrain.quantization or cfg.default_quantization
    try:
        rollout_id = roll_out(home, version, group, q, cfg.retrain.phases)
    except (ValueError, LookupError) as exc:
        raise click.ClickException(f"promoted, but no rollout started: {exc}") from None
    with home.sessions()() as s:
        row = s.get(type(d), d.id)
        if row is not None:
            row.rollout_id = rollout_id
            s.commit()
    console.print(f"rollout {rollout_id}: v{version} ({q}) to {_group(group)} in waves {cfg.retrain.phases}; "
                  "`cloud-hub serve` carries it out")
