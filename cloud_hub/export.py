"""Detector → TFLite (int8 / float16 / dynamic / float32), agreement check, signed bundle.

The threshold in the bundle is re-learned on the *exported* model's own scores, through the same
interpreter wrapper and scoring code the edge uses, so quantisation noise does not shift the
false-alarm rate.  The bundle also carries the likelihood prior fitted on those scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.home import HubHome
from cloud_hub.models import Detector, NotExportable
from cloud_hub.models.calibration import agreement_probe
from cloud_hub.training import load_version
from shared import bundle as bundle_fmt
from shared.decision import Decision, DecisionMode
from shared.inference import Quantization
from shared.likelihood import LikelihoodParams, fit_prior
from shared.preprocessing import PreprocessParams
from shared.profiles import FirmwareProfile
from shared.scoring import ScoringParams
from shared.stuck import StuckParams

log = logging.getLogger(__name__)


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
    likelihood: LikelihoodParams


def agreement(keras_scores: np.ndarray, tfl_scores: np.ndarray, flags_keras: np.ndarray,
              flags_tflite: np.ndarray) -> bundle_fmt.Agreement:
    both_vary = keras_scores.std() > 0 and tfl_scores.std() > 0
    pearson = float(np.corrcoef(keras_scores, tfl_scores)[0, 1]) if both_vary else 1.0
    flags = float(np.mean(flags_keras == flags_tflite))
    rel = float(np.mean(np.abs(tfl_scores - keras_scores) / np.maximum(np.abs(keras_scores), 1e-9)))
    return bundle_fmt.Agreement(windows=len(keras_scores), score_pearson=pearson, flag_agreement=flags,
                                mean_abs_rel_diff=rel)


def exported(detector: Detector, quantization: Quantization) -> tuple[bytes, ScoringParams, np.ndarray,
                                                                       bundle_fmt.Agreement]:
    """Convert, re-learn the threshold on the exported model, and measure agreement with the original."""
    if quantization.value not in detector.quantizations:
        raise NotExportable(f"{detector.name} does not export as {quantization.value}: "
                            f"{detector.export_note or 'supported: ' + ', '.join(detector.quantizations)}")
    tflite = detector.export_tflite(quantization.value)
    try:
        scoring, val_scores = detector.exported_scoring(tflite)
    except RuntimeError as exc:  # the interpreter refuses the converted graph: nothing an agent could run
        raise NotExportable(f"the exported {quantization.value} model does not run on LiteRT ({exc}); constant "
                            "training data gives zero-range tensors — train on data that varies") from None
    probe = agreement_probe(detector)
    k_scores = detector.score(probe)
    t_scores = detector.tflite_scores(tflite, probe, scoring)
    agree = agreement(k_scores, t_scores, detector.decision.flags(k_scores),
                      Decision(DecisionMode.SCORE, scoring.threshold).flags(t_scores))
    return tflite, scoring, val_scores, agree


class OverBudget(ValueError):
    """The exported model does not fit the target firmware profile."""


def export(home: HubHome, version: int, quantization: Quantization, decide_on: DecisionMode = DecisionMode.SCORE,
           likelihood_threshold: float = 0.5, profile: FirmwareProfile | None = None,
           **likelihood: Any) -> ExportResult:
    """Write a signed bundle; ``likelihood`` overrides LikelihoodParams fields (history, short_window...).

    With a ``profile``, a model larger than its ``max_model_bytes`` raises :class:`OverBudget` before
    anything is written, so no bundle that the gateway would refuse is ever produced.
    """
    meta, detector = load_version(home, version)
    pre = PreprocessParams.from_dict(meta["preprocessing"])
    tflite, scoring, val_scores, agree = exported(detector, quantization)
    if profile is not None and len(tflite) > profile.max_model_bytes:
        raise OverBudget(f"{len(tflite)}-byte {quantization.value} model exceeds profile {profile.name}'s budget of "
                         f"{profile.max_model_bytes} bytes (max_model_bytes); nothing written")
    likelihood = {"range_min": pre.scale_min, "range_max": pre.scale_max, **likelihood}
    prior = fit_prior(val_scores, threshold=likelihood_threshold, decide_on=decide_on.value, **likelihood)
    manifest = bundle_fmt.build_manifest(
        name=meta["name"],
        version=version,
        preprocessing=pre,
        scoring=scoring,
        quantization=bundle_fmt.Quantization(mode=quantization.value, agreement=agree),
        files={bundle_fmt.MODEL_FILE: tflite},
        training=meta["training"],
        likelihood=prior,
        stuck=StuckParams.from_dict(meta["stuck"]) if meta.get("stuck") else None,
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
        row.profile = profile.name if profile is not None else ""
        row.agreement = {"windows": agree.windows, "score_pearson": agree.score_pearson,
                         "flag_agreement": agree.flag_agreement, "mean_abs_rel_diff": agree.mean_abs_rel_diff}
        s.add(row)
        s.commit()
    return ExportResult(version, quantization, bundle_dir, archive, len(archive_bytes), len(tflite), agree, scoring,
                        prior)
