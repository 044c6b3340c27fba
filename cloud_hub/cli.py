"""``cloud-hub`` command line."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.config import TrainingConfig
from cloud_hub.data import TrainingData
from cloud_hub.home import DEFAULT_HOME, HubHome, HubHomeError
from shared.schema import SchemaError

console = Console()


def _home(ctx: click.Context) -> HubHome:
    home: HubHome = ctx.obj
    try:
        home.require()
    except HubHomeError as exc:
        raise click.ClickException(str(exc)) from None
    return home


@click.group()
@click.option("--home", type=click.Path(path_type=Path), default=DEFAULT_HOME, show_default=True,
              envvar="EDGESENTRY_HOME", help="Hub home directory (config, database, keys, models).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, home: Path, verbose: bool) -> None:
    """edgesentry cloud hub: train, export, sign and roll out models; store what agents report."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = HubHome(home.expanduser().resolve())


@main.command()
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, help="Broker URL for hub.toml.")
@click.option("--force", is_flag=True, help="Rewrite hub.toml if the home exists (keys are kept).")
@click.pass_obj
def init(home: HubHome, broker: str, force: bool) -> None:
    """Create the hub home: hub.toml, SQLite database and Ed25519 signing key."""
    created = home.init(broker, force=force)
    console.print(f"{'Created' if created else 'Already initialised:'} hub home [bold]{home.path}[/]")
    console.print(f"Hub public key (put it in each agent's trusted_keys): [bold]{home.public_key()}[/]")


