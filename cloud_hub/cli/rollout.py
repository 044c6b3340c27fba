"""``cloud-hub rollout``: start staged rollouts and steer them.  Every command only writes intent to the
database; `cloud-hub serve` (the rollout engine) announces, judges the gates and reverts."""

from __future__ import annotations

import sys
import time

import click
from rich.console import Group
from rich.live import Live
from rich.table import Table

from cloud_hub.cli.common import console, home_of
from cloud_hub.db.rollouts import RolloutCommand
from cloud_hub.home import HubHome
from cloud_hub.rollout import (
    GateAction,
    Gates,
    RolloutError,
    Selector,
    parse_duration,
    parse_fraction,
    parse_phases,
    request,
    start_rollout,
    views,
)
from cloud_hub.rollout.api import RolloutView
from shared.inference import Quantization


@click.group()
def rollout() -> None:
    """Staged model rollouts (waves, gates, pause/resume/abort/rollback)."""


def _check(parse, value: str, hint: str):  # type: ignore[no-untyped-def]
    try:
        return parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


@rollout.command("start")
@click.option("--model", "version", type=int, required=True, help="Model version to roll out.")
@click.option("--quantization", "-q", type=click.Choice([q.value for q in Quantization]), default="int8",
              show_default=True, help="Bundle to send (exported first if missing).")
@click.option("--group", help="Only devices of this group.")
@click.option("--profile", help="Only devices with this firmware profile.")
@click.option("--tag", metavar="K=V", help="Only devices with this tag.")
@click.option("--phases", default="100", show_default=True,
              help="Cumulative percentages of the devices per wave, e.g. 5,25,100.")
@click.option("--wait", default="10m", show_default=True,
              help="Longest a device may take to activate and pass probation (e.g. 90s, 10m); then it is timed out.")
@click.option("--max-failure", default="10%", show_default=True,
              help="Largest share of a wave that may fail, roll back or time out.")
@click.option("--max-anomaly-rate-increase", "max_anomaly", type=float,
              help="Largest rise of the wave's anomaly rate (events per scored reading) over the previous model.")
@click.option("--on-gate-failure", type=click.Choice([a.value for a in GateAction]), default="abort",
              show_default=True, help="abort: send the wave back; pause: wait for the operator.")
@click.option("--follow", is_flag=True, help="Watch until the rollout ends; exit 3 unless it completed.")
@click.pass_context
def rollout_start(ctx: click.Context, version: int, quantization: str, group: str | None, profile: str | None,
                  tag: str | None, phases: str, wait: str, max_failure: str, max_anomaly: float | None,
                  on_gate_failure: str, follow: bool) -> None:
    """Queue a staged rollout; `cloud-hub serve` carries it out wave by wave."""
    home = home_of(ctx)
    key, sep, value = (tag or "").partition("=")
    if tag is not None and (not sep or not key or not value):
        raise click.BadParameter(f"{tag!r}: expected KEY=VALUE", param_hint="--tag")
    try:
        selector = Selector(group=group, profile=profile, tag=(key, value) if tag else None)
        gates = Gates(wait_s=_check(parse_duration, wait, "--wait"),
                      max_failure=_check(parse_fraction, max_failure, "--max-failure"),
                      max_anomaly_increase=max_anomaly, on_failure=GateAction(on_gate_failure))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    plan = _check(parse_phases, phases, "--phases")
    try:
        rollout_id = start_rollout(home, version, selector, plan, gates, quantization)
    except LookupError:
        from cloud_hub.export import export

        with console.status(f"exporting v{version} as {quantization}…"):
            try:
                export(home, version, Quantization(quantization))
            except (ValueError, LookupError) as exc:
                raise click.ClickException(str(exc)) from None
        rollout_id = start_rollout(home, version, selector, plan, gates, quantization)
    view = views(home, rollout_id)[0]
    waves = [sum(1 for d in view.devices if d.wave == i) for i in range(len(plan))]
    console.print(f"rollout {rollout_id}: v{version} ({quantization}) to {selector.describe()}: "
                  f"{len(view.devices)} device(s) in waves {waves}; gates: wait {gates.wait_s:g} s, max failure "
                  f"{gates.max_failure:.0%}" + (f", anomaly rate +{max_anomaly}" if max_anomaly is not None else "")
                  + f", on failure {gates.on_failure.value}. `cloud-hub serve` carries it out.")
    if not view.devices:
        console.print("[yellow]no device matches yet[/]: devices of the selection that come online later get v"
                      f"{version} once the rollout completes")
    if follow:
        sys.exit(0 if _watch(home, rollout_id) == "completed" else 3)


def _table(v: RolloutView) -> Table:
    r = v.rollout
    title = (f"rollout {r.id}: v{r.version} [bold]{r.state.value}[/] wave {min(r.wave + 1, len(r.phases))}/"
             f"{len(r.phases)} (phases {','.join(map(str, r.phases))}) {v.counts()}"
             + (f" — command {r.command.value} pending" if r.command else "") + (f"\n{r.reason}" if r.reason else ""))
    t = Table("device", "wave", "state", "previous", "detail", title=title, title_justify="left")
    for d in v.devices:
        t.add_row(d.device_id, str(d.wave + 1), d.state.value, "-" if d.previous_version is None else
                  f"v{d.previous_version}", d.detail)
    return t


def _watch(home: HubHome, rollout_id: int | None, limit: int = 5) -> str:
    """Refresh the status until the rollout(s) end (or Ctrl-C); returns the (first) rollout's final state."""
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            vs = views(home, rollout_id, limit)
            live.update(Group(*(_table(v) for v in vs)))
            if all(v.done for v in vs):
                return vs[0].rollout.state.value if vs else ""
            time.sleep(1.0)  # a display refresh, not synchronisation


@rollout.command("status")
@click.argument("rollout_id", type=int, required=False)
@click.option("--watch", is_flag=True, help="Refresh until the rollout ends.")
@click.option("--limit", type=int, default=5, show_default=True, help="How many recent rollouts.")
@click.pass_context
def rollout_status(ctx: click.Context, rollout_id: int | None, watch: bool, limit: int) -> None:
    """Rollouts with their waves, gates and each device's state."""
    home = home_of(ctx)
    vs = views(home, rollout_id, limit)
    if rollout_id is not None and not vs:
        raise click.ClickException(f"no rollout {rollout_id}")
    if watch:
        _watch(home, rollout_id, limit)
        return
    for v in vs:
        console.print(_table(v))
    if not vs:
        console.print("no rollouts yet: `cloud-hub rollout start --model N`")


def _command(command: RolloutCommand, doc: str) -> click.Command:
    @click.argument("rollout_id", type=int)
    @click.pass_context
    def run(ctx: click.Context, rollout_id: int) -> None:
        home = home_of(ctx)
        try:
            request(home, rollout_id, command)
        except RolloutError as exc:
            raise click.ClickException(str(exc)) from None
        console.print(f"rollout {rollout_id}: {command.value} requested; `cloud-hub serve` carries it out "
                      f"(`cloud-hub rollout status {rollout_id} --watch`)")

    run.__doc__ = doc
    return rollout.command(command.value)(run)


_command(RolloutCommand.PAUSE, "Stop sending further devices the new model.")
_command(RolloutCommand.RESUME, "Continue a paused rollout (a wave paused by its gate counts as passed).")
_command(RolloutCommand.ABORT, "Stop and send the wave in flight back to its previous models.")
_command(RolloutCommand.ROLLBACK, "Send every device the rollout reached back to its previous model.")
