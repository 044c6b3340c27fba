"""``cloud-hub`` command line."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cloud_hub.cli.common import console, home_of
from cloud_hub.cli.web import HTTP_OPTION, NO_AUTH_OPTION, OperatorView, check_web_args
from cloud_hub.config import TrainingConfig
from cloud_hub.data import TrainingData
from cloud_hub.db import queries
from cloud_hub.evaluation.evaluate import ScoreOn
from cloud_hub.home import DEFAULT_HOME, HubHome
from cloud_hub.retrain_policy import RetrainPolicy
from shared.decision import DecisionMode
from shared.inference import Quantization
from shared.profiles import FirmwareProfile, resolve_profile
from shared.schema import SchemaError

QUANT_CHOICE = click.Choice([q.value for q in Quantization])
DECISION_CHOICE = click.Choice([d.value for d in DecisionMode])


_home = home_of


class HubGroup(click.Group):
    """Turns a database whose schema does not match into a one-line error naming the command to run."""

    def invoke(self, ctx: click.Context) -> Any:
        from cloud_hub.db.migrate import DatabaseSchemaError

        try:
            return super().invoke(ctx)
        except DatabaseSchemaError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=HubGroup)
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
@click.option("--database-url", default="", help="SQLAlchemy URL of the hub database, e.g. "
              "postgresql+psycopg://hub:PASSWORD@db-host/edgesentry (default: SQLite hub.db in the home).")
@click.pass_obj
def init(home: HubHome, broker: str, force: bool, database_url: str) -> None:
    """Create the hub home: hub.toml, the database schema (SQLite by default) and Ed25519 signing key."""
    created = home.init(broker, force=force, database_url=database_url)
    console.print(f"{'Created' if created else 'Already initialised:'} hub home [bold]{home.path}[/]")
    console.print(f"Hub public key (put it in each agent's trusted_keys): [bold]{home.public_key()}[/]")
    console.print("For a fleet: `cloud-hub broker-config --out DIR` (TLS, accounts, ACLs), then "
                  "`cloud-hub devices add NAME` writes each gateway's agent.toml.")


def parse_settings(settings: tuple[str, ...]) -> dict[str, Any]:
    """``--set key=value`` pairs → typed TrainingConfig overrides (unknown keys are errors)."""
    fields = TrainingConfig.__dataclass_fields__
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}",
                                     param_hint="--set")
        kind = type(getattr(TrainingConfig(), key))
        try:
            out[key] = kind(value) if kind is not bool else value.lower() in ("1", "true", "yes")
        except ValueError:
            raise click.BadParameter(f"{key} needs a {kind.__name__}, got {value!r}", param_hint="--set") from None
    return out


def _training_config(home: HubHome | None, epochs: int | None = None, window: int | None = None,
                     alpha: float | None = None, beta: float | None = None,
                     settings: tuple[str, ...] = ()) -> TrainingConfig:
    from dataclasses import replace

    cfg = home.config().training if home else TrainingConfig()
    given: dict[str, Any] = {"epochs": epochs, "window": window, "alpha": alpha, "beta": beta}
    overrides = {**parse_settings(settings), **{k: v for k, v in given.items() if v is not None}}
    try:
        return replace(cfg, **overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _train(home: HubHome, data: TrainingData, cfg: TrainingConfig, model: str = "ae-lstm") -> int:
    from cloud_hub import training

    with Progress(TextColumn("[bold]training[/] epoch {task.completed}/{task.total}"), BarColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("", total=cfg.epochs)

        def on_epoch(epoch: int, total: int, logs: dict[str, float]) -> None:
            bar.update(task, completed=epoch,
                       description=f"loss {logs.get('loss', 0):.5f}  val_loss {logs.get('val_loss', 0):.5f}")

        result = training.train(home, data, cfg, model=model, on_epoch=on_epoch)
        bar.update(task, total=max(result.info["epochs_run"], 1), completed=result.info["epochs_run"])
    console.print(f"Model [bold]v{result.version}[/] ({model}, {result.info['mode']}) trained on "
                  f"{result.info['train_windows']} windows ({result.info['epochs_run']} epochs); "
                  f"threshold {result.detector.threshold:.4g}")
    return result.version


def _model_choice() -> click.Choice:
    from cloud_hub.models import MODELS

    return click.Choice(list(MODELS))


SET_OPTION = click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
                          help="Override any [training] setting, e.g. --set hidden=128 (repeatable).")


@main.command()
@click.option("--data", "data_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV with a timestamp column and numeric columns.")
@click.option("--synced", is_flag=True, help="Train on the readings agents have synced instead of a CSV.")
@click.option("--features", help="Comma-separated columns to use (default: all numeric).")
@click.option("--timestamp-column", default="timestamp", show_default=True)
@click.option("--label-column", help="Integer label column (0 = normal): needed by supervised models; "
                                     "unsupervised ones then train on the normal rows only.")
@click.option("--model", "model_name", default="ae-lstm", show_default=True, type=_model_choice())
@click.option("--epochs", type=int)
@click.option("--window", type=int)
@click.option("--alpha", type=float, help="Weight of the reconstruction error in the score.")
@click.option("--beta", type=float, help="Weight of the prediction error in the score.")
@SET_OPTION
@click.pass_context
def train(ctx: click.Context, data_path: Path | None, synced: bool, features: str | None, timestamp_column: str,
          label_column: str | None, model_name: str, epochs: int | None, window: int | None, alpha: float | None,
          beta: float | None, settings: tuple[str, ...]) -> None:
    """Train a new model version (any registered model; see `cloud-hub models`)."""
    from cloud_hub import data
    from cloud_hub.training import check_mode

    home = _home(ctx)
    if bool(data_path) == synced:
        raise click.UsageError("give exactly one of --data FILE.csv or --synced")
    if synced and label_column:
        raise click.UsageError("--label-column applies to --data CSV files")
    cfg = _training_config(home, epochs, window, alpha, beta, settings)
    feats = [f.strip() for f in features.split(",")] if features else None
    try:
        check_mode(model_name, bool(label_column))  # refuse a mismatch before reading any data
        if data_path:
            td = data.from_csv(data_path, feats, timestamp_column, label_column)
        else:
            with home.sessions()() as s:
                td = data.from_synced(s, feats, window=cfg.window)
        _train(home, td, cfg, model_name)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--model", "model_names", multiple=True, required=True,
              help="Model to evaluate (repeatable), or 'all'; several are compared side by side.")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Labelled CSV, one sample per row (numeric columns; empty cells are missing values).")
@click.option("--label-column", default="label", show_default=True, help="Integer labels, 0 = normal.")
@click.option("--test-size", default=0.3, show_default=True, type=float, help="Stratified held-out fraction.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--folds", default=0, show_default=True, type=int, help="Also run k-fold cross-validation (k > 1).")
@click.option("--quantization", "-q", type=click.Choice([*(q.value for q in Quantization), "none"]),
              default="int8", show_default=True, help="Also score the exported TFLite model (quantization delta).")
@click.option("--score-on", type=click.Choice([s.value for s in ScoreOn]), default=ScoreOn.TEST.value,
              show_default=True, help="Report on the test split, or on a validation part of the training split "
                                      "(compare configurations there; the test rows stay unused).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@SET_OPTION
def evaluate(model_names: tuple[str, ...], data_path: Path, label_column: str, test_size: float, seed: int,
             folds: int, quantization: str, score_on: str, out: Path, settings: tuple[str, ...]) -> None:
    """Train on a stratified split of a labelled table and report held-out metrics (metrics.json, report.md,
    ROC / PR / score plots).  Unsupervised models train on the normal rows only."""
    from dataclasses import replace

    from cloud_hub.evaluation.compare import compare
    from cloud_hub.evaluation.evaluate import evaluate as run_evaluate
    from cloud_hub.models import MODELS

    names = list(MODELS) if "all" in model_names else list(dict.fromkeys(model_names))
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise click.BadParameter(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)} or all",
                                 param_hint="--model")
    cfg = _training_config(None, settings=settings)
    q = None if quantization == "none" else quantization

    def run_one(name: str, where: Path) -> dict[str, Any]:
        with console.status(f"{name}: training and scoring…"):
            m = run_evaluate(name, data_path, where, replace(cfg, seed=seed), label_column, test_size, seed, folds, q,
                             score_on=ScoreOn(score_on))
        console.print(f"[bold]{name}[/]: F1 {m['f1']:.4f}  ROC-AUC {m['roc_auc'] or 0:.4f}  "
                      + (f"F1 {q} {m[q]['f1']:.4f}  " if q and m.get(q) else "")
                      + f"({m['train_seconds']} s) → {where / 'report.md'}")
        return m

    try:
        if len(names) == 1:
            run_one(names[0], out)
        else:
            compare(names, out, run_one, f"{', '.join(names) if len(names) < 4 else 'all models'} on {data_path.name}")
            console.print(f"Side-by-side table: {out / 'summary.md'}")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--data", "nab_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="NAB directory (data/, labels/combined_windows.json, config/profiles.json).")
@click.option("--model", "model_name", default="ae-lstm", show_default=True, type=_model_choice(),
              help="Unsupervised model that exports to TFLite.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--files", "only", multiple=True, help="Only data files whose path contains this (repeatable).")
@click.option("--limit", type=int, help="Only the first N data files (sorted).")
@click.option("--quantization", "-q", type=QUANT_CHOICE, default="int8", show_default=True)
@click.option("--likelihood-threshold", type=float, default=0.5, show_default=True,
              help="The agents' decision threshold on the streaming likelihood (is_anomaly).")
@click.option("--workers", type=int, default=2, show_default=True, help="Files processed in parallel.")
@click.option("--retrain-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run the hub's retrain loop along each stream: every N readings train on the readings seen "
                   "so far (minus flagged ones), export, sign and swap the bundle in (0 = train once).")
@click.option("--retrain-max-rows", type=click.IntRange(min=2), default=RetrainPolicy.max_rows, show_default=True,
              help="Each retrain learns from at most the newest N readings.")
@click.option("--onset-window", type=click.IntRange(min=0), default=None,
              help="Agents report the likelihood only where it exceeds the previous N readings' (0 = off; "
                   "default: the corpus configuration).")
@click.option("--rearm", type=click.IntRange(min=0), default=None,
              help="Agents report the likelihood only after N readings below the threshold (0 = off; "
                   "default: the corpus configuration).")
@click.option("--deviation-window", type=click.IntRange(min=0), default=None,
              help="Agents also score each reading's deviation from the median of the previous N readings "
                   "(0 = off; default: the corpus configuration).")
@click.option("--seasonal-period", type=click.IntRange(min=0), default=None,
              help="Agents also score each reading against the readings seen before in its time slot (hour of "
                   "day x weekday over this period in seconds, e.g. 604800; 0 = off; default: the corpus "
                   "configuration).")
@click.option("--reuse-bundles", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A previous run's --out: replay its exported bundles with this run's post-processing "
                   "(likelihood settings, onsets, threshold) instead of training again.")
@SET_OPTION
def nab(nab_dir: Path, model_name: str, out: Path, only: tuple[str, ...], limit: int | None, quantization: str,
        likelihood_threshold: float, workers: int, retrain_every: int, retrain_max_rows: int,
        onset_window: int | None, rearm: int | None, deviation_window: int | None, seasonal_period: int | None,
        reuse_bundles: Path | None, settings: tuple[str, ...]) -> None:
    """Run the Numenta Anomaly Benchmark: per file, train on the probationary rows, export, and score the
    stream with the edge agent's replay (optionally retraining along it, as the hub does).  Writes
    nab_scores.json, NAB results files and report.md."""
    from cloud_hub.evaluation import nab as nab_run
    from cloud_hub.models import Mode, get

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # SIGTERM stops the worker processes too
    cls = get(model_name)
    if Mode.UNSUPERVISED not in cls.modes or quantization not in cls.quantizations:
        raise click.BadParameter(f"{model_name} cannot run NAB: it needs an unsupervised model that exports "
                                 f"to {quantization} TFLite (NAB streams have no labels to learn from)",
                                 param_hint="--model")
    defaults = tuple(f"{k}={v}" for k, v in nab_run.TRAINING_SETTINGS.items())
    cfg = _training_config(None, settings=(*defaults, *settings))
    nab_cfg = nab_run.NabConfig(model=model_name, training=cfg, quantization=quantization,
                                likelihood_threshold=likelihood_threshold, workers=workers,
                                retrain=RetrainPolicy(every=retrain_every, max_rows=retrain_max_rows),
                                reuse_bundles=str(reuse_bundles or ""),
                                **{k: v for k, v in (("onset_window", onset_window), ("rearm", rearm),
                                                     ("deviation_window", deviation_window),
                                                     ("seasonal_period", seasonal_period)) if v is not None})
    if reuse_bundles and retrain_every:
        raise click.BadParameter("--reuse-bundles replays existing models: it cannot retrain",
                                 param_hint="--retrain-every")
    try:
        files = nab_run.data_files(nab_dir, limit, list(only) or None)
        if not files:
            raise click.ClickException("no NAB data files selected")
        with console.status(f"NAB: {len(files)} files with {model_name} ({workers} workers)…"):
            s = nab_run.run(nab_dir, nab_cfg, out, files)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"NAB {s['detector']}: standard [bold]{s['standard']}[/], low FP {s['reward_low_FP_rate']}, "
                  f"low FN {s['reward_low_FN_rate']} (agent's own decisions: standard "
                  f"{s['own_decision']['standard']}) in {s['seconds']} s → {out / 'report.md'}")


@main.command("nab-score")
@click.option("--data", "nab_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="NAB directory (data/, labels/combined_windows.json, config/profiles.json).")
@click.option("--results", "results_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A detector's results folder (results/<detector>, files <detector>_<name>.csv).")
@click.option("--files", "only", multiple=True, help="Only data files whose path contains this (repeatable).")
def nab_score(nab_dir: Path, results_dir: Path, only: tuple[str, ...]) -> None:
    """Score NAB results files as they are on disk: the threshold sweep on anomaly_score and the detector's
    own decisions (is_anomaly), with NAB's published rules and normalisation."""
    from cloud_hub.evaluation import nab as nab_run

    try:
        s = nab_run.score_results(nab_dir, results_dir, nab_run.data_files(nab_dir, None, list(only) or None))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    for how, scores in (("threshold sweep", s), ("own decisions (is_anomaly)", s["own_decision"])):
        console.print(f"{s['detector']} {how}: standard [bold]{scores['standard']}[/], "
                      f"low FP {scores['reward_low_FP_rate']}, low FN {scores['reward_low_FN_rate']}")


