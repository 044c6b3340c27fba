"""``cloud-hub anomalies``: list anomaly events with their labels, label them true/false positive."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import click
from rich.table import Table

from cloud_hub.cli.common import console, home_of
from cloud_hub.db import LabelKind, queries
from cloud_hub.registry import labels as reg_labels

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")


def parse_since(text: str, now: float | None = None) -> float:
    """``2h`` / ``30m`` / ``7d`` ago, an ISO date or time (UTC unless it says otherwise), or epoch seconds."""
    m = _AGO.match(text)
    if m:
        return (now if now is not None else time.time()) - float(m.group(1)) * {"s": 1, "m": 60, "h": 3600,
                                                                               "d": 86400}[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected a duration ago (30m, 2h, 7d), an ISO date/time or epoch "
                                 "seconds", param_hint="--since") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group()
def anomalies() -> None:
    """Anomaly events and the operator's feedback on them (feeds retraining)."""


@anomalies.command("list")
@click.option("--device", help="Only this device.")
@click.option("--since", help="Only events at or after: 30m, 2h, 7d ago, an ISO date/time, or epoch seconds.")
@click.option("--unlabelled", is_flag=True, help="Only events no operator has labelled yet.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def list_cmd(ctx: click.Context, device: str | None, since: str | None, unlabelled: bool, limit: int,
             as_json: bool) -> None:
    """Most recent anomaly events (newest first) with their current label."""
    home = home_of(ctx)
    since_ts = parse_since(since) if since else None
    with home.sessions()() as s:
        rows = queries.anomalies(s, device, since_ts, unlabelled, limit)
    if as_json:
        for r in rows:
            e, lab = r.event, r.label
            click.echo(json.dumps({
                "id": e.id, "device": e.device_id, "event_id": e.event_id, "ts": e.ts, "score": e.score,
                "threshold": e.threshold, "model_version": e.model_version, "top_features": e.top_features,
                "label": lab.label.value if lab else None, "note": lab.note if lab else None,
                "labelled_at": lab.labelled_at if lab else None, "labelled_by": lab.labelled_by if lab else None}))
        return
    table = Table("id", "time (UTC)", "device", "score", "threshold", "model", "top features", "label", "note")
    for r in rows:
        e, lab = r.event, r.label
        table.add_row(str(e.id), _when(e.ts), e.device_id, f"{e.score:.3g}", f"{e.threshold:.3g}",
                      f"v{e.model_version}", ", ".join(e.top_features[:3]),
                      lab.label.value if lab else "-", lab.note if lab else "")
    console.print(table)
    if not rows:
        console.print("no anomaly events match")


@anomalies.command("label")
@click.argument("anomaly_id", type=int)
@click.option("--true-positive", "kind", flag_value=LabelKind.TRUE_POSITIVE.value,
              help="A real anomaly: kept out of training data; a challenger must still flag it.")
@click.option("--false-positive", "kind", flag_value=LabelKind.FALSE_POSITIVE.value,
              help="A false alarm: that stretch becomes normal training data and calibrates the threshold.")
@click.option("--note", help="Free text stored with the label (at most 1000 characters).")
@click.option("--by", help="Operator name to record (default: your OS user).")
@click.pass_context
def label_cmd(ctx: click.Context, anomaly_id: int, kind: str | None, note: str | None, by: str | None) -> None:
    """Label anomaly event ID (the id column of `anomalies list`); relabelling keeps the history."""
    if kind is None:
        raise click.UsageError("give --true-positive or --false-positive")
    home = home_of(ctx)
    with home.sessions()() as s:
        try:
            previous = [h.label.value for h in reg_labels.label_history(s, anomaly_id)]
            row = reg_labels.label_anomaly(s, anomaly_id, kind, note, by=by)
        except reg_labels.LabelError as exc:
            raise click.ClickException(str(exc)) from None
    was = f" (was {previous[-1]})" if previous else ""
    console.print(f"anomaly {anomaly_id}: {row.label.value}{was}" + (f" — {row.note}" if row.note else ""))
