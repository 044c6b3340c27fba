"""``cloud-hub nab``: the Numenta Anomaly Benchmark through the edge path.

Each data file is a stream.  The detector learns only from its probationary period (the first
min(15 %, 750) rows): the hub trains the model on those rows with one configuration for the whole
corpus, exports it to a signed int8 bundle, and the edge agent's replay (the same streaming code as
``edge-agent replay``) scores every row in time order.  The anomaly score written for NAB is the
edge's streaming likelihood; ``is_anomaly`` is the agent's own decision.  Labels are read only after
detection, to write the results files and score them.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.config import TrainingConfig
from cloud_hub.evaluation.nab_scoring import (
    FileScorer,
    load_profiles,
    probationary_length,
    score_corpus,
    window_indices,
)
from cloud_hub.evaluation.report import score_timeline, table
from cloud_hub.retrain_policy import RetrainPolicy

log = logging.getLogger(__name__)


# One configuration for the whole corpus (NAB's rule); `--set` overrides it.
TRAINING_SETTINGS = {"window": 24, "epochs": 40, "wavelet_level": 0, "threshold_quantile": 0.99,
                     "threshold_margin": 1.0}


@dataclass(frozen=True)
class NabConfig:
    model: str
    training: TrainingConfig
    quantization: str = "int8"
    likelihood_threshold: float = 0.5
    likelihood_history: int = 8000
    likelihood_short_window: int = 1
    spatial_tolerance: float = 0.05  # a value beyond the range seen so far (by 5 % of it) is an anomaly
    onset_window: int = 0  # report only new highs of the last N readings (off: `rearm` does this job better)
    rearm: int = 500  # one alarm per excursion: report only after 500 readings below the threshold
    deviation_window: int = 144  # model-free second opinion: deviation from the median of the last 144 readings
    deviation_warmup: int = 300  # deviation (and seasonal) scores that prime their likelihood on the stream
    seasonal_period: int = 86400  # seasonal context: a profile by hour of day (a day, 24 slots)
    seasonal_slots: int = 24
    seasonal_depth: int = 96  # readings kept per slot
    seasonal_min: int = 2  # earlier days a slot must have been seen in before it speaks
    seasonal_smoothing: int = 12  # the profile holds a running median of 12 readings: sustained, not spikes
    workers: int = 2
    retrain: RetrainPolicy = field(default_factory=RetrainPolicy)  # learn from the streamed past (every=0: off)
    reuse_bundles: str = ""  # a previous run's folder: re-export its bundles with this post-processing, no training


@dataclass
class FileResult:
    name: str  # category/file.csv
    rows: int
    probation: int
    seconds: float
    bundle_bytes: int
    threshold: float
    agreement_pearson: float
    error: str = ""
    retrains: int = 0
    note: str = ""  # e.g. no deployable model: the agent stayed silent on this stream


def detector_name(model: str) -> str:
    return "edgesentry" + "".join(p.capitalize() for p in model.split("-"))


def data_files(nab_dir: Path, limit: int | None = None, only: list[str] | None = None) -> list[str]:
    files = sorted(str(p.relative_to(nab_dir / "data")) for p in (nab_dir / "data").rglob("*.csv"))
    if only:
        files = [f for f in files if any(o in f for o in only)]
    return files[:limit] if limit else files


def _read_raw(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    ti, vi = header.index("timestamp"), header.index("value")
    return [r[ti] for r in rows[1:]], np.array([float(r[vi]) for r in rows[1:]])


def run_file(nab_dir: Path, name: str, cfg: NabConfig, out: Path) -> FileResult:
    """Train on the probationary rows, export, replay on the edge path; write the raw per-row output.

    With ``cfg.retrain.every`` > 0 the hub's retrain loop runs along the stream: every N readings a new
    model is trained on the readings before that point (``RetrainPolicy``), exported, signed and swapped
    into the replaying agent, as an update would be."""
    from cloud_hub.data import TrainingData
    from cloud_hub.home import HubHome
    from cloud_hub.models import NotExportable
    from cloud_hub.retrain_policy import retrain
    from edge_agent.replay import Replayer, load_bundle
    from shared.csvdata import read_series
    from shared.decision import DecisionMode
    from shared.inference import Quantization

    t0 = time.perf_counter()
    path = nab_dir / "data" / name
    series = read_series(path, "timestamp", ["value"])
    n = len(series.values)
    probation = probationary_length(n)
    work = Path(tempfile.mkdtemp(prefix="nab-"))
    likelihood = {"short_window": cfg.likelihood_short_window, **post_processing(cfg)}
    try:
        home = HubHome(work / "home")
        home.init()

        def train_export(data: TrainingData) -> Any:
            return retrain(home, data, cfg.training, cfg.model, Quantization(cfg.quantization),
                           DecisionMode.LIKELIHOOD, cfg.likelihood_threshold, **likelihood)

        try:
            first = train_export(TrainingData(["value"], [series.values[:probation]], f"nab:{name}", probation))
        except NotExportable as exc:  # no bundle an agent could run: it reports nothing on this stream
            _save_raw(out, name, np.full(n, np.nan), np.zeros(n), np.zeros(n, dtype=bool))
            return FileResult(name, n, probation, round(time.perf_counter() - t0, 2), 0, float("nan"),
                              float("nan"), note=f"no model: {exc}")
        keys = [home.public_key()]
        replayer = Replayer(load_bundle(first.archive, keys), series)
        retrains = 0
        for point in cfg.retrain.points(probation, n):
            replayer.advance(point)
            data = cfg.retrain.stream_data(["value"], series.values[:point], replayer.anomalous[:point],
                                           cfg.training.window, f"nab:{name}@{point}")
            if data.rows < cfg.training.window * 4:
                continue  # too little unflagged data: keep the running model
            try:
                replayer.swap(load_bundle(train_export(data).archive, keys))
            except NotExportable as exc:  # as the hub would: keep the running model
                log.warning("%s: retrain at %d not deployable (%s); the running model stays", name, point, exc)
                continue
            retrains += 1
        replayer.advance(n)
        r = replayer.result()
        dest = bundle_path(out, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first.archive, dest)
        dest.with_suffix("").with_suffix(".pub").write_text(home.public_key())  # to verify it when reused
        _save_raw(out, name, r.score, r.likelihood, r.anomalous)
        return FileResult(name, n, probation, round(time.perf_counter() - t0, 2), first.size,
                          first.decision.score_threshold, first.agreement.score_pearson, retrains=retrains)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def post_processing(cfg: NabConfig) -> dict[str, Any]:
    """The LikelihoodParams fields this configuration sets on every bundle (the agent's post-processing)."""
    return {"history": cfg.likelihood_history, "spatial_tolerance": cfg.spatial_tolerance,
            "onset_window": cfg.onset_window, "rearm": cfg.rearm, "rearm_level": cfg.likelihood_threshold,
            "deviation_window": cfg.deviation_window,
            "deviation_warmup": cfg.deviation_warmup, "seasonal_period": cfg.seasonal_period,
            "seasonal_slots": cfg.seasonal_slots, "seasonal_depth": cfg.seasonal_depth,
            "seasonal_min": cfg.seasonal_min, "seasonal_smoothing": cfg.seasonal_smoothing}


def _save_raw(out: Path, name: str, score: np.ndarray, likelihood: np.ndarray, anomalous: np.ndarray) -> None:
    """The per-row output of one file (scored and written as NAB results once every file is done)."""
    raw = out / "raw" / name
    raw.parent.mkdir(parents=True, exist_ok=True)
    np.savez(raw.with_suffix(".npz"), score=score, likelihood=likelihood, anomalous=anomalous)


def bundle_path(out: Path, name: str) -> Path:
    """Where a run keeps the bundle it exported for data file ``name`` (its first model)."""
    return out / "bundles" / (name.replace("/", "__").removesuffix(".csv") + ".tar.gz")


def reexported(archive: Path, cfg: NabConfig) -> Any:
    """A previous run's bundle with this configuration's post-processing: same model file, scoring and prior,
    the likelihood section (history, range novelty, onsets, decision threshold) replaced — what the hub
    would export from the same version with other settings — signed again and verified as the agent does.
    The original is verified first when its run left the hub's public key next to it."""
    from shared import bundle as bf
    from shared.decision import DecisionMode
    from shared.signing import generate_private_key, parse_public_key

    files = bf.unpack(archive.read_bytes())
    pub = archive.with_suffix("").with_suffix(".pub")
    if pub.exists():
        bf.verify(files, [parse_public_key(pub.read_text().strip())])
    manifest = bf.parse_manifest(files[bf.MANIFEST])
    lik = manifest.likelihood
    if lik is None:
        raise ValueError(f"{archive}: the bundle has no likelihood section to re-use")
    if lik.short_window != cfg.likelihood_short_window:
        raise ValueError(f"{archive}: its prior was fitted with short window {lik.short_window}; "
                         "a different one needs a run with training")
    new = replace(lik, **post_processing(cfg))
    decision = replace(manifest.decision, mode=DecisionMode.LIKELIHOOD, likelihood_threshold=cfg.likelihood_threshold)
    key = generate_private_key()
    payload = {n: b for n, b in files.items() if n not in (bf.MANIFEST, bf.SIGNATURE)}
    return bf.verify(bf.signed_files(replace(manifest, likelihood=new, decision=decision), payload, key),
                     [key.public_key()])


def rerun_file(nab_dir: Path, name: str, cfg: NabConfig, out: Path) -> FileResult:
    """The edge path again on a previous run's bundle (``cfg.reuse_bundles``) with this configuration's
    post-processing: no training, so a post-processing change is measured in minutes, on the same models."""
    from edge_agent.replay import replay
    from shared.csvdata import read_series

    t0 = time.perf_counter()
    series = read_series(nab_dir / "data" / name, "timestamp", ["value"])
    src = bundle_path(Path(cfg.reuse_bundles), name)
    n = len(series.values)
    if not src.exists():  # the previous run had no deployable model for it: the agent stays silent, as then
        log.warning("no bundle %s from the previous run for %s: no model, the agent stays silent", src, name)
        _save_raw(out, name, np.full(n, np.nan), np.zeros(n), np.zeros(n, dtype=bool))
        return FileResult(name, n, probationary_length(n), round(time.perf_counter() - t0, 2), 0, float("nan"),
                          float("nan"), note=f"no model: no bundle in {cfg.reuse_bundles}")
    bundle = reexported(src, cfg)
    r = replay(bundle, series)
    _save_raw(out, name, r.score, r.likelihood, r.anomalous)
    agreement = bundle.manifest.quantization.agreement
    return FileResult(name, n, probationary_length(n), round(time.perf_counter() - t0, 2), src.stat().st_size,
                      bundle.manifest.decision.score_threshold, agreement.score_pearson if agreement else float("nan"))


def _worker_init() -> None:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _run_file_safe(args: tuple[Path, str, NabConfig, Path]) -> FileResult:
    nab_dir, name, cfg, out = args
    try:
        return rerun_file(nab_dir, name, cfg, out) if cfg.reuse_bundles else run_file(nab_dir, name, cfg, out)
    except Exception as exc:  # one bad file must not sink the corpus run; it is reported
        log.exception("NAB file %s failed", name)
        return FileResult(name, 0, 0, 0.0, 0, float("nan"), float("nan"), error=f"{type(exc).__name__}: {exc}")


def run(nab_dir: Path, cfg: NabConfig, out: Path, files: list[str] | None = None, plots: int = 7) -> dict[str, Any]:
    """Run the corpus (or ``files``), write the NAB results tree, nab_scores.json and report.md."""
    if not (nab_dir / "data").is_dir() or not (nab_dir / "labels" / "combined_windows.json").exists():
        raise ValueError(f"{nab_dir} is not a NAB directory (needs data/ and labels/combined_windows.json)")
    files = files or data_files(nab_dir)
    if cfg.reuse_bundles and not any((Path(cfg.reuse_bundles) / "bundles").glob("*.tar.gz")):
        raise ValueError(f"{cfg.reuse_bundles} holds no bundles (bundles/*.tar.gz): not the --out of a NAB run")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(nab_dir, f, cfg, out) for f in files]
    if cfg.workers > 1 and len(files) > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        # Replaying earlier bundles needs no TensorFlow: its workers skip the import (~6 CPU-s each).
        init = None if cfg.reuse_bundles else _worker_init
        with ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=init) as pool:
            try:
                results = list(pool.map(_run_file_safe, jobs))
            except BaseException:  # interrupted: do not leave workers training on their own
                for proc in list(getattr(pool, "_processes", {}).values()):
                    proc.terminate()
                raise
    else:
        results = [_run_file_safe(j) for j in jobs]
    failed = [r for r in results if r.error]
    if failed:
        raise RuntimeError("NAB files failed: " + "; ".join(f"{r.name}: {r.error}" for r in failed))
    summary = score_and_write(nab_dir, cfg.model, out, [r.name for r in results], plots, cfg.likelihood_threshold)
    summary["files"] = [asdict(r) for r in results]
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["config"] = {**asdict(cfg), "training": asdict(cfg.training)}
    (out / "nab_scores.json").write_text(json.dumps(summary, indent=2))
    write_report(summary, out)
    return summary