@main.command("bench-models")
@click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=Path("../shared/datasets"),
              show_default=True, help="Folder with netflow/ and nab/ (absent parts are skipped).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-models"),
              show_default=True)
@click.option("--model", "model_names", multiple=True, help="Models for the netflow tables (default: all).")
@click.option("--nab-model", "nab_models", multiple=True, help="Models for NAB (default: every unsupervised "
                                                               "exportable model; 'none' skips NAB).")
@click.option("--seed", default=0, show_default=True, type=int)
def bench_models(datasets: Path, out: Path, model_names: tuple[str, ...], nab_models: tuple[str, ...],
                 seed: int) -> None:
    """Regenerate the model benchmark tables (docs/benchmarks.md) from the real datasets."""
    from cloud_hub.evaluation import bench_models as bm
    from cloud_hub.models import MODELS

    models = list(model_names) or list(MODELS)
    nab_list = [] if "none" in nab_models else (list(nab_models) or list(bm.NAB_MODELS))
    path = bm.run(datasets, out, models, nab_list, seed, log=lambda m: console.print(f"[dim]{m}[/]"))
    console.print(f"Wrote {path}")


def _likelihood_settings(settings: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for the bundle's likelihood post-processing (shared/likelihood.py), typed by field."""
    import dataclasses

    from shared.likelihood import LikelihoodParams

    fields = {f.name: f.type for f in dataclasses.fields(LikelihoodParams)
              if f.name not in ("prior_mean", "prior_std", "range_min", "range_max")}
    out: dict[str, Any] = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}",
                                     param_hint="--likelihood")
        try:
            out[key] = int(value) if fields[key] in (int, "int") else float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {key} needs a number", param_hint="--likelihood") from None
    try:  # refuse bad values before the (slow) conversion
        LikelihoodParams(prior_mean=0.0, prior_std=1.0, **out)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--likelihood") from None
    return out


