"""The one owner of "is this window anomalous?" — on the hub, in replay, in NAB and on the agent.

A model produces raw scores (and the agent a streaming likelihood of them); a :class:`Decision`
turns them into flags.  It says what is thresholded (the raw score or the likelihood), the threshold
and a per-device scale (``threshold_scale`` in the agent's config: > 1 flags less).  Like PyOD's
``_process_decision_scores``, the threshold of an unsupervised model is learned in one place,
:func:`quantile_threshold`; like river's ``Thresholder``, the decision wraps the scorer rather than
living inside it.

    score mode:       flag = score > threshold · scale
    likelihood mode:  flag = likelihood >= min(threshold · scale, 1)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from shared.likelihood import LikelihoodParams
    from shared.scoring import ScoringParams


class DecisionMode(enum.StrEnum):
    """What the agent thresholds."""

    SCORE = "score"  # the raw score against the calibrated threshold (ScoringParams.threshold)
    LIKELIHOOD = "likelihood"  # the streaming likelihood against a fixed one (LikelihoodParams.threshold)


def quantile_threshold(normal_scores: np.ndarray, quantile: float, margin: float) -> float:
    """margin × the ``quantile`` of scores on normal data: the unsupervised threshold, written once."""
    s = np.asarray(normal_scores, np.float64)
    s = s[np.isfinite(s)]
    if not len(s):
        raise ValueError("no finite normal scores to learn a threshold from")
    if not 0 < quantile <= 1 or margin <= 0:
        raise ValueError("quantile must be in (0, 1] and margin > 0")
    return float(np.quantile(s, quantile) * margin)


@dataclass(frozen=True)
class Decision:
    mode: DecisionMode
    threshold: float
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.threshold):
            raise ValueError(f"decision threshold must be finite, got {self.threshold}")
        if not self.scale > 0:
            raise ValueError("threshold scale must be > 0")
        if self.mode == DecisionMode.LIKELIHOOD and not 0 < self.threshold < 1:
            raise ValueError("a likelihood threshold must be in (0, 1)")

    @classmethod
    def from_manifest(cls, scoring: ScoringParams, likelihood: LikelihoodParams | None,
                      scale: float = 1.0) -> Decision:
        """The decision a bundle asks for (its likelihood section may switch it to the likelihood)."""
        if likelihood is not None and DecisionMode(likelihood.decide_on) == DecisionMode.LIKELIHOOD:
            return cls(DecisionMode.LIKELIHOOD, likelihood.threshold, scale)
        return cls(DecisionMode.SCORE, scoring.threshold, scale)

    def scaled(self, scale: float) -> Decision:
        return replace(self, scale=scale)

    @property
    def in_force(self) -> float:
        """The threshold actually applied (what events report)."""
        t = self.threshold * self.scale
        return min(t, 1.0) if self.mode == DecisionMode.LIKELIHOOD else t

    @property
    def on_likelihood(self) -> bool:
        return self.mode == DecisionMode.LIKELIHOOD

    def flags(self, scores: np.ndarray, likelihood: np.ndarray | None = None) -> np.ndarray:
        """(n,) bool flags; ``likelihood`` is required in likelihood mode."""
        if self.mode == DecisionMode.LIKELIHOOD:
            if likelihood is None:
                raise ValueError("a likelihood decision needs the likelihood of each window")
            return np.asarray(likelihood, np.float64) >= self.in_force
        return np.asarray(scores, np.float64) > self.in_force

    def is_anomalous(self, score: float, likelihood: float = 0.0) -> bool:
        if self.mode == DecisionMode.LIKELIHOOD:
            return likelihood >= self.in_force
        return score > self.in_force

    def reason(self, score: float, likelihood: float = 0.0, stuck: list[str] | None = None) -> str:
        """Why a flagged window was flagged, for logs: a stuck channel is named as such (its score need
        not exceed anything), otherwise the quantity this decision compared and its threshold."""
        if stuck:
            return "stuck channel " + ", ".join(stuck)
        if self.mode == DecisionMode.LIKELIHOOD:
            return f"likelihood {likelihood:.3f} >= {self.in_force:.3f} (score {score:.2f})"
        return f"score {score:.2f} > {self.in_force:.2f}"
