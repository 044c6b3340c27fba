"""Anomaly score of the AE-LSTM hybrid: A(t) = α·reconstruction error + β·prediction error.

The model outputs a reconstruction of the window and a prediction of its newest reading (made from
the readings before it).  Errors are computed here, in float, against the *unquantised* input: an
int8 model clips inputs to its calibrated range, but the error against the true value still shows.
Each channel's errors are divided by their mean on normal calibration data, so α and β weigh
comparable numbers and a quiet channel counts as much as a loud one.  The window's score is the
largest channel score: a fault in one sensor of many is not diluted by the healthy ones.

    A_f(t) = α · rec_f(t) / rec_ref_f + β · pred_f(t) / pred_ref_f        A(t) = max_f A_f(t)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.schema import doc, dump, load


@dataclass(frozen=True)
class ScoringParams:
    """Score weights, error normalisers and the calibrated threshold; carried in the bundle."""

    rec_ref: list[float] = doc("Per-feature mean reconstruction error on normal calibration windows.")
    pred_ref: list[float] = doc("Per-feature mean prediction error on normal calibration windows.")
    threshold: float = doc("Score above which a window is anomalous.")
    alpha: float = doc("Weight of the (normalised) reconstruction error.", default=0.5)
    beta: float = doc("Weight of the (normalised) prediction error.", default=0.5)

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ValueError("alpha and beta must be >= 0 and not both 0")
        if len(self.rec_ref) != len(self.pred_ref) or not self.rec_ref:
            raise ValueError("rec_ref and pred_ref need one value per feature")
        if min(self.rec_ref) <= 0 or min(self.pred_ref) <= 0:
            raise ValueError("error normalisers must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> ScoringParams:
        return load(cls, data)


@dataclass(frozen=True)
class WindowErrors:
    """Raw errors per window, and each feature's share of the score."""

    reconstruction: np.ndarray  # (b,)
    prediction: np.ndarray  # (b,)
    per_feature_rec: np.ndarray  # (b, f)
    per_feature_pred: np.ndarray  # (b, f)


def window_errors(x: np.ndarray, reconstruction: np.ndarray, prediction: np.ndarray) -> WindowErrors:
    """MSE of the reconstruction over the window and of the prediction of its last reading."""
    rec_sq = (np.asarray(reconstruction, np.float64) - x) ** 2  # (b, w, f)
    pred_sq = (np.asarray(prediction, np.float64) - x[:, -1, :]) ** 2  # (b, f)
    per_rec = rec_sq.mean(axis=1)
    return WindowErrors(per_rec.mean(axis=1), pred_sq.mean(axis=1), per_rec, pred_sq)


def feature_scores(errors: WindowErrors, params: ScoringParams) -> np.ndarray:
    """(b, f) per-channel scores A_f: which channels drove the window's score."""
    rec_ref = np.asarray(params.rec_ref)
    pred_ref = np.asarray(params.pred_ref)
    return params.alpha * errors.per_feature_rec / rec_ref + params.beta * errors.per_feature_pred / pred_ref


def anomaly_score(errors: WindowErrors, params: ScoringParams) -> np.ndarray:
    """(b,) window scores A = max over channels of A_f."""
    return feature_scores(errors, params).max(axis=1)


def calibrate(
    errors: WindowErrors,
    alpha: float,
    beta: float,
    quantile: float,
    margin: float,
) -> ScoringParams:
    """Per-channel normalisers from mean errors; threshold = margin × quantile of normal scores."""
    rec_ref = [float(max(v, 1e-12)) for v in errors.per_feature_rec.mean(axis=0)]
    pred_ref = [float(max(v, 1e-12)) for v in errors.per_feature_pred.mean(axis=0)]
    params = ScoringParams(alpha=alpha, beta=beta, rec_ref=rec_ref, pred_ref=pred_ref, threshold=1.0)
    threshold = float(np.quantile(anomaly_score(errors, params), quantile) * margin)
    return ScoringParams(alpha=alpha, beta=beta, rec_ref=rec_ref, pred_ref=pred_ref, threshold=threshold)
