"""The one owner of "is this window anomalous?" — on the hub, in replay, in NAB and on the agent.

A model produces raw scores (and the agent a streaming likelihood of them); a :class:`Decision`
turns them into flags.  It says what is thresholded (the raw score or the likelihood), the threshold
and a per-device scale (``threshold_scale`` in the agent's config: > 1 flags less).  Like PyOD's
``_process_decision_scores``, the threshold of an unsupervised model is learned in one place,
:func:`quantile_threshold`; like river's ``Thresholder``, the decision wraps the scorer rather than
living inside it.  A bundle carries its thresholds in one section, :class:`DecisionParams` (neither the
scoring nor the likelihood parameters hold one).

    score mode:       flag = score > threshold · scale
    likelihood mode:  flag = likelihood >= min(threshold · scale, 1)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from shared.schema import doc, dump, load


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
class DecisionParams:
    """A bundle's decision: the one place its thresholds live."""

    score_threshold: float = doc("Raw score above which a window is anomalous: learned on the hub from the "
                                 "exported model's own validation scores (margin x quantile of normal scores, "
                                 "or the F1-best point for classifiers).")
    mode: DecisionMode = doc("What agents threshold: 'score' (the raw score against score_threshold) or "
                             "'likelihood' (the streaming likelihood against likelihood_threshold).",
                             default=DecisionMode.SCORE)
    likelihood_threshold: float = doc("Log-scaled likelihood at or above which a window is anomalous "
                                      "(mode = likelihood).", default=0.5)

    def __post_init__(self) -> None:
        Decision(DecisionMode.SCORE, self.score_threshold)  # the same checks as the runtime decision
        Decision(DecisionMode.LIKELIHOOD, self.likelihood_threshold)

    def to_dict(self) -> dict[str, Any]:
        return dump(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> DecisionParams:
        return load(cls, data)


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
    def from_params(cls, params: DecisionParams, scale: float = 1.0) -> Decision:
        """The decision a bundle asks for, at an agent's scale."""
        if params.mode == DecisionMode.LIKELIHOOD:
            return cls(DecisionMode.LIKELIHOOD, params.likelihood_threshold, scale)
        return cls(DecisionMode.SCORE, params.score_threshold, scale)

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