def _export(home: HubHome, version: int, quantization: str, profile: FirmwareProfile | None = None,
            decide_on: str = "score", likelihood_threshold: float = 0.5, likelihood: dict[str, Any] | None = None
            ) -> None:
    import numpy as np

    from cloud_hub.export import export
    from shared.bundle import MODEL_FILE
    from shared.inference import TFLiteModel
    from shared.metrics import time_calls

    with console.status(f"exporting v{version} as {quantization}…"):
        r = export(home, version, Quantization(quantization), DecisionMode(decide_on), likelihood_threshold,
                   profile=profile, **(likelihood or {}))
    a = r.agreement
    console.print(f"Bundle [bold]{r.archive.name}[/]: {r.size} bytes (model {r.tflite_bytes}); agreement with "
                  f"Keras on {a.windows} windows: pearson {a.score_pearson:.4f}, flags {a.flag_agreement:.4f}, "
                  f"mean rel diff {a.mean_abs_rel_diff:.4f}; flags on the unperturbed held-out windows "
                  f"{a.flag_agreement_heldout:.4f}, outside ±{a.band:.0%} of the thresholds {a.flag_agreement_outside_band:.4f}")
    if profile is not None:
        model = TFLiteModel((r.bundle_dir / MODEL_FILE).read_bytes(), heads=r.scoring.head_list,
                            num_threads=profile.num_threads)
        window = np.random.default_rng(0).uniform(0, 1, (1, model.window, model.n_features)).astype(np.float32)
        lat = time_calls(lambda _: model.predict(window), 200)
        console.print(f"Profile [bold]{profile.name}[/]: model {r.tflite_bytes} of {profile.max_model_bytes} bytes; "
                      f"{profile.num_threads} interpreter thread(s); on this hub the interpreter takes p50 "
                      f"{lat.p50_ms:.3f} / p99 {lat.p99_ms:.3f} ms (gateway budget p99 {profile.latency_p99_ms} ms "
                      f"— check on the device with `edge-agent doctor`)")


