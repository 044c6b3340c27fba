"""Point-wise detection metrics (the papers' table columns)."""

from __future__ import annotations

from typing import Any

import numpy as np


def pointwise(y: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, balanced accuracy, ROC-AUC, PR-AUC and the confusion counts;
    attack classes count as positive."""
    from sklearn import metrics as m

    pos = (np.asarray(y) > 0).astype(int)
    flags = np.asarray(flags).astype(int)
    tn, fp, fn, tp = m.confusion_matrix(pos, flags, labels=[0, 1]).ravel()
    finite = np.nan_to_num(np.asarray(scores, np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
    both = 0 < pos.sum() < len(pos)
    return {
        "accuracy": float(m.accuracy_score(pos, flags)),
        "precision": float(m.precision_score(pos, flags, zero_division=0)),
        "recall": float(m.recall_score(pos, flags, zero_division=0)),
        "f1": float(m.f1_score(pos, flags, zero_division=0)),
        "balanced_accuracy": float(m.balanced_accuracy_score(pos, flags)),
        "roc_auc": float(m.roc_auc_score(pos, finite)) if both else None,
        "pr_auc": float(m.average_precision_score(pos, finite)) if both else None,
        "tp": int(tp), "tn": int(tn), "fp": int(fp), "fn": int(fn),
    }
