"""Windows for full-int8 conversion (representative data) and for measuring int8 against Keras.

Both are a set of windows plus a perturbed copy of them — a spike or level shift on one channel over
the last readings — so the int8 activation ranges cover the anomalies a model must score, and the
agreement probe has windows on both sides of the threshold rather than normal ones only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cloud_hub.models.base import Detector


def perturbed(windows: np.ndarray, seed: int) -> np.ndarray:
    """``windows`` followed by a copy with a spike or level shift (±0.05–1.0 of the scaled range) on one
    random channel over its last 1..w/2 readings."""
    rng = np.random.default_rng(seed)
    b, w, f = windows.shape
    channel = np.eye(f)[rng.integers(0, f, b)]  # (b, f) one-hot
    tail = np.arange(w)[None, :] >= (w - rng.integers(1, max(w // 2, 2), b))[:, None]  # (b, w): last readings
    magnitude = rng.uniform(0.05, 1.0, b) * rng.choice([-1, 1], b)
    x = windows + tail[:, :, None] * channel[:, None, :] * magnitude[:, None, None]
    return np.concatenate([windows, x]).astype(np.float32)


def int8_calibration(detector: Detector) -> np.ndarray | None:
    """Representative data for full-int8 conversion of an unsupervised model: its training sample plus a
    perturbed copy, so the int8 activation ranges — the input's above all, which clips what the
    prediction head sees — cover the anomalies the model must score and not only normal windows
    (AE-LSTM on demo-like data: score Pearson with Keras 0.947 → 0.988).  Held-out windows stay out:
    they measure the agreement.  Classifiers keep their training sample (their F1 is what is measured,
    and wider ranges cost resolution); None when the detector holds no sample."""
    if detector.supervised or "representative" not in detector.calibration:
        return None
    return perturbed(detector.calibration["representative"], detector.cfg.seed + 1)


def agreement_probe(detector: Detector) -> np.ndarray:
    """The windows int8 is compared with Keras on: the held-out windows and a perturbed copy."""
    return perturbed(detector.calibration["x_val"], detector.cfg.seed)