def score_and_write(nab_dir: Path, model: str, out: Path, files: list[str], plots: int,
                    threshold: float = 0.5) -> dict[str, Any]:
    """Join labels (after detection), write NAB-format results files, then score those files as written."""
    from shared.csvdata import parse_timestamp

    windows = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    det = detector_name(model)
    plotted: set[str] = set()
    for name in files:
        raw_ts, values = _read_raw(nab_dir / "data" / name)
        ts = np.array([parse_timestamp(t) for t in raw_ts])
        with np.load((out / "raw" / name).with_suffix(".npz"), allow_pickle=False) as z:
            likelihood, anomalous = z["likelihood"], z["anomalous"]
        wins = window_indices(ts, windows.get(name, []))
        labels = np.zeros(len(ts), np.int64)
        for a, b in wins:
            labels[a : b + 1] = 1
        category, fname = name.split("/", 1)
        dest = out / det / category / f"{det}_{fname}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score", "label", "is_anomaly"])
            for i in range(len(ts)):
                w.writerow([raw_ts[i], f"{values[i]:.10g}", f"{likelihood[i]:.6f}", labels[i], int(anomalous[i])])
        if len(plotted) < plots and wins and category not in plotted:  # one timeline per category
            plot_dir = out / "plots"
            plot_dir.mkdir(exist_ok=True)
            score_timeline(likelihood, threshold, plot_dir / (name.replace("/", "__").removesuffix(".csv") + ".png"),
                           f"{det}: {name}", windows=wins, values=values, ylabel="likelihood")
            plotted.add(category)
    return score_results(nab_dir, out / det, files)


