"""Training a model version: windows → detector fit → threshold → artifacts + registry row."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.config import TrainingConfig
from cloud_hub.data import TrainingData
from cloud_hub.home import HubHome
from cloud_hub.models import MODELS, Detector, EpochCallback, Mode, ModelError, create, get, load_detector
from shared.preprocessing import PreprocessParams, fit_preprocessing, series_windows
from shared.stuck import StuckParams, fit_stuck

log = logging.getLogger(__name__)


@dataclass
class Windows:
    params: PreprocessParams
    train: np.ndarray
    val: np.ndarray
    y_train: np.ndarray | None = None  # label of each window's newest reading
    y_val: np.ndarray | None = None
    stuck: StuckParams | None = None  # learned on the raw training readings


@dataclass
class TrainResult:
    version: int
    artifacts: Path
    preprocessing: PreprocessParams
    detector: Detector
    info: dict[str, Any] = field(default_factory=dict)


def prepare_windows(data: TrainingData, cfg: TrainingConfig) -> Windows:
    """Fit preprocessing on the training part of every segment; the last part of each is validation."""
    w = cfg.window
    train_parts, val_parts, train_lab, val_lab = [], [], [], []
    labels = data.labels or [np.zeros(len(s), np.int64) for s in data.segments]
    for seg, lab in zip(data.segments, labels, strict=True):
        if len(seg) < w + 1:
            continue
        cut = int(len(seg) * (1 - cfg.validation_fraction))
        if len(seg) - cut >= w and cut >= w:
            train_parts.append(seg[:cut])
            val_parts.append(seg[cut:])
            train_lab.append(lab[:cut])
            val_lab.append(lab[cut:])
        else:
            train_parts.append(seg)
            train_lab.append(lab)
    if not train_parts:
        raise ValueError(f"not enough data: every contiguous segment is shorter than {w + 1} readings")
    params = fit_preprocessing(train_parts, data.features, w, cfg.wavelet, cfg.wavelet_level)

    def windows(parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.empty((0, w, len(data.features)), np.float32)
        return np.concatenate([series_windows(p, params) for p in parts])

    def window_labels(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([p[w - 1 :] for p in parts]) if parts else np.empty(0, np.int64)

    train, val = windows(train_parts), windows(val_parts)
    y_train, y_val = window_labels(train_lab), window_labels(val_lab)
    rng = np.random.default_rng(cfg.seed)
    if len(val) < 32:  # tiny data: calibrate on a random slice of the training windows instead
        idx = rng.permutation(len(train))
        n_val = max(1, int(len(train) * cfg.validation_fraction))
        val, train = train[idx[:n_val]], train[idx[n_val:]]
        y_val, y_train = y_train[idx[:n_val]], y_train[idx[n_val:]]
    if len(train) > cfg.max_windows:
        keep = np.linspace(0, len(train) - 1, cfg.max_windows).astype(int)
        train, y_train = train[keep], y_train[keep]
    normal = [p[lab == 0] for p, lab in zip(train_parts, train_lab, strict=True)]
    stuck = fit_stuck(normal, w) if any(len(p) >= w for p in normal) else None
    if data.labels is None:
        return Windows(params, train, val, stuck=stuck)
    return Windows(params, train, val, y_train, y_val, stuck)


def _next_version(home: HubHome) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.max(db.ModelVersion.version))) or 0) + 1


def check_mode(model: str, labelled: bool) -> Mode:
    """The mode a model trains in given the data; a supervised-only model refuses unlabelled data."""
    cls = get(model)
    if labelled and Mode.SUPERVISED in cls.modes:
        return Mode.SUPERVISED
    if Mode.UNSUPERVISED in cls.modes:
        return Mode.UNSUPERVISED
    raise ModelError(f"{model} is a supervised model: it needs labelled data (--label-column, 0 = normal). "
                     f"Unsupervised models: {', '.join(n for n, c in MODELS.items() if Mode.UNSUPERVISED in c.modes)}")


def train(
    home: HubHome,
    data: TrainingData,
    cfg: TrainingConfig,
    model: str = "ae-lstm",
    on_epoch: EpochCallback | None = None,
    parent: int | None = None,
    group: str = "",
) -> TrainResult:
    """Train, calibrate and register a new model version in the hub home, with its lineage (data,
    settings, ``parent`` version, device ``group``, metrics on the held-out recent slice).

    Unsupervised models learn from normal windows only: labelled attack windows are dropped.
    """
    from cloud_hub.registry import lineage

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    mode = check_mode(model, data.labels is not None)
    win = prepare_windows(data, cfg)
    detector = create(model, cfg, mode)
    detector.on_epoch = on_epoch
    log.info("training %s (%s) on %d windows (%d validation), %d features", model, mode.value, len(win.train),
             len(win.val), len(data.features))
    if mode == Mode.SUPERVISED and win.y_val is not None and len(np.unique(win.y_val)) < 2:
        # The time-ordered hold-out saw no attack: learn the threshold on a stratified random split instead.
        log.warning("validation windows hold one class; using a stratified random split of all windows")
        x_all, y_all = np.concatenate([win.train, win.val]), np.concatenate([win.y_train, win.y_val])
        report = detector.fit(x_all, y_all)
    else:
        report = detector.fit(win.train, win.y_train, win.val, win.y_val)

    version = _next_version(home)
    out = home.models_dir / str(version)
    detector.save(out)
    info = {
        "source": data.source,
        "rows": data.rows,
        "excluded_rows": data.excluded_rows,
        "model": model,
        "mode": mode.value,
        "train_windows": report.train_samples,
        "val_windows": report.val_samples,
        "epochs_run": report.epochs,
        "threshold": detector.threshold,
        **report.extra,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
    meta = {"name": model, "version": version, "preprocessing": win.params.to_dict(), "training": info,
            "stuck": win.stuck.to_dict() if win.stuck else None}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    val_scores = detector.score(win.val) if len(win.val) else np.empty(0)
    holdout = lineage.holdout_metrics(val_scores, detector.decision.flags(val_scores), detector.threshold)
    with home.sessions()() as s:
        s.add(db.ModelVersion(version=version, name=model, source=data.source, artifacts_dir=str(out), training=info))
        s.flush()
        lineage.record(s, version, data, model, info["config"], holdout, parent, group)
        s.commit()
    return TrainResult(version, out, win.params, detector, info)


def load_meta(artifacts: Path) -> dict[str, Any]:
    return json.loads((artifacts / "meta.json").read_text())  # type: ignore[no-any-return]


def load_version(home: HubHome, version: int) -> tuple[dict[str, Any], Detector]:
    artifacts = home.models_dir / str(version)
    if not (artifacts / "meta.json").exists():
        raise ValueError(f"model version {version} does not exist in {home.models_dir}")
    return load_meta(artifacts), load_detector(artifacts)
