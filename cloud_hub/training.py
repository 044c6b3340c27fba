"""Training a model version: windows → AE-LSTM fit → threshold calibration → artifacts + registry."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from cloud_hub import db
from cloud_hub.config import TrainingConfig
from cloud_hub.data import TrainingData
from cloud_hub.home import HubHome
from cloud_hub.models import ae_lstm
from shared.preprocessing import PreprocessParams, fit_preprocessing, series_windows
from shared.scoring import ScoringParams, WindowErrors, calibrate, window_errors

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class Windows:
    params: PreprocessParams
    train: np.ndarray
    val: np.ndarray


@dataclass
class TrainResult:
    version: int
    artifacts: Path
    preprocessing: PreprocessParams
    scoring: ScoringParams
    info: dict[str, Any] = field(default_factory=dict)


def prepare_windows(data: TrainingData, cfg: TrainingConfig) -> Windows:
    """Fit preprocessing on the training part of every segment; the last part of each is validation."""
    w = cfg.window
    train_parts, val_parts = [], []
    for seg in data.segments:
        if len(seg) < w + 1:
            continue
        cut = int(len(seg) * (1 - cfg.validation_fraction))
        if len(seg) - cut >= w and cut >= w:
            train_parts.append(seg[:cut])
            val_parts.append(seg[cut:])
        else:
            train_parts.append(seg)
    if not train_parts:
        raise ValueError(f"not enough data: every contiguous segment is shorter than {w + 1} readings")
    params = fit_preprocessing(train_parts, data.features, w, cfg.wavelet, cfg.wavelet_level)

    def windows(parts: list[np.ndarray]) -> np.ndarray:
        if not parts:
            return np.empty((0, w, len(data.features)), np.float32)
        return np.concatenate([series_windows(p, params) for p in parts])

    train, val = windows(train_parts), windows(val_parts)
    rng = np.random.default_rng(cfg.seed)
    if len(val) < 32:  # tiny data: calibrate on a random slice of the training windows instead
        idx = rng.permutation(len(train))
        n_val = max(1, int(len(train) * cfg.validation_fraction))
        val, train = train[idx[:n_val]], train[idx[n_val:]]
    if len(train) > cfg.max_windows:
        train = train[np.linspace(0, len(train) - 1, cfg.max_windows).astype(int)]
    return Windows(params, train, val)


def keras_errors(model: Any, x: np.ndarray) -> WindowErrors:
    rec, pred = model.predict(x, batch_size=512, verbose=0)
    return window_errors(x, rec, pred)


def _next_version(home: HubHome) -> int:
    with home.sessions()() as s:
        return int(s.scalar(select(func.max(db.ModelVersion.version))) or 0) + 1


def train(
    home: HubHome,
    data: TrainingData,
    cfg: TrainingConfig,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train, calibrate and register a new model version in the hub home."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    keras.utils.set_random_seed(cfg.seed)
    win = prepare_windows(data, cfg)
    log.info("training on %d windows (%d validation), %d features", len(win.train), len(win.val), len(data.features))
    model = ae_lstm.build(cfg.window, len(data.features), cfg.hidden, cfg.latent, cfg.lstm_units,
                          cfg.learning_rate, cfg.alpha, cfg.beta)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if on_epoch:
                on_epoch(epoch + 1, cfg.epochs, {k: float(v) for k, v in (logs or {}).items()})

    history = model.fit(
        win.train,
        ae_lstm.targets(win.train),
        validation_data=(win.val, ae_lstm.targets(win.val)),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True), Progress()],
    )
    scoring = calibrate(keras_errors(model, win.val), cfg.alpha, cfg.beta, cfg.threshold_quantile, cfg.threshold_margin)

    version = _next_version(home)
    out = home.models_dir / str(version)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    rng = np.random.default_rng(cfg.seed)
    rep = win.train[rng.choice(len(win.train), size=min(500, len(win.train)), replace=False)]
    np.savez(out / "calibration.npz", val=win.val, representative=rep)
    losses = history.history
    info = {
        "source": data.source,
        "rows": data.rows,
        "excluded_rows": data.excluded_rows,
        "train_windows": int(len(win.train)),
        "val_windows": int(len(win.val)),
        "epochs_run": len(losses["loss"]),
        "final_loss": float(losses["loss"][-1]),
        "final_val_loss": float(losses["val_loss"][-1]),
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
    meta = {
        "name": ae_lstm.NAME,
        "version": version,
        "preprocessing": win.params.to_dict(),
        "scoring": scoring.to_dict(),
        "training": info,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    with home.sessions()() as s:
        s.add(db.ModelVersion(version=version, name=ae_lstm.NAME, source=data.source, artifacts_dir=str(out),
                              training=info))
        s.commit()
    return TrainResult(version, out, win.params, scoring, info)


def load_meta(artifacts: Path) -> dict[str, Any]:
    return json.loads((artifacts / "meta.json").read_text())  # type: ignore[no-any-return]