@main.command()
@click.option("--model", "version", type=int, required=True, help="Model version to export.")
@click.option("--quantization", "-q", type=QUANT_CHOICE, multiple=True,
              help="Quantization(s) to export [default: the profile's, else int8]. Given explicitly, it wins "
                   "over the profile's.")
@click.option("--profile", "profile_ref",
              help="Firmware profile (a name such as rpi4-64, or a path to a .toml): picks the quantization "
                   "and interpreter threads, and refuses a model larger than its max_model_bytes.")
@click.option("--decide-on", type=DECISION_CHOICE, default="score", show_default=True,
              help="What agents threshold: the raw score (calibrated threshold) or the streaming likelihood.")
@click.option("--likelihood-threshold", type=float, default=0.5, show_default=True,
              help="Likelihood (log-scaled, in (0,1)) at which agents flag when --decide-on likelihood.")
@click.option("--likelihood", "likelihood_settings", multiple=True, metavar="KEY=VALUE",
              help="Agents' likelihood post-processing in the bundle (repeatable), e.g. rearm=500, "
                   "deviation_window=144, spatial_tolerance=0.05, history=8000 (NAB's configuration).")
@click.pass_context
def export(ctx: click.Context, version: int, quantization: tuple[str, ...], profile_ref: str | None, decide_on: str,
           likelihood_threshold: float, likelihood_settings: tuple[str, ...]) -> None:
    """Convert a version to TFLite, measure agreement with the original, write a signed bundle."""
    likelihood = _likelihood_settings(likelihood_settings)
    home = _home(ctx)
    try:
        profile = resolve_profile(profile_ref) if profile_ref else None
    except SchemaError as exc:
        raise click.ClickException(str(exc)) from None
    if not quantization:
        quantization = (profile.quantization.value if profile else Quantization.INT8.value,)
    elif profile and profile.quantization not in quantization:
        console.print(f"[yellow]-q {', '.join(quantization)} given: overrides profile {profile.name}'s "
                      f"{profile.quantization}[/]")
    for q in quantization:
        try:
            _export(home, version, q, profile, decide_on, likelihood_threshold, likelihood)
        except (ValueError, SchemaError) as exc:
            raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run N worker processes sharing ingest through the broker's shared subscription "
                   "($share/hub/…); one of them is elected leader for rollouts and retraining. N > 1 needs "
                   "PostgreSQL (database_url).")
