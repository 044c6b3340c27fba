"""Classic baselines on flattened samples: RBF SVM, random forest, isolation forest (scikit-learn).

They stay on the hub: kernel machines and tree ensembles have no TFLite form here, so they declare no
quantizations.  Their weights are saved with joblib in the hub's own model directory — local files
the hub wrote itself, never data received from the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.models.base import Detector, FitReport, Mode, ModelError, flat

_NOTE = "scikit-learn {} has no TFLite form; it is a hub-side baseline for evaluation only"


class _SklearnDetector(Detector):
    quantizations = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.estimator: Any = None

    def make(self, balanced: bool) -> Any:
        raise NotImplementedError

    def fitted(self) -> Any:
        if self.estimator is None:
            raise ModelError(f"{self.name} is not fitted: fit or load it first")
        return self.estimator

    def _fit(self, x: np.ndarray, y: np.ndarray | None, x_val: np.ndarray, y_val: np.ndarray | None) -> FitReport:
        xf = flat(x)
        if self.supervised:
            if y is None:
                raise ModelError(f"{self.name} is trained supervised: it needs labels")
            xf, y, weights = self.balanced(xf, y)
            self.estimator = self.make(balanced=weights is not None)
            self.estimator.fit(xf, y)
        else:
            self.estimator = self.make(balanced=False)
            self.estimator.fit(xf)
        return FitReport()

    def _save_weights(self, path: Path) -> None:
        import joblib

        joblib.dump(self.estimator, path / "estimator.joblib")

    def _load_weights(self, path: Path) -> None:
        import joblib

        self.estimator = joblib.load(path / "estimator.joblib")


class SVMBaseline(_SklearnDetector):
    name = "svm"
    summary = "Baseline: RBF-kernel SVM classifier (decision function as score)"
    modes = (Mode.SUPERVISED,)
    export_note = _NOTE.format("SVC")

    def make(self, balanced: bool) -> Any:
        from sklearn.svm import SVC

        return SVC(C=self.cfg.svm_c, kernel="rbf", gamma="scale", class_weight="balanced" if balanced else None,
                   random_state=self.cfg.seed)

    def score(self, x: np.ndarray) -> np.ndarray:
        d = self.fitted().decision_function(flat(x))
        return np.asarray(d if d.ndim == 1 else -d[:, 0], np.float64)


class RandomForestBaseline(_SklearnDetector):
    name = "random-forest"
    summary = "Baseline: random forest classifier (P(attack) as score)"
    modes = (Mode.SUPERVISED,)
    export_note = _NOTE.format("RandomForestClassifier")

    def make(self, balanced: bool) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.cfg.trees, class_weight="balanced" if balanced else None,
                                      n_jobs=2, random_state=self.cfg.seed)

    def score(self, x: np.ndarray) -> np.ndarray:
        est = self.fitted()
        p = est.predict_proba(flat(x))
        return np.asarray(1.0 - p[:, list(est.classes_).index(0)], np.float64)


class IsolationForestBaseline(_SklearnDetector):
    name = "isolation-forest"
    summary = "Baseline: isolation forest on normal samples (negated score_samples)"
    modes = (Mode.UNSUPERVISED,)
    export_note = _NOTE.format("IsolationForest")

    def make(self, balanced: bool) -> Any:
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=self.cfg.trees, random_state=self.cfg.seed, n_jobs=2)

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(-self.fitted().score_samples(flat(x)), np.float64)