def read_results_file(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(timestamps, anomaly_score, is_anomaly) of one NAB results file."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = rows[0]
    missing = {"timestamp", "anomaly_score", "is_anomaly"} - set(header)
    if missing:
        raise ValueError(f"{path}: not a NAB results file (no {', '.join(sorted(missing))} column)")
    ti, si, di = header.index("timestamp"), header.index("anomaly_score"), header.index("is_anomaly")
    body = [r for r in rows[1:] if r]
    return ([r[ti] for r in body], np.array([float(r[si]) for r in body]),
            np.array([float(r[di]) >= 0.5 for r in body]))


def score_results(nab_dir: Path, results_dir: Path, files: list[str] | None = None) -> dict[str, Any]:
    """Score a detector's NAB results files (``results_dir`` = results/<detector>) exactly as they are on
    disk: the threshold sweep on ``anomaly_score`` and, separately, the ``is_anomaly`` column (the agent's
    own decisions).  Labels come from ``nab_dir``; any NAB detector's results can be scored this way."""
    from shared.csvdata import parse_timestamp

    det = results_dir.name
    windows = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    profiles = load_profiles(nab_dir)
    files = files or data_files(nab_dir)
    scored, decisions = [], []
    per_file: dict[str, Any] = {}
    for name in files:
        category, fname = name.split("/", 1)
        path = results_dir / category / f"{det}_{fname}"
        if not path.exists():
            raise ValueError(f"no results file {path} for {name}")
        raw_ts, score, flags = read_results_file(path)
        data_ts, _ = _read_raw(nab_dir / "data" / name)
        if raw_ts != data_ts:
            raise ValueError(f"{path}: its timestamps are not those of data/{name}")
        ts = np.array([parse_timestamp(t) for t in raw_ts])
        fs = FileScorer.build(len(ts), window_indices(ts, windows.get(name, [])))
        scored.append((fs, score))
        decisions.append(flags)
        per_file[name] = {"rows": len(ts), "windows": len(fs.windows), "flagged": int(flags.sum()),
                          "own_standard_raw": round(fs.score(flags, profiles["standard"])["score"], 4)}
    best = score_corpus(scored, profiles)
    own = score_corpus(scored, profiles, decisions=decisions)
    return {
        "detector": det,
        **{k: round(v, 2) for k, v in best.scores.items()},
        "thresholds": best.thresholds,
        "counts": best.counts,
        "own_decision": {k: round(v, 2) for k, v in own.scores.items()},
        "own_decision_counts": own.counts,
        "per_file": per_file,
        "results_dir": str(results_dir),
    }


def write_report(s: dict[str, Any], out: Path) -> None:
    profiles = ["standard", "reward_low_FP_rate", "reward_low_FN_rate"]
    rows = [
        {"how": "NAB threshold sweep (as published)", **{p: s[p] for p in profiles}},
        {"how": "agent's own decisions (is_anomaly)", **s["own_decision"]},
    ]
    c = s["config"]
    lines = [
        f"# NAB: {s['detector']} ({c['model']}, {c['quantization']}, edge replay)",
        "",
        table(rows, ["how", *profiles]),
        "",
        f"{len(s['files'])} files in {s['seconds']} s. Sweep thresholds: "
        + ", ".join(f"{p} {s['thresholds'][p]:.4f}" for p in profiles)
        + f". Agent threshold (likelihood): {c['likelihood_threshold']}.",
        "",
        "Counts at the swept standard threshold: " + json.dumps(s["counts"]["standard"]),
        "",
        "Score timelines (likelihood, labelled windows shaded) are in `plots/`.",
        "",
        *(f"- {f['name']}: {f['note']}" for f in s["files"] if f.get("note")),
    ]
    (out / "report.md").write_text("\n".join(lines))
