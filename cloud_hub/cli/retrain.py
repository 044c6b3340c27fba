"""``cloud-hub retrain``: challenger vs champion on synced data and labels; ``retrain history``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cloud_hub import db
from cloud_hub.cli.common import console, home_of
from cloud_hub.home import HubHome
from cloud_hub.registry import retrain as reg_retrain
from shared.inference import Quantization


def _roll_out(home: HubHome, quantization: str, phases: list[int], wait: float) -> tuple[
        dict[str, list[str]], Callable[[int, str], int | None]]:
    """on_promoted for the retrain loop: a staged rollout to the group, then (``wait`` > 0) block until its
    devices run the version or refused it; ``outcome["missing"]`` lists the devices that did not."""
    outcome: dict[str, list[str]] = {}

    def start(version: int, group: str) -> int | None:
        from cloud_hub.rollout import views, wait_for_activation

        with console.status(f"exporting and queuing the rollout of v{version}…"):
            rollout_id = reg_retrain.roll_out(home, version, group, quantization, phases)
        devices = {d.device_id for d in views(home, rollout_id)[0].devices}
        console.print(f"rollout {rollout_id}: v{version} ({quantization}) to {len(devices)} device(s) of "
                      f"{group or 'the fleet'} in waves {phases}; `cloud-hub serve` carries it out")
        if wait and devices:
            latest = wait_for_activation(home, version, devices, wait, rollout_id=rollout_id)
            activated = sorted(d for d, st in latest.items() if st.model_version == version)
            outcome["missing"] = sorted(devices - set(activated))
            console.print(f"v{version} active on {len(activated)}/{len(devices)} device(s)"
                          + (f"; not yet: {', '.join(outcome['missing'])}" if outcome["missing"] else ""))
        return rollout_id

    return outcome, start


@click.group(invoke_without_command=True)
@click.option("--group", default="", help="Device group to retrain ('' = the whole fleet, judged against the "
                                          "fleet-default champion).")
@click.option("--since", type=float, help="Only data synced in the last N seconds.")
@click.option("--epochs", type=int, help="Training epochs (default: [retrain] epochs, else [training] epochs).")
@click.option("--model", "model_name", help="Detector to train (default: the champion's).")
@click.option("--force", is_flag=True, help="Promote the challenger whatever the evaluation says (numbers stored).")
@click.option("--no-rollout", is_flag=True, help="Decide and (if promoted) make it champion, but start no rollout.")
@click.option("--quantization", "-q", type=click.Choice([q.value for q in Quantization]),
              help="Bundle to roll out (default: [retrain] quantization, else default_quantization).")
@click.option("--wait", type=float, default=120, show_default=True, help="Seconds to wait for activations.")
@click.option("--trigger", type=click.Choice([t.value for t in db.RetrainTrigger if t != db.RetrainTrigger.PROMOTE]),
              default=db.RetrainTrigger.MANUAL.value, hidden=True, help="Why (set by serve's scheduler).")
@click.option("--trigger-detail", default="{}", hidden=True, help="JSON numbers of the trigger (serve).")
@click.pass_context
def retrain(ctx: click.Context, group: str, since: float | None, epochs: int | None, model_name: str | None,
            force: bool, no_rollout: bool, quantization: str | None, wait: float, trigger: str,
            trigger_detail: str) -> None:
    """Train a challenger on the group's synced data (false-positive labels as normal data, true positives
    excluded), judge it against the champion on held-out recent data plus labels, promote it if better
    by [retrain] margin, then roll it out.  `retrain history` lists every decision."""
    if ctx.invoked_subcommand is not None:
        return
    from dataclasses import replace

    from cloud_hub.models import MODELS

    home = home_of(ctx)
    cfg = home.config()
    if model_name is not None and model_name not in MODELS:
        raise click.BadParameter(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}",
                                 param_hint="--model")
    tcfg = cfg.training
    if epochs or cfg.retrain.epochs:
        tcfg = replace(tcfg, epochs=epochs or cfg.retrain.epochs)
    policy = replace(cfg.retrain, rollout=cfg.retrain.rollout and not no_rollout)
    q = quantization or cfg.retrain.quantization or cfg.default_quantization
    req = reg_retrain.RetrainRequest(group=group, trigger=db.RetrainTrigger(trigger),
                                     trigger_detail=json.loads(trigger_detail), force=force, model=model_name,
                                     since=time.time() - since if since else None, quantization=q)
    outcome, on_promoted = _roll_out(home, q, policy.phases, wait)
    with Progress(TextColumn("[bold]challenger[/] epoch {task.completed}/{task.total}"), BarColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("", total=tcfg.epochs)

        def on_epoch(epoch: int, total: int, logs: dict[str, float]) -> None:
            bar.update(task, completed=epoch, description=f"loss {logs.get('loss', 0):.5f}")

        try:
            result = reg_retrain.retrain(home, req, tcfg, policy, on_epoch, on_promoted)
        except reg_retrain.RetrainError as exc:
            raise click.ClickException(f"retrain failed (stored in `cloud-hub retrain history`): {exc}") from None
    _print_decision(result.decision)
    if outcome.get("missing"):
        sys.exit(3)


def _print_decision(d: db.RetrainDecision) -> None:
    who = f"challenger v{d.challenger_version}" if d.challenger_version else "no challenger"
    champ = f"champion v{d.champion_version}" if d.champion_version else "no champion"
    colour = {"promoted": "green", "kept_champion": "yellow", "failed": "red"}[d.outcome.value]
    when = datetime.fromtimestamp(d.started_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    console.print(f"retrain {d.id} at {when} UTC ({d.device_group or 'fleet'}, {d.trigger.value}): "
                  f"[{colour}]{d.outcome.value}"
                  f"[/] — {who} vs {champ}: {d.detail}")
    ch, cp = (d.numbers or {}).get("challenger"), (d.numbers or {}).get("champion")
    for name, m in (("challenger", ch), ("champion", cp)):
        if isinstance(m, dict):
            recall = "-" if m.get("tp_recall") is None else f"{m['tp_recall']:.3f}"
            console.print(f"  {name}: cost {m['cost']:.4f}; false alarms {m['false_alarm_rate']:.4f} of "
                          f"{m['normal_windows']} held-out windows; FP-labelled events still flagged "
                          f"{m['fp_events_flagged']}/{m['fp_events']}; TP recall {recall} "
                          f"({m['tp_events_caught']}/{m['tp_events']}); threshold {m['threshold']:.4g}")
    if d.rollout_id:
        console.print(f"  rollout {d.rollout_id} started")


@retrain.command("history")
@click.option("--group", help="Only this group ('' = the fleet).")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per decision, with every number.")
@click.pass_context
def history(ctx: click.Context, group: str | None, limit: int, as_json: bool) -> None:
    """Every retrain decision and manual promotion, newest first, with the numbers it was made on."""
    home = home_of(ctx)
    rows = reg_retrain.history(home, group, limit)
    if as_json:
        for d in rows:
            click.echo(json.dumps({
                "id": d.id, "group": d.device_group, "trigger": d.trigger.value, "trigger_detail": d.trigger_detail,
                "started_at": d.started_at, "finished_at": d.finished_at, "outcome": d.outcome.value,
                "champion_version": d.champion_version, "challenger_version": d.challenger_version,
                "margin": d.margin, "numbers": d.numbers, "rollout_id": d.rollout_id, "detail": d.detail}))
        return
    for d in rows:
        _print_decision(d)
    if not rows:
        console.print("no retrain decisions yet")