def _training_config(home: HubHome, epochs: int | None, window: int | None, alpha: float | None,
                      beta: float | None) -> TrainingConfig:
    from dataclasses import replace

    cfg = home.config().training
    given: dict[str, Any] = {"epochs": epochs, "window": window, "alpha": alpha, "beta": beta}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        return replace(cfg, **overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _train(home: HubHome, data: TrainingData, cfg: TrainingConfig) -> int:
    from cloud_hub import training

    with Progress(TextColumn("[bold]training[/] epoch {task.completed}/{task.total}"), BarColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("", total=cfg.epochs)

        def on_epoch(epoch: int, total: int, logs: dict[str, float]) -> None:
            bar.update(task, completed=epoch,
                       description=f"loss {logs.get('loss', 0):.5f}  val_loss {logs.get('val_loss', 0):.5f}")

        result = training.train(home, data, cfg, on_epoch=on_epoch)
        bar.update(task, total=result.info["epochs_run"], completed=result.info["epochs_run"])
    console.print(f"Model [bold]v{result.version}[/] trained on {result.info['train_windows']} windows "
                  f"({result.info['epochs_run']} epochs, val loss {result.info['final_val_loss']:.5f}); "
                  f"threshold {result.scoring.threshold:.3f}")
    return result.version


@main.command()
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with a timestamp column and numeric columns (normal data).")
@click.option("--synced", is_flag=True, help="Train on the readings agents have synced instead of a CSV.")
@click.option("--features", help="Comma-separated columns to use (default: all numeric).")
@click.option("--timestamp-column", default="timestamp", show_default=True)
@click.option("--model", "model_name", default="ae-lstm", show_default=True, type=click.Choice(["ae-lstm"]))
@click.option("--epochs", type=int)
@click.option("--window", type=int)
@click.option("--alpha", type=float, help="Weight of the reconstruction error in the score.")
@click.option("--beta", type=float, help="Weight of the prediction error in the score.")
@click.pass_context
def train(ctx: click.Context, data_path: Path | None, synced: bool, features: str | None, timestamp_column: str,
          model_name: str, epochs: int | None, window: int | None, alpha: float | None, beta: float | None) -> None:
    """Train a new model version (AE-LSTM hybrid) on normal data."""
    from cloud_hub import data

    home = _home(ctx)
    if bool(data_path) == synced:
        raise click.UsageError("give exactly one of --data FILE.csv or --synced")
    cfg = _training_config(home, epochs, window, alpha, beta)
    feats = [f.strip() for f in features.split(",")] if features else None
    try:
        if data_path:
            td = data.from_csv(data_path, feats, timestamp_column)
        else:
            with home.sessions()() as s:
                td = data.from_synced(s, feats, window=cfg.window)
        _train(home, td, cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


def _export(home: HubHome, version: int, quantization: str, profile: Path | None = None) -> None:
    from cloud_hub.export import Quantization, export
    from shared.profiles import load_profile

    budget = load_profile(profile) if profile else None
    with console.status(f"exporting v{version} as {quantization}…"):
        r = export(home, version, Quantization(quantization))
    if budget and r.tflite_bytes > budget.max_model_bytes:
        raise click.ClickException(f"{r.tflite_bytes}-byte model exceeds profile {budget.name}'s budget of "
                                   f"{budget.max_model_bytes} bytes")
    a = r.agreement
    console.print(f"Bundle [bold]{r.archive.name}[/]: {r.size} bytes (model {r.tflite_bytes}); agreement with "
                  f"Keras on {a.windows} windows: pearson {a.score_pearson:.4f}, flags {a.flag_agreement:.4f}, "
                  f"mean rel diff {a.mean_abs_rel_diff:.4f}")


QUANT_CHOICE = click.Choice(["int8", "float16", "dynamic", "float32"])


@main.command()
@click.option("--model", "version", type=int, required=True, help="Model version to export.")
@click.option("--quantization", "-q", type=QUANT_CHOICE, multiple=True, default=["int8"], show_default=True)
@click.option("--profile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Firmware profile whose model-size budget the export must meet.")
@click.pass_context
def export(ctx: click.Context, version: int, quantization: tuple[str, ...], profile: Path | None) -> None:
    """Convert a version to TFLite, measure agreement with Keras, write a signed bundle."""
    home = _home(ctx)
    for q in quantization:
        try:
            _export(home, version, q, profile)
        except (ValueError, SchemaError) as exc:
            raise click.ClickException(str(exc)) from None


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Connect to the broker: store events, heartbeats and synced data; serve model downloads."""
    from cloud_hub.server import HubServer

    home = _home(ctx)
    server = HubServer(home)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server.start()
    except ConnectionError as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"hub serving; broker {server.cfg.broker.url}; Ctrl-C to stop")
    stop.wait()
    server.stop()
    console.print(f"stored: {dict(server.stored)}; rejected: {server.rejects.counts()}")


@main.group()
def rollout() -> None:
    """Roll models out to the fleet."""


def _rollout(home: HubHome, version: int, quantization: str, wait: float) -> dict[str, object]:
    from cloud_hub import rollout as ro

    try:
        info = ro.start(home, version, quantization)
    except LookupError:
        _export(home, version, quantization)
        info = ro.start(home, version, quantization)
    console.print(f"rollout {info.rollout_id}: v{version} ({quantization}, {info.size} bytes) announced to "
                  f"{len(info.devices)} known device(s)")
    if not wait or not info.devices:
        return {}

    def on_update(device: str, status: object) -> None:
        if getattr(status, "model_version", None) == version:
            console.print(f"  {device}: activated v{version}")
        elif getattr(status, "failed_version", None) == version and getattr(status, "rollout_id", None) == info.rollout_id:
            console.print(f"  {device}: [red]refused v{version}: {getattr(status, 'error', '')}[/]")

    latest = ro.wait_for_activation(home, version, set(info.devices), wait, on_update, info.rollout_id)
    activated = sorted(d for d, st in latest.items() if st.model_version == version)
    missing = sorted(set(info.devices) - set(activated))
    console.print(f"v{version} active on {len(activated)}/{len(info.devices)} device(s)"
                  + (f"; not yet: {', '.join(missing)}" if missing else ""))
    return {"activated": activated, "missing": missing}


@rollout.command("start")
@click.option("--model", "version", type=int, required=True, help="Model version to roll out.")
@click.option("--quantization", "-q", type=QUANT_CHOICE, default="int8", show_default=True)
@click.option("--wait", type=float, default=120, show_default=True, help="Seconds to wait for activations (0 = don't).")
@click.pass_context
def rollout_start(ctx: click.Context, version: int, quantization: str, wait: float) -> None:
    """Announce a signed bundle to all agents and report which activated it."""
    home = _home(ctx)
    result = _rollout(home, version, quantization, wait)
    if result.get("missing"):
        sys.exit(3)


@rollout.command("status")
@click.pass_context
def rollout_status(ctx: click.Context) -> None:
    """Per-device state of the most recent rollouts."""
    home = _home(ctx)
    with home.sessions()() as s:
        table = Table("rollout", "version", "state", "device", "device state", "detail")
        for r in s.scalars(select(db.Rollout).order_by(db.Rollout.id.desc()).limit(5)):
            rows = list(s.scalars(select(db.RolloutDevice).where(db.RolloutDevice.rollout_id == r.id)))
            for d in rows or [None]:
                table.add_row(str(r.id), str(r.version), r.state.value, d.device_id if d else "-",
                              d.state.value if d else "-", d.detail if d else "")
    console.print(table)


@main.command()
@click.option("--since", type=float, help="Only data synced in the last N seconds.")
@click.option("--epochs", type=int)
@click.option("--no-rollout", is_flag=True, help="Train and export only.")
@click.option("--quantization", "-q", type=QUANT_CHOICE, default="int8", show_default=True)
@click.option("--wait", type=float, default=120, show_default=True, help="Seconds to wait for activations.")
@click.pass_context
def retrain(ctx: click.Context, since: float | None, epochs: int | None, no_rollout: bool, quantization: str,
            wait: float) -> None:
    """Train a new version on data agents synced, export it and roll it out."""
    import time

    from cloud_hub import data

    home = _home(ctx)
    cfg = _training_config(home, epochs, None, None, None)
    try:
        with home.sessions()() as s:
            td = data.from_synced(s, window=cfg.window, since=time.time() - since if since else None)
        console.print(f"synced data: {td.rows} readings, {len(td.features)} features, "
                      f"{td.excluded_rows} excluded around flagged anomalies")
        version = _train(home, td, cfg)
        _export(home, version, quantization)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not no_rollout:
        result = _rollout(home, version, quantization, wait)
        if result.get("missing"):
            sys.exit(3)


@main.command()
@click.pass_context
def devices(ctx: click.Context) -> None:
    """Known devices and what they run."""
    home = _home(ctx)
    with home.sessions()() as s:
        table = Table("device", "online", "model", "state", "runtime", "scored", "last seen (s ago)", "error")
        import time

        for d in s.scalars(select(db.Device).order_by(db.Device.device_id)):
            table.add_row(d.device_id, "yes" if d.online else "no", str(d.model_version or "-"), d.model_state,
                          d.runtime, str(d.readings_scored), f"{time.time() - d.last_seen:.0f}", d.last_error[:60])
    console.print(table)


@main.command()
@click.option("--device", help="Only this device.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def events(ctx: click.Context, device: str | None, limit: int) -> None:
    """Most recent anomaly events."""
    from datetime import UTC, datetime

    home = _home(ctx)
    query = select(db.AnomalyEvent).order_by(db.AnomalyEvent.ts.desc()).limit(limit)
    if device:
        query = query.where(db.AnomalyEvent.device_id == device)
    table = Table("time (UTC)", "device", "score", "threshold", "model", "top features", "latency ms")
    with home.sessions()() as s:
        for e in s.scalars(query):
            table.add_row(datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.device_id,
                          f"{e.score:.2f}", f"{e.threshold:.2f}", f"v{e.model_version}", ", ".join(e.top_features),
                          f"{(e.received_at - e.ts) * 1000:.1f}")
    console.print(table)


@main.command()
@click.option("--broker", help="Use this broker instead of starting an embedded one.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True)
@click.option("--summary", type=click.Path(path_type=Path), default=Path("demo-summary.json"), show_default=True)
@click.option("--quick", is_flag=True, help="Shorter phases (for tests).")
def demo(broker: str | None, workdir: Path, summary: Path, quick: bool) -> None:
    """Whole loop: broker, hub, three agents, simulator, train, roll out, detect, retrain."""
    from cloud_hub.demo.run import run_demo

    try:
        run_demo(workdir.resolve(), summary.resolve(), broker, quick=quick, console=console)
    except (RuntimeError, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results.json"), show_default=True)
@click.option("--broker", help="Broker URL to measure through (default: start Mosquitto, else amqtt).")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".bench"), show_default=True)
def bench(out: Path, broker: str | None, workdir: Path) -> None:
    """Interpreter windows/s, agent readings/s and latency through a broker, bundle sizes."""
    from cloud_hub.bench import run_bench

    run_bench(workdir.resolve(), out.resolve(), broker, console=console)


if __name__ == "__main__":
    main()