@click.option("--worker", "worker_name", metavar="NAME",
              help="Run as ONE named worker of a shared group (for serve processes on several hosts; each a "
                   "distinct NAME of [A-Za-z0-9_-], at most 32). Needs PostgreSQL.")
@click.option("--no-web", is_flag=True, hidden=True, help="(--workers) No dashboard in this worker.")
@HTTP_OPTION
@NO_AUTH_OPTION
@click.pass_context
def serve(ctx: click.Context, workers: int, worker_name: str | None, no_web: bool, listen: str | None,
          no_auth: bool) -> None:
    """Connect to the broker: store events, heartbeats and synced data; serve model downloads
    (and the dashboard with /metrics when --http or hub.toml [web] listen is given; with --workers,
    worker w0 serves it).

    Upgrades the database schema first. Exits with status 3 if the MQTT network thread dies or the
    broker stays unreachable for longer than ``broker.max_disconnected_s`` (default 300 s), so a
    service manager restarts it. With --workers N the parent restarts a worker that dies.
    """
    import re

    from cloud_hub.ingest.service import ScaleOutError, tune_gc
    from cloud_hub.server import HubServer
    from shared.mqtt import HUB_MAX_DISCONNECTED_S, NetworkSupervisor

    home = _home(ctx)
    if worker_name is not None and (workers > 1 or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", worker_name)):
        raise click.BadParameter("--worker NAME: 1-32 of [A-Za-z0-9_-], and not together with --workers",
                                 param_hint="--worker")
    if workers > 1 and home.engine().dialect.name != "postgresql":
        raise click.ClickException("--workers > 1 needs PostgreSQL (hub.toml database_url = "
                                   "\"postgresql+psycopg://…\"): SQLite takes one writer; run `serve` without it")
    if not no_web:
        check_web_args(home, listen, no_auth)
    before, after = home.upgrade_db()
    if before != after:
        console.print(f"database schema upgraded from revision {before or '(none)'} to {after}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if workers > 1:
        from cloud_hub.ingest.workers import WorkerPool

        web_args = [*(["--http", listen] if listen else []), *(["--no-auth"] if no_auth else [])]
        pool = WorkerPool(home.path, workers, verbose=logging.getLogger().level <= logging.DEBUG, web_args=web_args)
        console.print(f"hub serving with {workers} workers; broker {home.config().broker.url}; Ctrl-C to stop")
        sys.exit(pool.run(stop))
    try:
        server = HubServer(home, worker=worker_name)
        server.start()
    except (ConnectionError, ScaleOutError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"hub serving{f' as worker {worker_name}' if worker_name else ''}; broker "
                  f"{server.cfg.broker.url}; Ctrl-C to stop")
    try:
        view = OperatorView(home, server, listen, no_auth, web=not no_web)
    except click.ClickException:
        server.stop()
        raise
    tune_gc()  # after startup: what it built is frozen, never scanned again
    scheduler = None
    if server.cfg.retrain.enabled:  # [retrain] triggers, on the leader only: niced retrain children, one at a time
        from cloud_hub.registry.triggers import RetrainScheduler

        scheduler = RetrainScheduler(home, is_leader=server.leader.is_leader)  # one retrain across workers
        scheduler.start()
    supervisor = NetworkSupervisor()
    supervisor.watch(server.client, "hub", server.cfg.broker.disconnect_limit(HUB_MAX_DISCONNECTED_S))
    code = supervisor.run(stop, logging.getLogger("cloud_hub.server"))
    if scheduler is not None:
        scheduler.stop()
    server.stop()  # stores what is queued (and alerts on it) before the alert workers drain and stop
    view.stop()
    console.print(f"stored: {dict(server.stored)}; rejected: {server.rejects.counts()}")
    if code:
        sys.exit(code)


@main.command()
@click.option("--device", help="Only this device.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def events(ctx: click.Context, device: str | None, limit: int) -> None:
    """Most recent anomaly events."""
    from datetime import UTC, datetime

    home = _home(ctx)
    table = Table("time (UTC)", "device", "score", "threshold", "model", "top features", "latency ms")
    with home.sessions()() as s:
        for e in (row.event for row in queries.anomalies(s, device, limit=limit)):
            table.add_row(datetime.fromtimestamp(e.ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.device_id,
                          f"{e.score:.2f}", f"{e.threshold:.2f}", f"v{e.model_version}",
                          ", ".join(f"{k} {v:.0%}" for k, v in e.attribution.items()) or ", ".join(e.top_features),
                          f"{(e.received_at - e.ts) * 1000:.1f}")
    console.print(table)


@main.command()
@click.option("--broker", help="Use this broker instead of starting an embedded one.")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".demo"), show_default=True)
@click.option("--summary", type=click.Path(path_type=Path), default=Path("demo-summary.json"), show_default=True)
@click.option("--quick", is_flag=True, help="Shorter phases (for tests).")
@click.option("--dashboard-port", default=8080, show_default=True,
              help="Dashboard on 127.0.0.1 (no login) while the demo runs; a free port if this one is taken (0: any).")
def demo(broker: str | None, workdir: Path, summary: Path, quick: bool, dashboard_port: int) -> None:
    """Whole loop: broker, hub, three agents, simulator, train, roll out, detect, retrain."""
    from cloud_hub.demo.run import run_demo

    try:
        run_demo(workdir.resolve(), summary.resolve(), broker, quick=quick, console=console,
                 dashboard_port=dashboard_port)
    except (RuntimeError, SchemaError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command("demo-recall")
@click.option("--runs", default=3, show_default=True, help="Independent runs (different simulator seeds).")
@click.option("--first-run", default=1, show_default=True, help="Number of the first run (its seeds).")
@click.option("--detect-s", default=300.0, show_default=True, help="Seconds of detection per device.")
@click.option("--collect-s", default=90.0, show_default=True, help="Seconds of normal data per device for v1.")
@click.option("--epochs", default=30, show_default=True, help="Training epochs (the demo's).")
@click.option("--period-s", default=45.0, show_default=True, help="The simulator's 'day' (demo --quick: 20).")
@click.option("--model", "model_name", type=_model_choice(), default="ae-lstm", show_default=True)
@SET_OPTION
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Where each run's hub home goes (default: a new temporary directory).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("demo-recall.json"),
              show_default=True)
def demo_recall(runs: int, first_run: int, detect_s: float, collect_s: float, epochs: int, period_s: float,
                model_name: str, settings: tuple[str, ...], workdir: Path | None, out: Path) -> None:
    """The demo's recall per anomaly kind, offline: simulator → train + int8 bundle → agent replay.

    No wall clock, so load cannot starve it; prints recall per kind, false alarms per run and each run's
    int8-vs-Keras flag agreement (bundle probe and the demo's own streams)."""
    from cloud_hub.demo.offline import RecallSettings
    from cloud_hub.demo.offline import demo_recall as measure

    try:
        cfg = RecallSettings(runs=runs, detect_s=detect_s, collect_s=collect_s, epochs=epochs, period_s=period_s,
                             model=model_name, training=parse_settings(settings), first_run=first_run)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    report = measure(cfg, workdir.resolve() if workdir else None)
    out.write_text(json.dumps(report, indent=2))
    print_recall(report)
    console.print(f"written to {out}")


def print_recall(report: dict[str, Any]) -> None:
    kinds = sorted(report["total"]["detected_by_kind"])
    table = Table("run", "recall", *kinds, "false alarms", "int8 flags (bundle probe)", "int8 flags (demo streams)",
                  title="demo recall, offline")
    rows = [(str(r["run"]), r["recall"], r["detected_by_kind"], r["false_alarms"], r["agreement_bundle"]["flag_agreement"],
             r["agreement_stream"]) for r in report["runs"]]
    for run, recall, by_kind, fa, bundle_agree, stream in rows:
        table.add_row(run, f"{recall:.3f}", *(f"{by_kind[k][0]}/{by_kind[k][1]}" if k in by_kind else "-" for k in kinds),
                      str(fa), f"{bundle_agree:.4f}",
                      f"{stream['flag_agreement']:.4f} (keras-only {stream['keras_only']}, int8-only {stream['int8_only']})")
    t = report["total"]
    table.add_row("all", f"{t['recall']:.3f}", *(f"{t['detected_by_kind'][k][0]}/{t['detected_by_kind'][k][1]}" for k in kinds),
                  "/".join(map(str, t["false_alarms_per_run"])), "", "")
    console.print(table)
    for r in report["runs"]:
        only = r["score_only"]
        console.print(f"run {r['run']}, score alone (no stuck check, no likelihood): " + "; ".join(
            f"{name} recall {o['recall']:.3f}, false alarms {o['false_alarms']}, " +
            ", ".join(f"{k} {h}/{n}" for k, (h, n) in o["detected_by_kind"].items()) for name, o in only.items()))


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results.json"), show_default=True)
@click.option("--broker", help="Broker URL to measure through (default: start Mosquitto, else amqtt).")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path(".bench"), show_default=True)
@click.option("--only", type=click.Choice(["all", "ingest", "fastpath", "web", "fleet"]), default="all", show_default=True,
              help="ingest: only the hub's stored events/s and sync rows/s (no model training); fastpath: "
                   "interpreter and agent sections only, reusing the model an earlier fastpath run trained "
                   "in --workdir; web: dashboard page load times with 200 devices and 100k anomaly events "
                   "(writes web-bench.json); fleet: only the rollout to 10/50/200 simulated agents (a 2-epoch model).")
@click.option("--screenshot", type=click.Path(dir_okay=False, path_type=Path),
              help="With --only web: also save screenshots of a device page and the fleet (docs/img/dashboard.png).")
def bench(out: Path, broker: str | None, workdir: Path, only: str, screenshot: Path | None) -> None:
    """Interpreter windows/s, agent readings/s and latency through a broker, bundle sizes, hub ingest rates."""
    from cloud_hub.bench import run_bench, run_fleet_bench, run_ingest_bench

    if only == "web":
        from cloud_hub.web.bench import run_web_bench

        target = out.with_name("web-bench.json") if out.name == "bench-results.json" else out
        run_web_bench(workdir.resolve(), target.resolve(), screenshot=screenshot, console=console)
    elif only == "fleet":
        run_fleet_bench(workdir.resolve(), out.resolve(), broker, console=console)
    elif only == "ingest":
        run_ingest_bench(workdir.resolve(), out.resolve(), broker, console=console)
    else:
        run_bench(workdir.resolve(), out.resolve(), broker, console=console, only=only)



def _register() -> None:
    """Command modules, one per noun (they import from cloud_hub.cli.common, never from here)."""
    from cloud_hub.cli.anomalies import anomalies
    from cloud_hub.cli.broker import broker_config
    from cloud_hub.cli.database import db_group
    from cloud_hub.cli.devices import devices
    from cloud_hub.cli.models import models
    from cloud_hub.cli.retrain import retrain
    from cloud_hub.cli.rollout import rollout
    from cloud_hub.cli.web import dashboard, web_user
    from cloud_hub.cli.workers import workers

    main.add_command(anomalies)
    main.add_command(devices)
    main.add_command(models)
    main.add_command(retrain)
    main.add_command(web_user)
    main.add_command(dashboard)
    main.add_command(rollout)
    main.add_command(broker_config)
    main.add_command(db_group)
    main.add_command(workers)


_register()
