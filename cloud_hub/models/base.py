"""The detector contract every model follows, whatever it is built with.

A detector takes samples shaped ``(n, steps, channels)``: sliding windows of a sensor stream
(steps = readings, channels = sensors) or rows of a table (steps = columns, one channel).  It is
fitted, produces one raw score per sample (higher = more anomalous), learns its own threshold, saves
and loads itself, and exports to TFLite when it can — or says which quantizations it supports and
why not.  Supervised models learn from labels (0 = normal, 1.. = attack classes); unsupervised ones
from normal samples only.
"""

from __future__ import annotations

import enum
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from cloud_hub.config import TrainingConfig
from shared.decision import Decision, DecisionMode, quantile_threshold
from shared.inference import Quantization
from shared.schema import dump, load
from shared.scoring import ScoringParams

EpochCallback = Callable[[int, int, dict[str, float]], None]
QUANTIZATIONS = tuple(q.value for q in Quantization)
MAX_CALIBRATION = 4000


class Mode(enum.StrEnum):
    SUPERVISED = "supervised"
    UNSUPERVISED = "unsupervised"


class ModelError(ValueError):
    """The model cannot be used this way (wrong mode, unlabelled data for a classifier, ...)."""


class NotExportable(ModelError):
    """The model has no TFLite form (or not in the requested quantization)."""


@dataclass(frozen=True)
class ExportedScoring:
    """An exported model's scoring, its threshold (learned on its own validation scores, by the same
    :meth:`Detector.learn_threshold` as the original's) and those scores."""

    scoring: ScoringParams
    threshold: float
    val_scores: np.ndarray


@dataclass
class FitReport:
    epochs: int = 0
    train_samples: int = 0
    val_samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def best_f1_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """Threshold that maximises F1 on labelled validation scores (flag = score > threshold)."""
    from sklearn.metrics import precision_recall_curve

    pos = (np.asarray(y) > 0).astype(int)
    if pos.min() == pos.max():
        raise ModelError("validation labels hold a single class: cannot learn a threshold")
    prec, rec, thr = precision_recall_curve(pos, scores)
    f1 = 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12)
    i = int(np.argmax(f1))
    # precision_recall_curve flags score >= thr; step just below it for the strict comparison.
    return float(np.nextafter(thr[i], -np.inf))


def balance(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random oversampling: every class repeated up to the size of the largest."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    idx = [np.concatenate([np.flatnonzero(y == c), rng.choice(np.flatnonzero(y == c), counts.max() - n)])
           for c, n in zip(classes, counts, strict=True)]
    order = rng.permutation(np.concatenate(idx))
    return x[order], y[order]


def class_weights(y: np.ndarray) -> dict[int, float]:
    """'balanced' weights: n / (classes · count_c)."""
    classes, counts = np.unique(y, return_counts=True)
    return {int(c): float(len(y) / (len(classes) * n)) for c, n in zip(classes, counts, strict=True)}


