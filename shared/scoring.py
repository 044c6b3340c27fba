"""Window anomaly scores from whatever heads a model has.

Reconstruction / prediction models (the AE-LSTM hybrid and its relatives) output a reconstruction
of the window and/or a prediction of its newest reading made from the readings before it.  Errors
are computed here, in float, against the *unquantised* input: an int8 model clips inputs to its
calibrated range, but the error against the true value still shows.  Each channel's errors are
divided by their mean on normal calibration data, so α and β weigh comparable numbers and a quiet
channel counts as much as a loud one.  The window's score is the largest channel score: a fault in
one sensor of many is not diluted by the healthy ones.

    A_f(t) = α · rec_f(t) / rec_ref_f + β · pred_f(t) / pred_ref_f        A(t) = max_f A_f(t)

Classifiers output class probabilities (class 0 = normal); their score is 1 − P(normal).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from shared.schema import doc, dump, load


class Head(enum.StrEnum):
    """A model output, identified in the exported model by its rank and width."""

    RECONSTRUCTION = "reconstruction"  # (b, w, f)
    PREDICTION = "prediction"  # (b, f): the window's newest reading, predicted from the ones before
    PROBABILITY = "probability"  # (b, classes): softmax, class 0 = normal


@dataclass(frozen=True)
class ScoringParams:
    """Score weights and error normalisers; carried in the bundle (its threshold is the bundle's decision
    section, shared/decision.py)."""

    rec_ref: list[float] = doc("Per-feature mean reconstruction error on normal calibration windows.",
                               default_factory=list)
    pred_ref: list[float] = doc("Per-feature mean prediction error on normal calibration windows.",
                                default_factory=list)
    alpha: float = doc("Weight of the (normalised) reconstruction error.", default=0.5)
    beta: float = doc("Weight of the (normalised) prediction error.", default=0.5)
    heads: list[str] = doc("Model outputs, in the order the model returns them: reconstruction, prediction "
                           "and/or probability.", default_factory=lambda: ["reconstruction", "prediction"])

    def __post_init__(self) -> None:
        heads = [Head(h) for h in self.heads]
        if not heads or len(set(heads)) != len(heads):
            raise ValueError("heads must name distinct model outputs")
        if Head.PROBABILITY in heads:
            if len(heads) != 1:
                raise ValueError("a probability head is the model's only output")
            return
        if self.alpha < 0 or self.beta < 0 or self.alpha + self.beta <= 0:
            raise ValueError("alpha and beta must be >= 0 and not both 0")
        if (self.alpha > 0) != (Head.RECONSTRUCTION in heads) or (self.beta > 0) != (Head.PREDICTION in heads):
            raise ValueError("alpha > 0 needs a reconstruction head, beta > 0 a prediction head, and vice versa")
        if len(self.rec_ref) != len(self.pred_ref) or not self.rec_ref:
            raise ValueError("rec_ref and pred_ref need one value per feature")
        if min(self.rec_ref) <= 0 or min(self.pred_ref) <= 0:
            raise ValueError("error normalisers must be > 0")

    @property
    def head_list(self) -> list[Head]:
        return [Head(h) for h in self.heads]

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> ScoringParams:
        """Also reads scoring saved before the threshold moved to the decision (its ``threshold`` is
        dropped: the detector's own threshold is the one that counts)."""
        if isinstance(data, dict) and "threshold" in data:
            data = {k: v for k, v in data.items() if k != "threshold"}
        return load(cls, data)


@dataclass(frozen=True)
class WindowErrors:
    """Raw errors per window, and each feature's share of the score."""

    reconstruction: np.ndarray  # (b,)
    prediction: np.ndarray  # (b,)
    per_feature_rec: np.ndarray  # (b, f)
    per_feature_pred: np.ndarray  # (b, f)


def window_errors(x: np.ndarray, reconstruction: np.ndarray | None, prediction: np.ndarray | None) -> WindowErrors:
    """MSE of the reconstruction over the window and of the prediction of its last reading (zeros for a
    head the model does not have)."""
    b, w, f = x.shape
    if reconstruction is None:
        per_rec = np.zeros((b, f))
    else:  # ((rec - x) ** 2).mean(axis=1) in float64, the same operations in the same order (the sum over
        # the window still runs oldest to newest), laid out time-major so the sum adds whole rows at a time
        sq = np.empty((w, b, f))
        np.subtract(reconstruction, x, dtype=np.float64, out=sq.transpose(1, 0, 2))
        np.square(sq, out=sq)
        per_rec = np.add.reduce(sq, axis=0)
        np.true_divide(per_rec, w, out=per_rec)
    pred_sq = np.zeros((b, f)) if prediction is None else (np.asarray(prediction, np.float64) - x[:, -1, :]) ** 2
    return WindowErrors(per_rec.mean(axis=1), pred_sq.mean(axis=1), per_rec, pred_sq)


def head_errors(x: np.ndarray, outputs: dict[Head, np.ndarray]) -> WindowErrors:
    return window_errors(x, outputs.get(Head.RECONSTRUCTION), outputs.get(Head.PREDICTION))


def feature_scores(errors: WindowErrors, params: ScoringParams) -> np.ndarray:
    """(b, f) per-channel scores A_f: which channels drove the window's score."""
    rec_ref = np.asarray(params.rec_ref)
    pred_ref = np.asarray(params.pred_ref)
    return params.alpha * errors.per_feature_rec / rec_ref + params.beta * errors.per_feature_pred / pred_ref


def anomaly_score(errors: WindowErrors, params: ScoringParams) -> np.ndarray:
    """(b,) window scores A = max over channels of A_f."""
    return feature_scores(errors, params).max(axis=1)


@dataclass(frozen=True)
class Scored:
    """Scores of a batch of windows, with per-channel contributions where the model has them."""

    scores: np.ndarray  # (b,)
    contributions: np.ndarray  # (b, f); zeros for classifiers
    errors: WindowErrors


def score_outputs(x: np.ndarray, outputs: dict[Head, np.ndarray], params: ScoringParams) -> Scored:
    """The one scoring function: hub evaluation, export checks and the edge agent all call it."""
    errors = head_errors(x, outputs)
    if Head.PROBABILITY in outputs:
        p = np.asarray(outputs[Head.PROBABILITY], np.float64)
        return Scored(1.0 - p[:, 0], np.zeros((len(x), x.shape[2])), errors)
    contrib = feature_scores(errors, params)
    return Scored(contrib.max(axis=1), contrib, errors)


def normalisers(errors: WindowErrors) -> tuple[list[float], list[float]]:
    """Per-channel mean errors on normal windows (1.0 for a head the model lacks)."""
    rec = [float(max(v, 1e-12)) for v in errors.per_feature_rec.mean(axis=0)]
    pred = [float(max(v, 1e-12)) for v in errors.per_feature_pred.mean(axis=0)]
    if not errors.per_feature_rec.any():
        rec = [1.0] * len(rec)
    if not errors.per_feature_pred.any():
        pred = [1.0] * len(pred)
    return rec, pred


def calibrate(errors: WindowErrors, alpha: float, beta: float, heads: list[str] | None = None) -> ScoringParams:
    """Per-channel normalisers from mean errors on normal windows (the threshold is learned from the
    resulting scores by the detector, in one place)."""
    heads = heads or [Head.RECONSTRUCTION.value, Head.PREDICTION.value]
    alpha = alpha if Head.RECONSTRUCTION in heads else 0.0
    beta = beta if Head.PREDICTION in heads else 0.0
    rec_ref, pred_ref = normalisers(errors)
    return ScoringParams(alpha=alpha, beta=beta, rec_ref=rec_ref, pred_ref=pred_ref, heads=heads)


def attribution(contributions: np.ndarray, names: list[str], top: int) -> dict[str, float]:
    """The ``top`` channels that drove a window's score, each with its share of the channel scores
    (largest first; empty for classifiers, which have no per-channel errors)."""
    c = np.maximum(np.asarray(contributions, np.float64), 0.0)
    total = float(c.sum())
    if total <= 0 or not np.isfinite(total):
        return {}
    order = np.argsort(-c, kind="stable")[:top]
    return {names[i]: round(float(c[i] / total), 4) for i in order}
