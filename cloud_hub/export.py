"""Detector → TFLite (int8 / float16 / dynamic / float32), agreement check, signed bundle.

The threshold in the bundle is re-learned on the *exported* model's own scores, through the same
interpreter wrapper and scoring code the edge uses, so quantisation noise does not shift the
false-alarm rate.  The bundle also carries the likelihood prior fitted on those scores.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from cloud_hub import db
from cloud_hub.home import HubHome
from cloud_hub.models import Detector, NotExportable
from cloud_hub.models.base import ExportedScoring
from cloud_hub.models.calibration import agreement_probe
from cloud_hub.training import load_version
from shared import bundle as bundle_fmt
from shared.decision import Decision, DecisionMode, DecisionParams
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
    decision: DecisionParams
    likelihood: LikelihoodParams


BAND = 0.05  # ± relative distance from a threshold within which a flag is threshold noise


def agreement(keras_scores: np.ndarray, tfl_scores: np.ndarray, keras_threshold: float, tfl_threshold: float,
              heldout: int) -> bundle_fmt.Agreement:
    """Scores and flags of the original vs the exported model, each flagged against its own threshold (score
    mode, like the agent); the first ``heldout`` windows are the unperturbed held-out ones."""
    fk = Decision(DecisionMode.SCORE, keras_threshold).flags(keras_scores)
    ft = Decision(DecisionMode.SCORE, tfl_threshold).flags(tfl_scores)
    both_vary = keras_scores.std() > 0 and tfl_scores.std() > 0
    pearson = float(np.corrcoef(keras_scores, tfl_scores)[0, 1]) if both_vary else 1.0
    rel = float(np.mean(np.abs(tfl_scores - keras_scores) / np.maximum(np.abs(keras_scores), 1e-9)))
    clear = ((np.abs(keras_scores / keras_threshold - 1) > BAND) & (np.abs(tfl_scores / tfl_threshold - 1) > BAND)
             if keras_threshold > 0 and tfl_threshold > 0 else np.ones(len(fk), bool))
    same = fk == ft
    return bundle_fmt.Agreement(windows=len(keras_scores), score_pearson=pearson, flag_agreement=float(same.mean()),
                                mean_abs_rel_diff=rel, flag_agreement_heldout=float(same[:heldout].mean()),
                                band=BAND, flag_agreement_outside_band=float(same[clear].mean()) if clear.any() else 1.0)


def exported(detector: Detector, quantization: Quantization) -> tuple[bytes, ExportedScoring, bundle_fmt.Agreement]:
    """Convert, re-learn the threshold on the exported model, and measure agreement with the original."""
    if quantization.value not in detector.quantizations:
        raise NotExportable(f"{detector.name} does not export as {quantization.value}: "
                            f"{detector.export_note or 'supported: ' + ', '.join(detector.quantizations)}")
    tflite = detector.export_tflite(quantization.value)
    try:
        ex = detector.exported_scoring(tflite)
    except RuntimeError as exc:  # the interpreter refuses the converted graph: nothing an agent could run
        raise NotExportable(f"the exported {quantization.value} model does not run on LiteRT ({exc}); constant "
                            "training data gives zero-range tensors — train on data that varies") from None
    probe = agreement_probe(detector)
    k_scores = detector.score(probe)
    t_scores = detector.tflite_scores(tflite, probe, ex.scoring)
    agree = agreement(k_scores, t_scores, detector.decision.threshold, ex.threshold,
                      heldout=len(detector.calibration["x_val"]))
    return tflite, ex, agree


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
    tflite, ex, agree = exported(detector, quantization)
    if profile is not None and len(tflite) > profile.max_model_bytes:
        raise OverBudget(f"{len(tflite)}-byte {quantization.value} model exceeds profile {profile.name}'s budget of "
                         f"{profile.max_model_bytes} bytes (max_model_bytes); nothing written")
    likelihood = {"range_min": pre.scale_min, "range_max": pre.scale_max, **likelihood}
    prior = fit_prior(ex.val_scores, **likelihood)
    decision = DecisionParams(score_threshold=ex.threshold, mode=decide_on, likelihood_threshold=likelihood_threshold)
    manifest = bundle_fmt.build_manifest(
        name=meta["name"],
        version=version,
        preprocessing=pre,
        scoring=ex.scoring,
        decision=decision,
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
        row.agreement = asdict(agree)
        s.add(row)
        s.commit()
    return ExportResult(version, quantization, bundle_dir, archive, len(archive_bytes), len(tflite), agree, ex.scoring,
                        decision, prior)
