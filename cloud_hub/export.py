"""Keras → TFLite conversion (int8 / float16 / dynamic / float32), agreement check, signed bundle.

The threshold in the bundle is re-calibrated on the *exported* model's own scores, through the same
interpreter wrapper the edge uses, so quantisation noise does not shift the false-alarm rate.
"""

from __future__ import annotations

import enum
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.config import TrainingConfig
from cloud_hub.home import HubHome
from cloud_hub.training import keras_errors, load_meta
from shared import bundle as bundle_fmt
from shared.inference import TFLiteModel
from shared.preprocessing import PreprocessParams
from shared.schema import load
from shared.scoring import ScoringParams, anomaly_score, calibrate, window_errors

log = logging.getLogger(__name__)


class Quantization(enum.StrEnum):
    INT8 = "int8"  # full integer: int8 weights, activations, inputs and outputs
    FLOAT16 = "float16"
    DYNAMIC = "dynamic"  # int8 weights, float activations
    FLOAT32 = "float32"


@dataclass
class ExportResult:
    version: int
    quantization: Quantization
    bundle_dir: Path
    archive: Path
    size: int
    tflite_bytes: int
    agreement: bundle_fmt.Agreement
    scoring: ScoringParams


def convert(keras_model: object, quantization: Quantization, representative: np.ndarray) -> bytes:
    """Convert via a SavedModel (Keras 3's direct path trips over resource variables)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        keras_model.export(tmp, format="tf_saved_model", verbose=False)  # type: ignore[attr-defined]
        conv = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantization != Quantization.FLOAT32:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == Quantization.FLOAT16:
            conv.target_spec.supported_types = [tf.float16]
        elif quantization == Quantization.INT8:
            rep = representative.astype(np.float32)

            def dataset():  # type: ignore[no-untyped-def]
                for i in range(len(rep)):
                    yield [rep[i : i + 1]]

            conv.representative_dataset = dataset
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        return bytes(conv.convert())


def perturbed(val: np.ndarray, seed: int) -> np.ndarray:
    """Held-out windows plus a perturbed copy (spike or level shift on one channel, last readings),
    so flag agreement is measured on windows either side of the threshold, not only normal ones."""
    rng = np.random.default_rng(seed)
    b, w, f = val.shape
    channel = np.eye(f)[rng.integers(0, f, b)]  # (b, f) one-hot
    tail = np.arange(w)[None, :] >= (w - rng.integers(1, w // 2, b))[:, None]  # (b, w): last readings
    magnitude = rng.uniform(0.05, 1.0, b) * rng.choice([-1, 1], b)
    x = val + tail[:, :, None] * channel[:, None, :] * magnitude[:, None, None]
    return np.concatenate([val, x]).astype(np.float32)


def agreement(keras_scores: np.ndarray, tfl_scores: np.ndarray, flags_keras: np.ndarray,
              flags_tflite: np.ndarray) -> bundle_fmt.Agreement:
    pearson = float(np.corrcoef(keras_scores, tfl_scores)[0, 1]) if keras_scores.std() > 0 else 1.0
    flags = float(np.mean(flags_keras == flags_tflite))
    rel = float(np.mean(np.abs(tfl_scores - keras_scores) / np.maximum(keras_scores, 1e-9)))
    return bundle_fmt.Agreement(windows=len(keras_scores), score_pearson=pearson, flag_agreement=flags,
                                mean_abs_rel_diff=rel)


def export(home: HubHome, version: int, quantization: Quantization) -> ExportResult:
    import keras

    artifacts = home.models_dir / str(version)
    if not (artifacts / "meta.json").exists():
        raise ValueError(f"model version {version} does not exist in {home.models_dir}")
    meta = load_meta(artifacts)
    cfg = load(TrainingConfig, meta["training"]["config"])
    pre = PreprocessParams.from_dict(meta["preprocessing"])
    keras_scoring = ScoringParams.from_dict(meta["scoring"])
    cal = np.load(artifacts / "calibration.npz", allow_pickle=False)
    val, rep = cal["val"], cal["representative"]
    model = keras.models.load_model(artifacts / "model.keras")

    tflite = convert(model, quantization, rep)
    tfl = TFLiteModel(tflite)
    rec, pred = tfl.predict_batched(val)
    scoring = calibrate(window_errors(val, rec, pred), cfg.alpha, cfg.beta, cfg.threshold_quantile, cfg.threshold_margin)

    probe = perturbed(val, cfg.seed)
    k_err = keras_errors(model, probe)
    t_err = window_errors(probe, *tfl.predict_batched(probe))
    agree = agreement(
        anomaly_score(k_err, keras_scoring),
        anomaly_score(t_err, keras_scoring),  # same normalisers: comparable numbers
        flags_keras=anomaly_score(k_err, keras_scoring) > keras_scoring.threshold,
        flags_tflite=anomaly_score(t_err, scoring) > scoring.threshold,  # each against its own threshold
    )
    manifest = bundle_fmt.build_manifest(
        name=meta["name"],
        version=version,
        preprocessing=pre,
        scoring=scoring,
        quantization=bundle_fmt.Quantization(mode=quantization.value, agreement=agree),
        files={bundle_fmt.MODEL_FILE: tflite},
        training=meta["training"],
    )
    files = bundle_fmt.signed_files(manifest, {bundle_fmt.MODEL_FILE: tflite}, home.signing_key())
    stem = f"{meta['name']}-v{version}-{quantization.value}"
    bundle_dir = home.bundles_dir / stem
    bundle_fmt.write_dir(bundle_dir, files)
    archive_bytes = bundle_fmt.pack(files)
    archive = home.bundles_dir / f"{stem}.tar.gz"
    archive.write_bytes(archive_bytes)
    with home.sessions()() as s:
        existing = s.scalar(select(db.Bundle).where(db.Bundle.version == version,
                                                    db.Bundle.quantization == quantization.value))
        row = existing or db.Bundle(version=version, quantization=quantization.value)
        row.path, row.sha256, row.size = str(archive), bundle_fmt.sha256_hex(archive_bytes), len(archive_bytes)
        row.agreement = {"windows": agree.windows, "score_pearson": agree.score_pearson,
                         "flag_agreement": agree.flag_agreement, "mean_abs_rel_diff": agree.mean_abs_rel_diff}
        s.add(row)
        s.commit()
    return ExportResult(version, quantization, bundle_dir, archive, len(archive_bytes), len(tflite), agree, scoring)