class Detector(ABC):
    """Fit / score / threshold / export / save-load.  Subclasses set the class attributes."""

    name: ClassVar[str]
    summary: ClassVar[str]
    modes: ClassVar[tuple[Mode, ...]]  # supported modes, default first
    quantizations: ClassVar[tuple[str, ...]] = QUANTIZATIONS
    export_note: ClassVar[str] = ""  # why some (or all) quantizations are missing

    def __init__(self, cfg: TrainingConfig, mode: Mode | None = None) -> None:
        self.cfg = cfg
        self.mode = mode or self.modes[0]
        if self.mode not in self.modes:
            raise ModelError(f"{self.name} does not support {self.mode.value} training "
                             f"(it supports: {', '.join(m.value for m in self.modes)})")
        self.threshold = float("nan")
        self.n_classes = 2
        self.input_shape: tuple[int, int] = (0, 0)
        self.calibration: dict[str, np.ndarray] = {}
        self.on_epoch: EpochCallback | None = None  # progress of iterative trainers

    # ------------------------------------------------------------------ contract

    @property
    def supervised(self) -> bool:
        return self.mode == Mode.SUPERVISED

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, x_val: np.ndarray | None = None,
            y_val: np.ndarray | None = None) -> FitReport:
        """Fit on training samples; learn the threshold on validation samples (split off if not given)."""
        x = np.asarray(x, np.float32)
        if x.ndim != 3 or len(x) == 0:
            raise ModelError("samples must be a non-empty (n, steps, channels) array")
        if self.supervised:
            if y is None:
                raise ModelError(f"{self.name} is trained supervised: it needs labelled data (a label column)")
            y = np.asarray(y).astype(np.int64)
            if len(np.unique(y)) < 2 or y.min() < 0:
                raise ModelError("supervised training needs labels 0 (normal) and at least one attack class >= 1")
        elif y is not None:  # unsupervised: normal samples only
            keep = np.asarray(y) == 0
            x, y = x[keep], None
            if x_val is not None and y_val is not None:
                x_val, y_val = np.asarray(x_val)[np.asarray(y_val) == 0], None
        if x_val is None:
            x, y, x_val, y_val = self._split(x, y)
        x_val = np.asarray(x_val, np.float32)
        if len(x_val) == 0:
            raise ModelError("no validation samples to learn a threshold from")
        self.input_shape = (int(x.shape[1]), int(x.shape[2]))
        if y is not None:
            self.n_classes = int(max(y.max(), 0 if y_val is None else np.max(y_val))) + 1
        report = self._fit(x, y, x_val, y_val)
        self.threshold = self.learn_threshold(self.score(x_val), y_val)
        self.calibration = {"x_val": x_val[:MAX_CALIBRATION]}
        if y_val is not None:
            self.calibration["y_val"] = np.asarray(y_val)[:MAX_CALIBRATION]
        rng = np.random.default_rng(self.cfg.seed)
        self.calibration["representative"] = x[rng.choice(len(x), size=min(500, len(x)), replace=False)]
        report.train_samples, report.val_samples = len(x), len(x_val)
        return report

    def learn_threshold(self, val_scores: np.ndarray, y_val: np.ndarray | None) -> float:
        """Unsupervised: margin × quantile of normal scores.  Supervised: the F1-best threshold."""
        if self.supervised and y_val is not None:
            return best_f1_threshold(val_scores, y_val)
        normal = val_scores if y_val is None else val_scores[np.asarray(y_val) == 0]
        return quantile_threshold(normal, self.cfg.threshold_quantile, self.cfg.threshold_margin)

    @property
    def decision(self) -> Decision:
        """The learned decision on raw scores (the hub's; the agent's comes from the bundle)."""
        if not np.isfinite(self.threshold):
            raise ModelError(f"{self.name} is not fitted: fit or load it first")
        return Decision(DecisionMode.SCORE, self.threshold)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.decision.flags(self.score(x))

    @abstractmethod
    def _fit(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray, y_val: np.ndarray | None) -> FitReport:
        ...

    @abstractmethod
    def score(self, x: np.ndarray) -> np.ndarray:
        """(n,) raw anomaly scores, higher = more anomalous."""

    def scoring_params(self) -> ScoringParams:
        """What the edge needs to turn the exported model's outputs into these scores."""
        raise NotExportable(f"{self.name} cannot be exported: {self.export_note}")

    def export_tflite(self, quantization: str, representative: np.ndarray | None = None) -> bytes:
        raise NotExportable(f"{self.name} cannot be exported: {self.export_note}")

    def exported_scoring(self, model: bytes) -> ExportedScoring:
        raise NotExportable(f"{self.name} cannot be exported: {self.export_note}")

    def tflite_scores(self, model: bytes, x: np.ndarray, scoring: ScoringParams | None = None) -> np.ndarray:
        """Scores of an exported model through the edge's interpreter wrapper and scoring."""
        from shared.inference import TFLiteModel
        from shared.scoring import score_outputs

        scoring = scoring or self.scoring_params()
        tfl = TFLiteModel(model, heads=scoring.head_list)
        return score_outputs(x, tfl.predict_batched(x), scoring).scores

    # ------------------------------------------------------------------ persistence

    def state(self) -> dict[str, Any]:
        """Extra JSON state a subclass needs to reload (besides its weights)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        del state

    @abstractmethod
    def _save_weights(self, path: Path) -> None: ...

    @abstractmethod
    def _load_weights(self, path: Path) -> None: ...

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "mode": self.mode.value, "threshold": self.threshold,
                "n_classes": self.n_classes, "input_shape": list(self.input_shape),
                "config": dump(self.cfg), "state": self.state()}
        (path / "detector.json").write_text(json.dumps(meta, indent=2))
        np.savez(path / "calibration.npz", **self.calibration)  # type: ignore[arg-type]
        self._save_weights(path)

    @classmethod
    def load(cls, path: Path) -> Detector:
        meta = json.loads((path / "detector.json").read_text())
        det = cls(load(TrainingConfig, meta["config"]), Mode(meta["mode"]))
        det.threshold = float(meta["threshold"])
        det.n_classes = int(meta["n_classes"])
        det.input_shape = (int(meta["input_shape"][0]), int(meta["input_shape"][1]))
        with np.load(path / "calibration.npz", allow_pickle=False) as cal:
            det.calibration = {k: cal[k] for k in cal.files}
        det.load_state(meta["state"])
        det._load_weights(path)
        return det

    # ------------------------------------------------------------------ helpers

    def _split(self, x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                                   np.ndarray | None]:
        """Random (stratified when labelled) validation split."""
        from sklearn.model_selection import train_test_split

        frac = self.cfg.validation_fraction
        if len(x) < 4:
            raise ModelError("need at least 4 samples")
        if y is None:
            xt, xv = train_test_split(x, test_size=frac, random_state=self.cfg.seed)
            return xt, None, xv, None
        xt, xv, yt, yv = train_test_split(x, y, test_size=frac, random_state=self.cfg.seed, stratify=y)
        return xt, yt, xv, yv

    def balanced(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, float] | None]:
        """Apply the configured imbalance handling: (x, y, class weights or None)."""
        if self.cfg.class_balance == "oversample":
            xb, yb = balance(x, y, self.cfg.seed)
            return xb, yb, None
        if self.cfg.class_balance == "weights":
            return x, y, class_weights(y)
        return x, y, None


def flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float32).reshape(len(x), -1)
